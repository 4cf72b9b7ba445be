//! The `tda` binary end to end: bad model folders give one clear line and a
//! non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use tda_model::hf::{read_safetensors, write_safetensors};

fn tda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tda"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Runs `tda logprobs` on `dir` and expects a clean failure whose message contains every needle.
fn expect_error(dir: &Path, needles: &[&str]) {
    let out = tda()
        .args(["logprobs", "--model"])
        .arg(dir)
        .args(["--text", "hello"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code (a panic gives 101); stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention {n:?}: {stderr}");
    }
}

#[test]
fn bad_model_folders_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("gpt2");
    let case = |name: &str| {
        let d = tmp.path().join(name);
        copy_dir(&base, &d);
        d
    };

    expect_error(&tmp.path().join("nope"), &["nope", "not found"]);

    let d = case("no_config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    expect_error(&d, &["config.json"]);

    let d = case("corrupt_config");
    std::fs::write(d.join("config.json"), "{ \"model_type\": \"gpt2\", ").unwrap();
    expect_error(&d, &["config.json", "not valid JSON"]);

    let d = case("unknown_type");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), cfg.replace("\"gpt2\"", "\"mamba\"")).unwrap();
    expect_error(&d, &["config.json", "unknown model_type \"mamba\""]);

    let weights_file = |d: &Path| d.join("model.safetensors");
    let d = case("missing_tensor");
    let mut w = read_safetensors(&weights_file(&d)).unwrap();
    w.remove("transformer.h.1.mlp.c_fc.weight").unwrap();
    write_safetensors(&weights_file(&d), &w, Default::default()).unwrap();
    expect_error(
        &d,
        &[
            "model.safetensors",
            "transformer.h.1.mlp.c_fc.weight",
            "missing",
        ],
    );

    let d = case("wrong_shape");
    let mut w = read_safetensors(&weights_file(&d)).unwrap();
    let t = w.get_mut("transformer.h.0.attn.c_proj.weight").unwrap();
    t.shape = vec![t.shape[0] * t.shape[1]];
    write_safetensors(&weights_file(&d), &w, Default::default()).unwrap();
    expect_error(
        &d,
        &[
            "model.safetensors",
            "transformer.h.0.attn.c_proj.weight",
            "shape",
        ],
    );

    let d = case("truncated");
    let bytes = std::fs::read(weights_file(&d)).unwrap();
    std::fs::write(weights_file(&d), &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&d, &["model.safetensors", "not a valid safetensors"]);

    let d = case("small_vocab");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let n = v["vocab_size"].as_u64().unwrap();
    let mut w = read_safetensors(&weights_file(&d)).unwrap();
    for (k, t) in w.iter_mut() {
        if k.ends_with("wte.weight") {
            t.data.truncate(10 * t.shape[1]);
            t.shape[0] = 10;
        }
    }
    write_safetensors(&weights_file(&d), &w, Default::default()).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace(&format!("\"vocab_size\": {n}"), "\"vocab_size\": 10"),
    )
    .unwrap();
    expect_error(&d, &["tokenizer.json", "vocab_size is 10"]);
}

#[test]
fn cuda_without_driver_is_a_clear_error() {
    let out = tda()
        .args(["logprobs", "--device", "cuda", "--text", "x", "--model"])
        .arg(fixture("gpt2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return; // a machine with a GPU and a cuda build
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CUDA") || stderr.contains("cuda"),
        "{stderr}"
    );
}
