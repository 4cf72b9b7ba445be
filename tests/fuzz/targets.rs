//! The fuzz targets: each one's seeds, dictionary, and how one input reaches the loader — the
//! way the CLI calls it, and on to the first use of what was loaded (a forward pass, a render, a
//! search, a preconditioned query), since a loader that accepts bad bytes must not move the
//! panic one step later.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tda_model::device::Cpu;
use tda_model::ModelConfig;
use tda_tests::fixture;

use crate::dicts;
use crate::harness::{files_under, fuzz_dir, hash, Target};

/// Text scored or rendered with whatever was loaded.
const SAMPLE: &str = "Ada Lovelace wrote the first program. Water is H2O 🙂\n";

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    files_under(&fuzz_dir("seeds", target))
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tda-fuzz-")
        .tempdir()
        .unwrap()
}

fn err(e: impl Display) -> String {
    e.to_string()
}

/// The file name of a slot (`gpt2/config.json` → `config.json`).
fn file_of(slot: &str) -> &str {
    slot.rsplit('/').next().unwrap()
}

/// Writes `bytes` as `file_of(slot)` in a fresh temporary folder.
fn write_tmp(slot: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let d = tmp();
    let p = d.path().join(file_of(slot));
    std::fs::write(&p, bytes).unwrap();
    (d, p)
}

/// `tda_model::hf::read_safetensors` (weights of every model folder).
pub fn safetensors() -> Target {
    let mut s = seeds("safetensors");
    for (family, file) in [
        ("gpt2", "model.safetensors"),
        ("qwen2", "model.safetensors"),
    ] {
        let bytes = std::fs::read(fixture(family).join(file)).unwrap();
        s.push((format!("{family}.safetensors"), bytes));
    }
    Target {
        name: "safetensors",
        seeds: s,
        dict: dicts::SAFETENSORS,
        run: Arc::new(|slot, bytes| {
            let (_d, p) = write_tmp(slot, bytes);
            tda_model::hf::read_safetensors(&p).map(drop).map_err(err)
        }),
    }
}

/// `ModelConfig::from_file` (`config.json` of every family); a config that loads must write
/// back as itself.
pub fn config() -> Target {
    Target {
        name: "config",
        seeds: seeds("config"),
        dict: dicts::CONFIG,
        run: Arc::new(|slot, bytes| {
            let (_d, p) = write_tmp(slot, bytes);
            let cfg = ModelConfig::from_file(&p).map_err(err)?;
            let _ = cfg.n_params();
            let back = ModelConfig::from_hf_json(&cfg.to_hf_json());
            assert_eq!(back.as_ref(), Ok(&cfg), "config.json written back differs");
            Ok(())
        }),
    }
}

/// The GPT-2 fixture, loaded once, behind a lock (shared by the worker threads).
fn gpt2() -> Arc<Mutex<tda_model::HfModel<Cpu>>> {
    let m = tda_model::load_folder::<Cpu>(&fixture("gpt2"), &Default::default()).unwrap();
    Arc::new(Mutex::new(m))
}

/// `tda_model::hf::load_tokenizer` against the GPT-2 config, then scoring a text with the GPT-2
/// model and the loaded tokenizer (what every command does next).
pub fn tokenizer() -> Target {
    let model = gpt2();
    Target {
        name: "tokenizer",
        seeds: seeds("tokenizer"),
        dict: dicts::TOKENIZER,
        run: Arc::new(move |slot, bytes| {
            let (_d, p) = write_tmp(slot, bytes);
            let m = model.lock().unwrap_or_else(|e| e.into_inner());
            let tok = tda_model::hf::load_tokenizer(&p, &m.model.config).map_err(err)?;
            let enc = tok.encode(SAMPLE, true).map_err(err)?;
            tok.decode(enc.get_ids(), false).map_err(err)?;
            tda_model::infer::score_text(&m.model, &tok, SAMPLE).map_err(err)?;
            Ok(())
        }),
    }
}

/// Files of a fixture model folder that `load_folder` and the fingerprint read.
fn model_files(family: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixture(family))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == "config.json"
                || n == "tokenizer.json"
                || n == "model.safetensors.index.json"
                || n.starts_with("model") && n.ends_with(".safetensors")
        })
        .collect();
    v.sort();
    v
}

/// `tda_model::load_folder` on a fixture folder with one file replaced, then the fingerprint
/// (`tda fit` / `trace`) and scoring a text.
pub fn model_folder() -> Target {
    let mut s = Vec::new();
    for (family, files) in [
        (
            "gpt2",
            &["config.json", "tokenizer.json", "model.safetensors"][..],
        ),
        (
            "llama",
            &[
                "config.json",
                "model.safetensors.index.json",
                "model-00002-of-00003.safetensors",
            ],
        ),
        ("qwen2", &["config.json", "model.safetensors"]),
        ("mistral", &["config.json"]),
    ] {
        for f in files {
            let bytes = std::fs::read(fixture(family).join(f)).unwrap();
            s.push((format!("{family}/{f}"), bytes));
        }
    }
    Target {
        name: "model-folder",
        seeds: s,
        dict: dicts::MODEL_FOLDER,
        run: Arc::new(|slot, bytes| {
            let (family, file) = slot.split_once('/').unwrap();
            let d = tmp();
            for f in model_files(family) {
                if f != file {
                    std::os::unix::fs::symlink(fixture(family).join(&f), d.path().join(&f))
                        .unwrap();
                }
            }
            std::fs::write(d.path().join(file), bytes).unwrap();
            let m = tda_model::load_folder::<Cpu>(d.path(), &Default::default()).map_err(err)?;
            tda_trace::model_fingerprint(d.path()).map_err(err)?;
            tda_model::infer::score_text(&m.model, &m.tokenizer, SAMPLE).map_err(err)?;
            Ok(())
        }),
    }
}

/// `ChatTemplate::from_folder` (`tokenizer_config.json`) and `render_user`, as `tda cite` does.
pub fn chat_template() -> Target {
    Target {
        name: "chat-template",
        seeds: seeds("chat-template"),
        dict: dicts::JINJA,
        run: Arc::new(|slot, bytes| {
            let (d, _) = write_tmp(slot, bytes);
            if let Some(t) = tda_context::ChatTemplate::from_folder(d.path()).map_err(err)? {
                t.render_user(SAMPLE).map_err(err)?;
            }
            Ok(())
        }),
    }
}

/// Reader options picked from the input's hash, so a saved input replays the same way.
fn read_options(h: u64) -> tda_corpus::ReadOptions {
    let bit = |i: u32| h >> i & 1 == 1;
    tda_corpus::ReadOptions {
        text_column: if bit(0) && bit(1) { "title" } else { "text" }.into(),
        id_column: (!bit(2)).then(|| "id".into()),
        title_column: bit(3).then(|| "title".into()),
        default_id: if bit(4) {
            tda_corpus::DefaultId::Ordinal
        } else {
            tda_corpus::DefaultId::FileRow
        },
        text_mode: if bit(5) {
            tda_corpus::TextMode::File
        } else {
            tda_corpus::TextMode::Line
        },
        max_doc_bytes: if bit(6) { 40 } else { 64 << 20 },
        parquet_batch_rows: if bit(7) { 1 } else { 1024 },
        strict: bit(8),
    }
}

/// `tda_corpus::open_corpus` read to the end (jsonl, txt, parquet), every document read again
/// by `fetch_documents` (it must be the same text), and `tda_context::read_documents`.
pub fn corpus() -> Target {
    Target {
        name: "corpus",
        seeds: seeds("corpus"),
        dict: dicts::CORPUS,
        run: Arc::new(|slot, bytes| {
            let (_d, p) = write_tmp(slot, bytes);
            let opts = read_options(hash(bytes));
            let mut docs = Vec::new();
            let mut first_err = None;
            for item in tda_corpus::open_corpus(&p, &opts)
                .map_err(err)?
                .take(100_000)
            {
                match item {
                    Ok(d) => docs.push(d),
                    Err(e) => first_err = first_err.or(Some(err(e))),
                }
            }
            let fetch_opts = tda_corpus::ReadOptions {
                default_id: tda_corpus::DefaultId::FileRow,
                ..opts
            };
            let sources: Vec<_> = docs.iter().map(|d| d.source.clone()).collect();
            if let Ok(again) = tda_corpus::fetch_documents(&sources, &fetch_opts) {
                for (a, b) in docs.iter().zip(&again) {
                    assert_eq!((&a.text, &a.title), (&b.text, &b.title), "fetch differs");
                }
            }
            tda_context::read_documents(&p).map_err(err)?;
            first_err.map_or(Ok(()), Err)
        }),
    }
}

/// A query gradient of ones for every layer of `f` (`n = 1` token).
fn ones(f: &tda_curvature::Factors) -> tda_curvature::QueryGradient {
    tda_curvature::QueryGradient {
        layers: f
            .layers
            .iter()
            .map(|l| tda_curvature::QueryLayerGrad {
                n: 1,
                g: vec![1.0; l.spec.d_out],
                a: vec![0.5; l.spec.d_a()],
            })
            .collect(),
    }
}

/// `tda_curvature::storage::load` and `tda_trace::fit::load_checked` (a factors folder against
/// the GPT-2 fixture), then preconditioning a query with the loaded factors.
pub fn factors() -> Target {
    let model = gpt2();
    let layers = model.lock().unwrap().model.linear_layers();
    let fp = tda_trace::model_fingerprint(&fixture("gpt2")).unwrap();
    let mut s = seeds("factors");
    s.retain(|(slot, _)| slot.ends_with(".safetensors"));
    Target {
        name: "factors",
        seeds: s,
        dict: dicts::FACTORS,
        run: Arc::new(move |slot, bytes| {
            let (d, p) = write_tmp(slot, bytes);
            let _ = tda_curvature::storage::load(&p, None);
            let f = tda_trace::fit::load_checked(d.path(), &fp, &layers).map_err(err)?;
            let damping = tda_curvature::Damping::default();
            let rank = tda_curvature::Rank::Truncated(4);
            tda_curvature::precondition(&f, damping, &[ones(&f)], rank).map_err(err)?;
            Ok(())
        }),
    }
}

/// Copies the files of `from` into `to` (flat).
fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Index payloads: `meta.json` of an index built by `tda_corpus` (tantivy's metadata with tda's
/// build information as its payload), then `CorpusIndex::open`, `check_corpus`, searches with
/// both engines and `candidates` (which reads documents back). Paths of the build folder are
/// `@DIR@` in the inputs, so saved inputs replay anywhere.
pub fn index() -> Target {
    let base = Arc::new(tmp());
    let corpus = base.path().join("corpus.jsonl");
    std::fs::copy(fuzz_dir("seeds", "index").join("corpus.jsonl"), &corpus).unwrap();
    let dir = base.path().to_string_lossy().into_owned();
    let mut s = Vec::new();
    for (variant, passages, stem) in [("plain", None, false), ("passages", Some(4), true)] {
        let opts = tda_corpus::IndexOptions {
            threads: 1,
            memory_budget: 15 << 20,
            passages: passages.map(|w| tda_corpus::Passages {
                words: w,
                stride: 2,
            }),
            analyzer: tda_corpus::AnalyzerSettings {
                stemming: stem,
                ..Default::default()
            },
            ..Default::default()
        };
        let idx = base.path().join(variant);
        tda_corpus::CorpusIndex::build(&corpus, &idx, &opts, tda_corpus::Progress::Hidden).unwrap();
        let meta = std::fs::read_to_string(idx.join("meta.json")).unwrap();
        s.push((
            format!("{variant}/meta.json"),
            meta.replace(&dir, "@DIR@").into_bytes(),
        ));
    }
    Target {
        name: "index",
        seeds: s,
        dict: dicts::INDEX,
        run: Arc::new(move |slot, bytes| {
            let variant = slot.split('/').next().unwrap();
            let d = tmp();
            copy_dir(&base.path().join(variant), d.path());
            let meta = String::from_utf8_lossy(bytes).replace("@DIR@", &dir);
            std::fs::write(d.path().join("meta.json"), meta).unwrap();
            let idx = tda_corpus::CorpusIndex::open(d.path()).map_err(err)?;
            // A mismatch is an error the CLI reports; the searches below run regardless.
            let _ = idx.check_corpus(&base.path().join("corpus.jsonl"));
            // Every step runs even when an earlier one fails; the first error is the outcome.
            let q = "Ada program water hydrogen fox";
            let tantivy = tda_corpus::QueryOptions {
                tantivy_engine: true,
                ..Default::default()
            };
            let steps = [
                idx.search(q, 5, tda_corpus::Ranking::Bm25).map(drop),
                idx.search(q, 5, tda_corpus::Ranking::TfIdf).map(drop),
                idx.search_with(q, 3, &tantivy).map(drop),
                idx.candidates(q, 3, &Default::default()).map(drop),
            ];
            steps.into_iter().collect::<Result<(), _>>().map_err(err)
        }),
    }
}

/// `tda_trace::read_rows` for queries and relabel rows (`tda trace --queries / --relabel`), then
/// tokenizing every query as `trace` does.
pub fn queries() -> Target {
    let model = gpt2();
    let (tok, cfg) = {
        let m = model.lock().unwrap();
        (m.tokenizer.clone(), m.model.config.clone())
    };
    Target {
        name: "queries",
        seeds: seeds("queries"),
        dict: dicts::QUERIES,
        run: Arc::new(move |slot, bytes| {
            let (_d, p) = write_tmp(slot, bytes);
            if slot.starts_with("relabel") {
                tda_trace::read_rows::<tda_trace::RelabelRow>(&p, "relabel rows").map_err(err)?;
                return Ok(());
            }
            let rows = tda_trace::read_rows::<tda_trace::Query>(&p, "queries").map_err(err)?;
            for q in rows {
                let _ = tda_trace::query::encode_query(&tok, &cfg, &q.prompt, &q.completion);
            }
            Ok(())
        }),
    }
}
