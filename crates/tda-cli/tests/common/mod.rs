//! Shared helpers of the CLI tests: run the `tda` binary, check a clean failure, and a small world
//! (corpus, factors, index) built once per test binary by the real commands.

#![allow(dead_code)]

pub mod browser;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn tda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tda"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// What a run printed and how it ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(args, &[])
}

pub fn run_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = tda();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and expects success; returns stdout.
pub fn ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let r = run(args);
    assert_eq!(r.code, Some(0), "expected success; stderr: {}", r.stderr);
    r.stdout
}

/// Expects a clean failure: exit 1 (never 101, a panic), exactly one line on stderr that starts
/// with `error:` and contains every needle, and none of `untouched` created.
pub fn fails<I, S>(args: I, needles: &[&str], untouched: &[&Path]) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let before: Vec<bool> = untouched.iter().map(|p| p.exists()).collect();
    let r = run(args);
    let err = r.stderr.trim_end();
    assert_eq!(
        r.code,
        Some(1),
        "exit code (a panic gives 101); stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
    for (p, existed) in untouched.iter().zip(before) {
        if !existed {
            assert!(
                !p.exists(),
                "{} was written by a failing command",
                p.display()
            );
        }
        if let Some(dir) = p.parent().filter(|d| d.is_dir()) {
            let name = p.file_name().unwrap().to_string_lossy();
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !e.starts_with(&format!(".{name}.tmp-")),
                    "temporary {e} left by a failing command"
                );
            }
        }
    }
    err.to_string()
}

/// A corpus, factors and an index of the tiny GPT-2 fixture, made once by the real commands.
pub struct World {
    pub dir: PathBuf,
    pub model: PathBuf,
    pub corpus: PathBuf,
    pub factors: PathBuf,
    pub index: PathBuf,
}

pub fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let model = fixture("gpt2");
        let corpus = dir.join("corpus.jsonl");
        ok(["synth-corpus", "--docs", "40", "--out", p(&corpus)]);
        let factors = dir.join("factors");
        ok([
            "fit",
            "--model",
            p(&model),
            "--corpus",
            p(&corpus),
            "--out",
            p(&factors),
        ]);
        let index = dir.join("index");
        ok([
            "index",
            "--corpus",
            p(&corpus),
            "--index",
            p(&index),
            "--quiet",
        ]);
        World {
            dir,
            model,
            corpus,
            factors,
            index,
        }
    })
}

/// A path as a `&str` argument (leaked: test processes are short).
pub fn p(path: &Path) -> &'static str {
    leak(&path.display().to_string())
}

/// A string as a `'static` argument (leaked: test processes are short).
pub fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A fresh folder under the test target folder, kept for inspection after a failure.
pub fn scratch() -> PathBuf {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep()
}
