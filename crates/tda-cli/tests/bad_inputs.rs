//! Malformed inputs across every loader and flag: each must give one line naming the file or flag
//! and what is wrong, exit 1 (never a panic: 101), and write nothing. One `fails(..)` per case.

mod common;

use std::path::Path;

use common::{copy_dir, fails, fixture, leak, ok, p, repo, scratch, world};
use tda_model::hf::{read_safetensors, write_safetensors};

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> &'static str {
    std::fs::write(path, bytes).unwrap();
    p(path)
}

fn fit(corpus: &str, out: &Path, extra: &[&str]) -> Vec<&'static str> {
    let w = world();
    let mut v: Vec<&'static str> = vec!["fit", "--model", p(&w.model), "--corpus"];
    v.push(leak(corpus));
    v.extend(["--out", p(out)]);
    v.extend(extra.iter().map(|s| leak(s)));
    v
}

fn trace(extra: &[&str]) -> Vec<&'static str> {
    let w = world();
    let mut v: Vec<&'static str> =
        vec!["trace", "--model", p(&w.model), "--factors", p(&w.factors)];
    v.extend(extra.iter().map(|s| leak(s)));
    v
}

const Q: [&str; 4] = [
    "--prompt",
    "Mira Tolven was born in",
    "--completion",
    " Kestrel Bay",
];

fn parquet_file(path: &Path, column: &str, values: arrow::array::ArrayRef) -> &'static str {
    use arrow::array::RecordBatch;
    let batch = RecordBatch::try_from_iter([(column, values)]).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    p(path)
}

#[test]
fn bad_corpora() {
    let d = scratch();
    let out = d.join("factors");
    let content = write(
        &d.join("content.jsonl"),
        "{\"content\": \"a b c d\"}\n{\"content\": \"e f g\"}\n",
    );
    let why = "no `text` field in 2 of 2 records; use --text-column";
    // 1–5: the same mistake in every command that reads a corpus.
    fails(fit(content, &out, &[]), &["content.jsonl", why], &[&out]);
    fails(
        trace(&["--corpus", content]).into_iter().chain(Q),
        &[why],
        &[],
    );
    let w = world();
    fails(
        [
            "self-influence",
            "--model",
            p(&w.model),
            "--factors",
            p(&w.factors),
            "--corpus",
            content,
        ],
        &[why],
        &[],
    );
    let model_out = d.join("model");
    fails(
        [
            "train",
            "--config",
            p(&repo("configs/tiny.toml")),
            "--corpus",
            content,
            "--out",
            p(&model_out),
        ],
        &["content.jsonl", why],
        &[&model_out],
    );
    let idx = d.join("idx");
    fails(
        ["index", "--corpus", content, "--index", p(&idx)],
        &["content.jsonl", why],
        &[&idx],
    );
    // 6: an empty file.
    let empty = write(&d.join("empty.jsonl"), "");
    fails(
        fit(empty, &out, &[]),
        &["empty.jsonl", "no records"],
        &[&out],
    );
    // 7: only empty texts.
    let blank = write(
        &d.join("blank.jsonl"),
        "{\"text\": \"\"}\n{\"text\": \"   \"}\n",
    );
    fails(
        fit(blank, &out, &[]),
        &["all 2 records were skipped (empty 2)"],
        &[&out],
    );
    // 8: not UTF-8.
    let latin = write(&d.join("latin1.jsonl"), b"{\"text\": \"caf\xe9\"}\n");
    fails(
        fit(latin, &out, &[]),
        &["latin1.jsonl", "invalid UTF-8 1"],
        &[&out],
    );
    // 9: --strict stops at the first bad record and names it.
    let mixed = write(
        &d.join("mixed.jsonl"),
        "{\"text\": \"fine words\"}\nnot json\n",
    );
    fails(
        fit(mixed, &out, &["--strict"]),
        &["mixed.jsonl", "line 2", "not a JSON object"],
        &[&out],
    );
    // 10: a corpus that does not exist.
    fails(
        fit("/nonexistent/c.jsonl", &out, &[]),
        &["/nonexistent/c.jsonl"],
        &[&out],
    );
    // 11: a folder without corpus files.
    let nofiles = d.join("nofiles");
    std::fs::create_dir(&nofiles).unwrap();
    std::fs::write(nofiles.join("readme.md"), "x").unwrap();
    fails(fit(p(&nofiles), &out, &[]), &["nofiles"], &[&out]);
    // 12: an unknown extension.
    let csv = write(&d.join("c.csv"), "text\nhello\n");
    fails(fit(csv, &out, &[]), &["c.csv"], &[&out]);
    // 13: a truncated parquet file.
    let pq = d.join("good.parquet");
    parquet_file(
        &pq,
        "text",
        std::sync::Arc::new(arrow::array::StringArray::from(vec!["one two three"; 50])),
    );
    let bytes = std::fs::read(&pq).unwrap();
    let cut = write(&d.join("cut.parquet"), &bytes[..bytes.len() / 2]);
    fails(fit(cut, &out, &[]), &["cut.parquet"], &[&out]);
    // 14: parquet without the text column.
    let nocol = parquet_file(
        &d.join("nocol.parquet"),
        "body",
        std::sync::Arc::new(arrow::array::StringArray::from(vec!["x y"])),
    );
    fails(fit(nocol, &out, &[]), &["nocol.parquet", "text"], &[&out]);
    // 15: parquet whose text column holds integers.
    let ints = parquet_file(
        &d.join("ints.parquet"),
        "text",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
    );
    fails(fit(ints, &out, &[]), &["ints.parquet", "text"], &[&out]);
    // 16: every document above --max-doc-mib.
    let big = write(
        &d.join("big.jsonl"),
        format!("{{\"text\": \"{}\"}}\n", "word ".repeat(300_000)),
    );
    fails(
        fit(big, &out, &["--max-doc-mib", "1"]),
        &["too large 1", "--max-doc-mib"],
        &[&out],
    );
    // 17: a text file in file mode that is empty.
    let txt = write(&d.join("empty.txt"), "");
    fails(
        fit(txt, &out, &["--text-mode", "file"]),
        &["empty.txt"],
        &[&out],
    );
    // 18: one-token documents make no window.
    let tiny = write(&d.join("tiny.jsonl"), "{\"text\": \" \"}\n");
    fails(fit(tiny, &out, &[]), &["tiny.jsonl"], &[&out]);
}

/// A copy of the GPT-2 fixture with `edit` applied, for a bad model folder.
fn bad_model(root: &Path, name: &str, edit: impl FnOnce(&Path)) -> &'static str {
    let d = root.join(name);
    copy_dir(&fixture("gpt2"), &d);
    edit(&d);
    p(&d)
}

fn logprobs(model: &str) -> [&str; 5] {
    ["logprobs", "--model", model, "--text", "hello"]
}

fn edit_config(d: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = d.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn bad_models() {
    let r = scratch();
    // 19: a missing folder.
    fails(
        logprobs("/nonexistent/model"),
        &["/nonexistent/model", "not found"],
        &[],
    );
    // 20: config.json is not JSON.
    let m = bad_model(&r, "corrupt", |d| {
        std::fs::write(d.join("config.json"), "{ \"model_type\": ").unwrap()
    });
    fails(logprobs(m), &["config.json", "not valid JSON"], &[]);
    // 21: a field of the wrong type.
    let m = bad_model(&r, "types", |d| {
        edit_config(d, |v| v["n_embd"] = "32".into())
    });
    fails(logprobs(m), &["config.json", "n_embd"], &[]);
    // 22: bos_token_id outside the vocabulary.
    let m = bad_model(&r, "bos", |d| {
        edit_config(d, |v| v["bos_token_id"] = 100000.into())
    });
    fails(
        logprobs(m),
        &["config.json", "bos_token_id 100000", "vocab_size"],
        &[],
    );
    // 23: eos_token_id outside the vocabulary.
    let m = bad_model(&r, "eos", |d| {
        edit_config(d, |v| v["eos_token_id"] = 100000.into())
    });
    fails(logprobs(m), &["eos_token_id 100000"], &[]);
    // 24: a NaN weight.
    let m = bad_model(&r, "nan", |d| {
        let f = d.join("model.safetensors");
        let mut w = read_safetensors(&f).unwrap();
        w.get_mut("transformer.h.0.mlp.c_fc.weight").unwrap().data[3] = f32::NAN;
        write_safetensors(&f, &w, Default::default()).unwrap();
    });
    fails(
        logprobs(m),
        &[
            "model.safetensors",
            "transformer.h.0.mlp.c_fc.weight",
            "non-finite",
        ],
        &[],
    );
    // 25: safetensors with a garbage header.
    let m = bad_model(&r, "garbage", |d| {
        std::fs::write(
            d.join("model.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk",
        )
        .unwrap()
    });
    fails(logprobs(m), &["model.safetensors"], &[]);
    // 26: an empty weights file.
    let m = bad_model(&r, "empty_w", |d| {
        std::fs::write(d.join("model.safetensors"), b"").unwrap()
    });
    fails(logprobs(m), &["model.safetensors"], &[]);
    // 27: tokenizer.json is not a tokenizer.
    let m = bad_model(&r, "tok", |d| {
        std::fs::write(d.join("tokenizer.json"), "{\"x\": 1}").unwrap()
    });
    fails(logprobs(m), &["tokenizer.json"], &[]);
    // 28: no tokenizer.json.
    let m = bad_model(&r, "notok", |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    fails(logprobs(m), &["tokenizer.json"], &[]);
    // 29: a tokenizer from another model, larger than this model's vocabulary.
    let m = bad_model(&r, "mismatch", |d| {
        edit_config(d, |v| v["vocab_size"] = 50.into());
        let f = d.join("model.safetensors");
        let mut w = read_safetensors(&f).unwrap();
        for (k, t) in w.iter_mut() {
            if k.ends_with("wte.weight") {
                t.data.truncate(50 * t.shape[1]);
                t.shape[0] = 50;
            }
        }
        write_safetensors(&f, &w, Default::default()).unwrap();
    });
    fails(logprobs(m), &["tokenizer.json", "vocab_size is 50"], &[]);
    // 30: a chat template that is not valid Jinja (read by cite).
    let m = bad_model(&r, "jinja", |d| {
        std::fs::write(
            d.join("tokenizer_config.json"),
            "{\"chat_template\": \"{% for m in messages %}{{ m.content \"}",
        )
        .unwrap()
    });
    let docs = write(
        &r.join("docs.jsonl"),
        "{\"id\": \"d1\", \"text\": \"Mira was born in Tarn.\"}\n",
    );
    fails(
        [
            "cite",
            "--model",
            m,
            "--docs",
            docs,
            "--question",
            "Where?",
            "--answer",
            "Tarn.",
        ],
        &["tokenizer_config.json"],
        &[],
    );
}

#[test]
fn bad_factors_and_indexes() {
    let w = world();
    let r = scratch();
    let corpus = p(&w.corpus);
    // 31: factors folder missing.
    fails(
        [
            "trace",
            "--model",
            p(&w.model),
            "--factors",
            "/nonexistent/f",
            "--corpus",
            corpus,
        ]
        .into_iter()
        .chain(Q),
        &["/nonexistent/f"],
        &[],
    );
    // 32: factors of another model.
    let other = r.join("other");
    copy_dir(&fixture("gpt2"), &other);
    edit_config(&other, |v| v["layer_norm_epsilon"] = 1e-3.into());
    fails(
        [
            "trace",
            "--model",
            p(&other),
            "--factors",
            p(&w.factors),
            "--corpus",
            corpus,
        ]
        .into_iter()
        .chain(Q),
        &["factors"],
        &[],
    );
    // 33: truncated factors.
    let cut = r.join("cut");
    copy_dir(&w.factors, &cut);
    let f = cut.join("factors.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    fails(
        [
            "trace",
            "--model",
            p(&w.model),
            "--factors",
            p(&cut),
            "--corpus",
            corpus,
        ]
        .into_iter()
        .chain(Q),
        &["factors.safetensors"],
        &[],
    );
    // 34: a corrupted factors header.
    let bad = r.join("badheader");
    copy_dir(&w.factors, &bad);
    let f = bad.join("factors.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[20] = b'#';
    std::fs::write(&f, &bytes).unwrap();
    fails(
        [
            "trace",
            "--model",
            p(&w.model),
            "--factors",
            p(&bad),
            "--corpus",
            corpus,
        ]
        .into_iter()
        .chain(Q),
        &["factors.safetensors"],
        &[],
    );
    // 35: the factors path is a file.
    fails(
        [
            "trace",
            "--model",
            p(&w.model),
            "--factors",
            p(&f),
            "--corpus",
            corpus,
        ]
        .into_iter()
        .chain(Q),
        &["factors"],
        &[],
    );
    // 36: an index that does not exist.
    fails(
        trace(&["--corpus", corpus, "--index", "/nonexistent/idx"])
            .into_iter()
            .chain(Q),
        &["/nonexistent/idx"],
        &[],
    );
    // 37: the corpus moved after indexing.
    let c2 = r.join("corpus.jsonl");
    std::fs::copy(&w.corpus, &c2).unwrap();
    let idx = r.join("idx");
    ok(["index", "--corpus", p(&c2), "--index", p(&idx), "--quiet"]);
    let moved = r.join("moved.jsonl");
    std::fs::rename(&c2, &moved).unwrap();
    fails(
        trace(&["--corpus", p(&moved), "--index", p(&idx)])
            .into_iter()
            .chain(Q),
        &["idx"],
        &[],
    );
    // 38: the corpus changed after indexing.
    std::fs::rename(&moved, &c2).unwrap();
    let mut text = std::fs::read_to_string(&c2).unwrap();
    text.push_str("{\"text\": \"a new document\"}\n");
    std::fs::write(&c2, text).unwrap();
    fails(
        trace(&["--corpus", p(&c2), "--index", p(&idx)])
            .into_iter()
            .chain(Q),
        &["corpus.jsonl"],
        &[],
    );
    // 39: an index built with other corpus options.
    let c3 = write(
        &r.join("c3.jsonl"),
        "{\"body\": \"Mira Tolven was born in Kestrel Bay.\"}\n",
    );
    let idx3 = r.join("idx3");
    ok([
        "index",
        "--corpus",
        c3,
        "--index",
        p(&idx3),
        "--text-column",
        "body",
        "--quiet",
    ]);
    fails(
        trace(&["--corpus", c3, "--index", p(&idx3)])
            .into_iter()
            .chain(Q),
        &["--text-column text differs", "body"],
        &[],
    );
    // 40: a corrupt index manifest.
    let idx4 = r.join("idx4");
    ok(["index", "--corpus", corpus, "--index", p(&idx4), "--quiet"]);
    for e in std::fs::read_dir(&idx4).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".json") {
            std::fs::write(e.path(), "{ not json").unwrap();
        }
    }
    fails(
        ["search", "--index", p(&idx4), "--query", "born"],
        &["idx4"],
        &[],
    );
    // 41: a prefilter that retrieves nothing.
    fails(
        trace(&["--corpus", corpus, "--index", p(&w.index)])
            .into_iter()
            .chain(["--prompt", "zzqx", "--completion", " qqzx"]),
        &["found no document"],
        &[],
    );
}

#[test]
fn bad_queries() {
    let r = scratch();
    let corpus = p(&world().corpus);
    let q = |name: &str, text: &[u8]| write(&r.join(name), text);
    let out = r.join("s.parquet");
    // 42: an empty queries file.
    let f = q("empty.jsonl", b"\n\n");
    fails(
        trace(&["--corpus", corpus, "--queries", f, "--out", p(&out)]),
        &["empty.jsonl", "no queries"],
        &[&out],
    );
    // 43: a line that is not JSON.
    let f = q(
        "notjson.jsonl",
        b"{\"prompt\": \"a\", \"completion\": \" b\"}\nnope\n",
    );
    fails(
        trace(&["--corpus", corpus, "--queries", f]),
        &["notjson.jsonl line 2"],
        &[],
    );
    // 44: a missing field.
    let f = q("nofield.jsonl", b"{\"prompt\": \"a\"}\n");
    fails(
        trace(&["--corpus", corpus, "--queries", f]),
        &["nofield.jsonl line 1", "completion"],
        &[],
    );
    // 45: an empty completion.
    fails(
        trace(&["--corpus", corpus, "--prompt", "a", "--completion", ""]),
        &["completion", "no tokens"],
        &[],
    );
    // 46: not UTF-8.
    let f = q(
        "latin.jsonl",
        b"{\"prompt\": \"caf\xe9\", \"completion\": \" b\"}\n",
    );
    fails(
        trace(&["--corpus", corpus, "--queries", f]),
        &["latin.jsonl", "UTF-8"],
        &[],
    );
    // 47: relabel rows without their fields.
    let rows = q("rows.jsonl", b"{\"prompt\": \"a\", \"original\": \" b\"}\n");
    fails(
        trace(&["--prompt", "a", "--completion", " b", "--relabel", rows]),
        &["rows.jsonl line 1", "replacement"],
        &[],
    );
    // 48: a query longer than the model's context.
    let long = "word ".repeat(400);
    fails(
        trace(&["--corpus", corpus, "--prompt", &long, "--completion", " b"]),
        &["64"],
        &[],
    );
}

#[test]
fn refused_flags() {
    let w = world();
    let r = scratch();
    let corpus = p(&w.corpus);
    let out = r.join("out.parquet");
    let rows = write(
        &r.join("rows.jsonl"),
        "{\"prompt\": \"a\", \"original\": \" b\", \"replacement\": \" c\"}\n",
    );
    let relabel = |flag: &[&str]| {
        let mut v = trace(&["--prompt", "a", "--completion", " b", "--relabel", rows]);
        v.extend(flag.iter().map(|s| leak(s)));
        v
    };
    // 49–53: --relabel prints one score per row: the ranking and corpus flags are refused.
    fails(
        relabel(&["--out", p(&out)]),
        &["--relabel", "--out"],
        &[&out],
    );
    fails(relabel(&["--top-k", "3"]), &["--relabel", "--top-k"], &[]);
    fails(
        relabel(&["--normalization", "cosine"]),
        &["--relabel", "--normalization"],
        &[],
    );
    fails(
        relabel(&["--per-token"]),
        &["--relabel", "--per-token"],
        &[],
    );
    fails(
        relabel(&["--corpus", corpus, "--index", p(&w.index)]),
        &["--relabel"],
        &[],
    );
    // 54: --candidates without --index.
    fails(
        trace(&["--corpus", corpus, "--candidates", "5"])
            .into_iter()
            .chain(Q),
        &["--index"],
        &[],
    );
    // 55: --seed with the empirical Fisher.
    let f = r.join("f");
    fails(
        fit(corpus, &f, &["--fisher", "empirical", "--seed", "3"]),
        &["--seed", "empirical"],
        &[&f],
    );
    // 56: --max-len above the model's context.
    fails(
        fit(corpus, &f, &["--max-len", "100000"]),
        &["--max-len 100000", "64 positions"],
        &[&f],
    );
    // 57: index --add with a build setting.
    fails(
        [
            "index",
            "--corpus",
            corpus,
            "--index",
            p(&w.index),
            "--add",
            "--stem",
        ],
        &["--add", "--stem"],
        &[],
    );
    // 58: cite --answer with a sampling flag.
    let cite = |extra: &[&str]| {
        let mut v = vec![
            "cite",
            "--model",
            p(&fixture("rag")),
            "--docs",
            corpus,
            "--question",
            "Q",
            "--answer",
            "A.",
        ];
        v.extend(extra.iter().map(|s| leak(s)));
        v
    };
    fails(
        cite(&["--temperature", "0.7"]),
        &["--answer", "--temperature"],
        &[],
    );
    // 59–63: values out of range.
    fails(
        fit(corpus, &f, &["--batch-size", "0"]),
        &["--batch-size"],
        &[&f],
    );
    fails(
        trace(&["--corpus", corpus, "--damping", "-1"])
            .into_iter()
            .chain(Q),
        &["damping"],
        &[],
    );
    fails(
        trace(&["--corpus", corpus, "--damping", "heuristic:0"])
            .into_iter()
            .chain(Q),
        &["damping", "heuristic:S"],
        &[],
    );
    fails(
        trace(&["--corpus", corpus, "--top-k", "many"])
            .into_iter()
            .chain(Q),
        &["top-k"],
        &[],
    );
    fails(
        fit(corpus, &f, &["--strategy", "hessian"]),
        &["--strategy", "hessian"],
        &[&f],
    );
    fails(
        fit(corpus, &f, &["--modules", "nothing.*"]),
        &["nothing"],
        &[&f],
    );
    // A stride longer than the window; a budget that is not a size; one too small for a window.
    fails(
        fit(corpus, &f, &["--max-len", "16", "--stride", "17"]),
        &["--stride 17", "16 tokens"],
        &[&f],
    );
    fails(
        fit(corpus, &f, &["--memory-budget", "lots"]),
        &["--memory-budget", "lots"],
        &[&f],
    );
    fails(
        fit(corpus, &f, &["--memory-budget", "1KiB"]),
        &["--memory-budget", "raise"],
        &[&f],
    );
    // 64: an unwritable output (its parent is a file): nothing half-written.
    let blocker = write(&r.join("blocker"), "x");
    let under = Path::new(blocker).join("scores.parquet");
    fails(
        trace(&["--corpus", corpus, "--out", p(&under)])
            .into_iter()
            .chain(Q),
        &["blocker"],
        &[],
    );
    // 65: a training config that is not TOML.
    let cfg = write(&r.join("bad.toml"), "[train\nsteps = ");
    let m = r.join("m");
    fails(
        ["train", "--config", cfg, "--corpus", corpus, "--out", p(&m)],
        &["bad.toml"],
        &[&m],
    );
    // 66: an unknown flag.
    fails(["fit", "--bogus"], &["--bogus"], &[]);
    // 67–70: flags that would do nothing in this mode.
    let m = p(&w.model);
    fails(
        ["generate", "--model", m, "--prompt", "a", "--top-p", "0.9"],
        &["--top-p", "--temperature"],
        &[],
    );
    fails(
        [
            "generate",
            "--model",
            m,
            "--prompt",
            "a",
            "--temperature",
            "-1",
        ],
        &["--temperature"],
        &[],
    );
    fails(
        fit(corpus, &f, &["--strategy", "diagonal", "--max-block", "16"]),
        &["--max-block", "diagonal"],
        &[&f],
    );
    fails(
        [
            "index",
            "--corpus",
            corpus,
            "--index",
            p(&w.index),
            "--add",
            "--no-merge",
        ],
        &["--add", "--no-merge"],
        &[],
    );
    // 102–105: cite settings of one method given to another, and the old --method values.
    fails(
        cite(&["--method", "mirage", "--masks", "16"]),
        &["--masks", "--method context-cite"],
        &[],
    );
    fails(
        cite(&["--method", "loo", "--gradient", "saliency"]),
        &["--gradient", "--method mirage"],
        &[],
    );
    fails(
        cite(&["--method", "saliency"]),
        &["--method mirage --gradient saliency"],
        &[],
    );
    fails(
        cite(&["--method", "context-cite", "--lasso-alpha", "-1"]),
        &["--lasso-alpha"],
        &[],
    );
}

#[test]
fn multi_stage_target_sets_and_filter_lists() {
    let w = world();
    let r = scratch();
    let corpus = p(&w.corpus);
    let ms = |extra: &[&str]| {
        let mut v: Vec<&'static str> = vec![
            "trace",
            "--model",
            p(&w.model),
            "--pretrain-model",
            p(&w.model),
            "--corpus",
            corpus,
        ];
        v.extend(Q);
        v.extend(extra.iter().map(|s| leak(s)));
        v
    };
    // 71: --pretrain-factors without --pretrain-model.
    fails(
        trace(&["--corpus", corpus, "--pretrain-factors", p(&w.factors)])
            .into_iter()
            .chain(Q),
        &["--pretrain-model"],
        &[],
    );
    // 72–75: each --hessians variant takes exactly the factors it uses.
    fails(
        ms(&[
            "--hessians",
            "pretrain",
            "--factors",
            p(&w.factors),
            "--pretrain-factors",
            p(&w.factors),
        ]),
        &["--factors is not used", "pretrain"],
        &[],
    );
    fails(
        ms(&["--factors", p(&w.factors)]),
        &["needs --pretrain-factors"],
        &[],
    );
    fails(ms(&["--hessians", "fine-tune"]), &["needs --factors"], &[]);
    fails(
        ms(&["--hessians", "none", "--ft-damping", "heuristic"]),
        &["--ft-damping is not used"],
        &[],
    );
    // 76: the two models must share the architecture and the tokenizer.
    let mut other = vec![
        "trace",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--pretrain-model",
        p(&fixture("llama")),
        "--pretrain-factors",
        p(&w.factors),
        "--corpus",
        corpus,
    ];
    other.extend(Q);
    fails(other, &["different architectures", "llama"], &[]);
    // 77: α from a training record that is not there; 78: a zero α.
    fails(
        ms(&[
            "--factors",
            p(&w.factors),
            "--pretrain-factors",
            p(&w.factors),
            "--ft-damping",
            "proximal",
        ]),
        &["--ft-damping proximal", "no tda_training.json"],
        &[],
    );
    fails(
        ms(&[
            "--factors",
            p(&w.factors),
            "--pretrain-factors",
            p(&w.factors),
            "--ft-damping",
            "0",
        ]),
        &["ft-damping", "positive"],
        &[],
    );
    // 79–81: target sets and granularity.
    fails(
        trace(&["--corpus", corpus, "--per-query"])
            .into_iter()
            .chain(Q),
        &["--aggregate"],
        &[],
    );
    fails(
        trace(&["--corpus", corpus, "--aggregate", "median"])
            .into_iter()
            .chain(Q),
        &["median", "mean or sum"],
        &[],
    );
    fails(
        trace(&["--corpus", corpus, "--granularity", "sentence"])
            .into_iter()
            .chain(Q),
        &["sentence", "document or window"],
        &[],
    );
    // 82: a text file of targets with no target.
    let empty = write(&r.join("targets.txt"), "\n  \n");
    fails(
        trace(&["--corpus", corpus, "--queries", empty]),
        &["targets.txt", "no queries"],
        &[],
    );
    // 83–85: self-influence filter lists.
    let si = |extra: &[&str]| {
        let mut v: Vec<&'static str> = vec![
            "self-influence",
            "--model",
            p(&w.model),
            "--factors",
            p(&w.factors),
            "--corpus",
            corpus,
        ];
        v.extend(extra.iter().map(|s| leak(s)));
        v
    };
    let flagged = r.join("flagged.jsonl");
    fails(
        si(&["--top-pct", "0", "--out", p(&flagged)]),
        &["top-pct"],
        &[&flagged],
    );
    fails(
        si(&["--top-pct", "5", "--top-k", "3", "--out", p(&flagged)]),
        &["--top-pct", "--top-k"],
        &[&flagged],
    );
    let pq = r.join("flagged.parquet");
    fails(
        si(&["--top-pct", "5", "--out", p(&pq)]),
        &["flagged.parquet", "jsonl"],
        &[&pq],
    );
    // 86–89: completion-only pairs.
    let pairs = write(
        &r.join("pairs.jsonl"),
        "{\"prompt\": \"a\", \"completion\": \" b\"}\n{\"prompt\": \"a\"}\n",
    );
    fails(
        trace(&["--corpus", pairs, "--completion-only"])
            .into_iter()
            .chain(Q),
        &["pairs.jsonl line 2", "completion"],
        &[],
    );
    fails(
        trace(&[
            "--corpus",
            pairs,
            "--completion-only",
            "--text-column",
            "body",
        ])
        .into_iter()
        .chain(Q),
        &["--completion-only", "--text-column"],
        &[],
    );
    fails(
        trace(&[
            "--corpus",
            corpus,
            "--completion-only",
            "--index",
            p(&w.index),
        ])
        .into_iter()
        .chain(Q),
        &[
            "corpus.jsonl line",
            "not a prompt/completion pair",
            "--completion-only",
        ],
        &[],
    );
    let long = write(
        &r.join("long.jsonl"),
        format!(
            "{{\"id\": \"big\", \"prompt\": \"{}\", \"completion\": \" b\"}}\n",
            "word ".repeat(200)
        ),
    );
    let f = r.join("f2");
    fails(
        fit(long, &f, &["--completion-only"]),
        &["long.jsonl", "pair big", "--max-len"],
        &[&f],
    );
}

/// `tda select`: flags a method would ignore, missing factors, bad budgets, empty targets and
/// output names are refused before any work, naming the flag or file; nothing is written.
#[test]
fn bad_select_inputs() {
    let w = world();
    let d = scratch();
    let out = d.join("selected.jsonl");
    let targets = write(
        &d.join("t.jsonl"),
        "{\"prompt\":\"Mira Tolven was born in\",\"completion\":\" Kestrel Bay\"}\n",
    );
    let select = |extra: &[&str]| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = vec![
            "select",
            "--model",
            p(&w.model),
            "--pool",
            p(&w.corpus),
            "--targets",
            targets,
        ];
        v.extend(extra.iter().map(|s| leak(s)));
        v
    };
    let o = p(&out);
    fails(
        select(&["--top-n", "3", "--out", o]),
        &["--factors", "ekfac"],
        &[&out],
    );
    let f = p(&w.factors);
    for m in ["bm25", "repsim", "grad-cosine"] {
        fails(
            select(&["--method", m, "--factors", f, "--top-n", "3", "--out", o]),
            &["--factors", m],
            &[&out],
        );
    }
    fails(
        select(&[
            "--method",
            "bm25",
            "--damping",
            "0.1",
            "--top-n",
            "3",
            "--out",
            o,
        ]),
        &["--damping"],
        &[&out],
    );
    fails(
        select(&[
            "--method",
            "repsim",
            "--projection-dim",
            "64",
            "--top-n",
            "3",
            "--out",
            o,
        ]),
        &["--projection-dim"],
        &[&out],
    );
    fails(
        select(&["--method", "bm25", "--top-n", "0", "--out", o]),
        &["--top-n"],
        &[&out],
    );
    for pct in ["0", "100.5", "-3"] {
        fails(
            select(&["--method", "bm25", "--top-pct", pct, "--out", o]),
            &["top-pct"],
            &[&out],
        );
    }
    fails(
        select(&[
            "--method",
            "bm25",
            "--top-n",
            "3",
            "--top-pct",
            "5",
            "--out",
            o,
        ]),
        &["--top-n", "--top-pct"],
        &[&out],
    );
    fails(
        select(&["--method", "bm25", "--out", o]),
        &["--top-n"],
        &[&out],
    );
    fails(
        select(&[
            "--method",
            "bm25",
            "--top-n",
            "3",
            "--dedup-threshold",
            "0.5",
            "--out",
            o,
        ]),
        &["--dedup"],
        &[&out],
    );
    fails(
        select(&[
            "--method",
            "bm25",
            "--top-n",
            "3",
            "--dedup",
            "--dedup-threshold",
            "1.5",
            "--out",
            o,
        ]),
        &["dedup-threshold"],
        &[&out],
    );
    let csv = d.join("selected.csv");
    fails(
        select(&["--method", "bm25", "--top-n", "3", "--out", p(&csv)]),
        &["--out", "selected.csv"],
        &[&csv],
    );
    let pq = d.join("selected.parquet");
    fails(
        select(&["--method", "bm25", "--top-n", "3", "--out", p(&pq)]),
        &["--out", "jsonl pool"],
        &[&pq],
    );
    // Targets: an empty text file, a jsonl without rows, a jsonl row without completion.
    for (name, body, why) in [
        ("empty.txt", "\n  \n", "no targets"),
        ("empty.jsonl", "\n", "no targets"),
        ("bad.jsonl", "{\"prompt\":\"a\"}\n", "completion"),
    ] {
        let t = write(&d.join(name), body);
        let mut args = select(&["--method", "bm25", "--top-n", "3", "--out", o]);
        args[6] = t;
        fails(args, &[name, why], &[&out]);
    }
    // Pools: unknown extension, a folder, and a pool whose records already carry tda_rank.
    let csv_pool = write(&d.join("pool.csv"), "text\nhello\n");
    let mut args = select(&["--method", "bm25", "--top-n", "3", "--out", o]);
    args[4] = csv_pool;
    fails(args, &["--pool", "pool.csv"], &[&out]);
    let mut args = select(&["--method", "bm25", "--top-n", "3", "--out", o]);
    args[4] = p(&w.dir);
    fails(args, &["--pool"], &[&out]);
    let taken = write(
        &d.join("taken.jsonl"),
        "{\"text\":\"Mira Tolven was born in Kestrel Bay\",\"tda_rank\":1}\n",
    );
    let mut args = select(&["--method", "bm25", "--top-n", "3", "--out", o]);
    args[4] = taken;
    fails(args, &["taken.jsonl", "tda_rank"], &[&out]);
    // A token budget smaller than the best document.
    fails(
        select(&["--method", "bm25", "--token-budget", "2", "--out", o]),
        &["--token-budget", "tokens"],
        &[&out],
    );
}

/// Sharded jobs: bad `--shard` specs, flags that cannot be split or do not apply, and merges of
/// files that are not partials, or of an incomplete or mixed set; nothing is written.
#[test]
fn bad_shards_and_merges() {
    let w = world();
    let d = scratch();
    let corpus = p(&w.corpus);
    let part = d.join("p0.part");
    // 90–93: --shard values and the flags it cannot go with.
    for bad in ["4/4", "1", "a/3", "0/0"] {
        fails(
            fit(corpus, &part, &["--shard", bad]),
            &["--shard", "i/n"],
            &[&part],
        );
    }
    fails(
        fit(corpus, &part, &["--shard", "0/2", "--max-windows", "5"]),
        &["--max-windows", "--shard"],
        &[&part],
    );
    fails(
        fit(corpus, &part, &["--eigenbases", p(&w.factors)]),
        &["required", "--shard"],
        &[&part],
    );
    fails(
        fit(
            corpus,
            &part,
            &[
                "--shard",
                "0/2",
                "--strategy",
                "kfac",
                "--eigenbases",
                p(&w.factors),
            ],
        ),
        &["--eigenbases", "ekfac"],
        &[&part],
    );
    // 94: eigenbases that are a factors folder, not a merged covariance pass.
    fails(
        fit(
            corpus,
            &part,
            &["--shard", "0/2", "--eigenbases", p(&w.factors)],
        ),
        &["not an eigenbases folder", "stage.json"],
        &[&part],
    );
    // 95–96: trace --shard needs --out and is not for --json.
    let tp = d.join("t0.parquet");
    fails(
        trace(&["--corpus", corpus, "--shard", "0/2"])
            .into_iter()
            .chain(Q),
        &["--out"],
        &[],
    );
    fails(
        trace(&[
            "--corpus",
            corpus,
            "--shard",
            "0/2",
            "--out",
            p(&tp),
            "--json",
        ])
        .into_iter()
        .chain(Q),
        &["--json", "--shard"],
        &[&tp],
    );
    // 97–101: merges.
    let out = d.join("merged");
    fails(
        ["merge", p(&d.join("nope.part")), "--out", p(&out)],
        &["nope.part", "no such"],
        &[&out],
    );
    fails(
        ["merge", p(&w.corpus), "--out", p(&out)],
        &["corpus.jsonl", "not a partial trace"],
        &[&out],
    );
    ok(fit(corpus, &part, &["--shard", "0/2"]));
    fails(
        ["merge", p(&part), "--out", p(&out)],
        &["missing shard 1 of 2"],
        &[&out],
    );
    fails(
        ["merge", p(&part), "--top-k", "5", "--out", p(&out)],
        &["--top-k", "fit partial"],
        &[&out],
    );
    fails(["merge", p(&part)], &["--out"], &[]);
    let sp = d.join("s0.parquet");
    ok(trace(&[
        "--corpus",
        corpus,
        "--shard",
        "0/1",
        "--top-k",
        "3",
        "--out",
        p(&sp),
    ])
    .into_iter()
    .chain(Q));
    let res = d.join("res.parquet");
    fails(
        ["merge", p(&sp), "--top-k", "5", "--out", p(&res)],
        &["--top-k 5", "the 3 results each shard kept"],
        &[&res],
    );
    fails(
        ["merge", p(&sp), p(&part), "--out", p(&res)],
        &["p0.part", "not a partial trace"],
        &[&res],
    );
}
