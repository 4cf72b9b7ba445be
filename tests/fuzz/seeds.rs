//! Writes the committed seed files under `tests/fuzz/seeds/` from the fixtures and the real
//! writers (safetensors, parquet through arrow, factors through `tda_trace::fit`). Run it when a
//! format changes, then commit the folder:
//! `cargo test --release -p tda-tests --test fuzz -- --ignored write_seeds`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use safetensors::{tensor::TensorView, Dtype};
use tda_model::device::CpuAutodiff;
use tda_tests::fixture;

use crate::harness::fuzz_dir;

fn put(target: &str, rel: &str, bytes: &[u8]) {
    let p = fuzz_dir("seeds", target).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn copy(target: &str, rel: &str, from: &Path) {
    put(target, rel, &std::fs::read(from).unwrap());
}

/// A safetensors file from `(name, dtype, shape, bytes)`.
fn safetensors(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
        .collect()
}

fn write_safetensors_seeds() {
    let half: Vec<u8> = (0..6)
        .flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes())
        .collect();
    let bhalf: Vec<u8> = (0..4)
        .flat_map(|i| half::bf16::from_f32(-(i as f32)).to_le_bytes())
        .collect();
    let f64s: Vec<u8> = (0..3)
        .flat_map(|i| (i as f64 / 7.0).to_le_bytes())
        .collect();
    let i64s: Vec<u8> = (0..2i64).flat_map(|i| i.to_le_bytes()).collect();
    put(
        "safetensors",
        "f32.safetensors",
        &safetensors(&[
            ("transformer.ln_f.weight", Dtype::F32, vec![4], f32s(4)),
            ("transformer.wte.weight", Dtype::F32, vec![3, 4], f32s(12)),
        ]),
    );
    put(
        "safetensors",
        "mixed.safetensors",
        &safetensors(&[
            ("a.f16", Dtype::F16, vec![2, 3], half),
            ("b.bf16", Dtype::BF16, vec![4], bhalf),
            ("c.f64", Dtype::F64, vec![3, 1], f64s),
            ("d.i64", Dtype::I64, vec![2], i64s),
            ("e.bool", Dtype::BOOL, vec![2], vec![0, 1]),
            ("f.scalar", Dtype::F32, vec![], f32s(1)),
            ("g.empty", Dtype::F32, vec![0, 5], vec![]),
        ]),
    );
    put("safetensors", "empty.safetensors", &safetensors(&[]));
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let cols = columns.into_iter().map(|(_, a)| a).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

const DOCS: &str = concat!(
    "{\"id\":\"ada\",\"title\":\"Ada Lovelace\",\"text\":\"Ada Lovelace wrote the first program for the Analytical Engine.\"}\n",
    "{\"id\":7,\"title\":null,\"text\":\"Water is composed of hydrogen and oxygen.\"}\n",
    "{\"text\":\"The quick brown fox jumps over the lazy dog.\",\"extra\":[1,2,{\"k\":\"v\"}]}\n",
    "\n",
    "{\"id\":\"e\",\"text\":\"\"}\n",
    "{\"id\":\"u\",\"title\":\"Ünïcödé\",\"text\":\"Grüße aus Zürich — 東京 🙂\\nsecond line\"}\n",
);

fn write_corpus_seeds() {
    put("corpus", "docs.jsonl", DOCS.as_bytes());
    put("index", "corpus.jsonl", DOCS.as_bytes());
    put(
        "corpus",
        "lines.txt",
        "first line of text\r\nsecond line\n\n   \nthird line without end".as_bytes(),
    );
    let dir = fuzz_dir("seeds", "corpus");
    let texts = ["Ada wrote a program.", "Water is wet.", "", "Fox and dog."];
    write_parquet(
        &dir.join("docs.parquet"),
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("c"),
                    Some("d"),
                ])),
            ),
            (
                "title",
                Arc::new(StringArray::from(vec![Some("A"), Some("W"), None, None])),
            ),
            ("text", Arc::new(StringArray::from(texts.to_vec()))),
        ],
    );
    let bytes: Vec<Option<&[u8]>> = vec![Some(b"binary text"), None, Some(b"\xff\xfe")];
    write_parquet(
        &dir.join("binary.parquet"),
        vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3]))),
            ("text", Arc::new(BinaryArray::from(bytes))),
        ],
    );
}

const QUERIES: &str = concat!(
    "{\"id\":\"q1\",\"prompt\":\"Ada Lovelace wrote\",\"completion\":\" the first program\"}\n",
    "{\"prompt\":\"Water is\",\"completion\":\" hydrogen and oxygen\"}\n",
    "\n",
    "{\"id\":\"q3\",\"prompt\":\"\",\"completion\":\"x\",\"unknown\":1}\n",
);
const RELABEL: &str = "{\"id\":\"r1\",\"prompt\":\"Water is\",\"original\":\" wet\",\"replacement\":\" dry\"}\n{\"prompt\":\"A\",\"original\":\"b\",\"replacement\":\"c\"}\n";

/// Chat templates in the shapes real models ship (ChatML, Llama-2, Mistral, Zephyr, list form).
const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

fn write_chat_seeds() {
    let cfg = |template: serde_json::Value, bos: serde_json::Value| {
        let v = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos,
            "eos_token": "</s>",
            "model_max_length": 4096,
            "chat_template": template,
        });
        serde_json::to_string_pretty(&v).unwrap()
    };
    let rel = |name: &str| format!("{name}/tokenizer_config.json");
    put(
        "chat-template",
        &rel("chatml"),
        cfg(CHATML.into(), serde_json::Value::Null).as_bytes(),
    );
    put(
        "chat-template",
        &rel("llama2"),
        cfg(LLAMA2.into(), "<s>".into()).as_bytes(),
    );
    let bos_obj = serde_json::json!({"content": "<s>", "lstrip": false, "__type": "AddedToken"});
    put(
        "chat-template",
        &rel("mistral"),
        cfg(MISTRAL.into(), bos_obj).as_bytes(),
    );
    put(
        "chat-template",
        &rel("zephyr"),
        cfg(ZEPHYR.into(), "<s>".into()).as_bytes(),
    );
    let list = serde_json::json!([
        {"name": "tool_use", "template": "{{ messages|tojson }}"},
        {"name": "default", "template": CHATML},
    ]);
    put(
        "chat-template",
        &rel("list"),
        cfg(list, "<s>".into()).as_bytes(),
    );
    copy(
        "chat-template",
        &rel("none"),
        &fixture("gpt2").join("tokenizer_config.json"),
    );
}

fn write_factor_seeds() {
    let model_dir = fixture("gpt2");
    let device = Default::default();
    let m = tda_model::load_folder::<CpuAutodiff>(&model_dir, &device).unwrap();
    let fp = tda_trace::model_fingerprint(&model_dir).unwrap();
    let corpus = fuzz_dir("seeds", "corpus").join("docs.jsonl");
    let source = tda_trace::DocSource::corpus(corpus);
    let runs: BTreeMap<&str, (tda_curvature::Strategy, Option<usize>)> = [
        ("ekfac", (tda_curvature::Strategy::Ekfac, None)),
        ("ekfac-blocks", (tda_curvature::Strategy::Ekfac, Some(8))),
        ("kfac", (tda_curvature::Strategy::Kfac, None)),
        ("diagonal", (tda_curvature::Strategy::Diagonal, None)),
        ("identity", (tda_curvature::Strategy::Identity, None)),
    ]
    .into();
    for (name, (strategy, max_block)) in runs {
        let opts = tda_trace::FitOptions {
            strategy,
            modules: tda_trace::ModuleSelection::Patterns(vec!["h.0.attn.c_proj".into()]),
            max_block,
            windows: tda_trace::WindowOptions {
                max_len: 16,
                batch_size: 4,
                max_windows: Some(8),
                ..Default::default()
            },
            ..Default::default()
        };
        let (factors, report) =
            tda_trace::fit(&m.model, &m.tokenizer, &source, &opts, &fp, &mut |_| {}).unwrap();
        let dir = fuzz_dir("seeds", "factors").join(name);
        tda_trace::fit::save(&factors, &report, &dir).unwrap();
    }
}

/// The fixture tokenizer with a template post-processor and padding (ids outside the
/// vocabulary map), and a small WordLevel tokenizer; both must load.
fn write_tokenizer_seeds() {
    let path = fixture("tokenizer").join("tokenizer.json");
    copy("tokenizer", "bpe/tokenizer.json", &path);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let eot = "<|endoftext|>";
    v["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": eot, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {eot: {"id": eot, "ids": [0], "tokens": [eot]}},
    });
    v["padding"] = serde_json::json!({
        "strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": eot,
    });
    let template = serde_json::to_string(&v).unwrap();
    let words = [
        "<unk>", "Ada", "Lovelace", "wrote", "the", "first", "program", ".",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let word_level = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    let word_level = serde_json::to_string_pretty(&word_level).unwrap();
    for (rel, text) in [
        ("template/tokenizer.json", &template),
        ("wordlevel/tokenizer.json", &word_level),
    ] {
        text.parse::<tda_model::Tokenizer>().unwrap();
        put("tokenizer", rel, text.as_bytes());
    }
}

#[test]
#[ignore = "rewrites tests/fuzz/seeds; run by hand"]
fn write_seeds() {
    write_safetensors_seeds();
    for family in ["gpt2", "llama", "qwen2", "mistral"] {
        copy(
            "config",
            &format!("{family}/config.json"),
            &fixture(family).join("config.json"),
        );
    }
    write_tokenizer_seeds();
    write_corpus_seeds();
    put("queries", "queries.jsonl", QUERIES.as_bytes());
    put("queries", "relabel.jsonl", RELABEL.as_bytes());
    write_chat_seeds();
    write_factor_seeds();
}
