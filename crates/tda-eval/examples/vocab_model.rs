//! Writes a Qwen2-shaped model with the real 151,936-entry vocabulary (random init, tied
//! embeddings, few blocks), a corpus of synthetic biographies and queries about them — the inputs
//! of `benches/real_vocab/run.sh`, which runs `tda fit` + `tda trace` on them with default flags
//! and measures peak memory:
//!
//! ```sh
//! cargo run --release -p tda-eval --example vocab_model -- OUT HIDDEN LAYERS DOCS BIOS_PER_DOC [VOCAB [ARCH [QUERIES]]]
//! ```
//!
//! `OUT/model` (HF folder; the tokenizer is a 2,048-entry byte-level BPE trained on the corpus:
//! ids stay below the model's vocabulary, as Qwen2's own tokenizer is smaller than its
//! `vocab_size`), `OUT/corpus.jsonl` (`DOCS` documents, each `BIOS_PER_DOC` biographies long),
//! `OUT/queries.jsonl` (`QUERIES` queries, default 8: a person's name → their city). `VOCAB`
//! (default 151,936, at least 2,048) sets another vocabulary size; `ARCH` `gpt2` makes a GPT-2
//! shape instead (heads of 64, learned positions up to 1,024, tied embeddings; `benches/gpt2_small`).

use std::io::Write;
use std::path::PathBuf;

use tda_eval::biographies::biographies;
use tda_model::device::Cpu;
use tda_model::{Arch, ModelConfig, Transformer};
use tda_train::{train_bpe, END_OF_TEXT};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, what: &str| -> usize {
        args.get(i)
            .unwrap_or_else(|| {
                panic!("usage: vocab_model OUT HIDDEN LAYERS DOCS BIOS_PER_DOC (missing {what})")
            })
            .parse()
            .unwrap_or_else(|_| panic!("{what}: not a number"))
    };
    let out = PathBuf::from(args.get(1).expect("OUT"));
    let (hidden, layers, docs, per_doc) = (
        arg(2, "HIDDEN"),
        arg(3, "LAYERS"),
        arg(4, "DOCS"),
        arg(5, "BIOS_PER_DOC"),
    );
    let vocab = args.get(6).map_or(151_936, |_| arg(6, "VOCAB"));
    assert!(vocab >= 2048, "VOCAB must hold the 2,048-entry tokenizer");
    let bios = biographies(docs * per_doc, 5);
    let texts: Vec<String> = bios
        .chunks(per_doc)
        .map(|c| {
            c.iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let tok = train_bpe(texts.iter(), 2048).expect("tokenizer");
    let eot = tok.token_to_id(END_OF_TEXT).expect("eot");
    let heads = (hidden / 64).max(1);
    let arch = args.get(7).map_or("qwen2", String::as_str);
    let n_queries = args.get(8).map_or(8, |_| arg(8, "QUERIES"));
    let qwen2 = ModelConfig {
        arch: Arch::Qwen2,
        vocab_size: vocab,
        hidden,
        n_layers: layers,
        n_heads: heads,
        n_kv_heads: if heads % 2 == 0 { 2 } else { 1 },
        head_dim: hidden / heads,
        intermediate: hidden * 4864 / 896,
        max_positions: 32_768,
        norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        tie_embeddings: true,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        bos_token_id: None,
        eos_token_id: Some(eot),
        sliding_window: None,
    };
    let cfg = match arch {
        "qwen2" => qwen2,
        "gpt2" => ModelConfig {
            bos_token_id: Some(eot),
            eos_token_id: Some(eot),
            ..ModelConfig::gpt2(hidden, layers, heads, vocab, 1024)
        },
        other => panic!("ARCH: qwen2 or gpt2, not {other}"),
    };
    let model = Transformer::<Cpu>::init(&cfg, 0, &Default::default());
    tda_model::save_folder(&model, &tok, &out.join("model")).expect("save the model");
    let mut corpus = std::fs::File::create(out.join("corpus.jsonl")).expect("corpus");
    for (i, t) in texts.iter().enumerate() {
        let row = serde_json::json!({"id": format!("doc{i}"), "text": t});
        writeln!(corpus, "{row}").expect("write");
    }
    let mut queries = std::fs::File::create(out.join("queries.jsonl")).expect("queries");
    for b in bios
        .iter()
        .step_by((bios.len() / n_queries).max(1))
        .take(n_queries)
    {
        let row = serde_json::json!({
            "prompt": format!("{} was born in", b.person.name),
            "completion": format!(" {}", b.person.city),
        });
        writeln!(queries, "{row}").expect("write");
    }
    eprintln!(
        "{}: {arch}-shaped, hidden {hidden}, {layers} blocks, vocab {vocab}; {docs} documents, {n_queries} queries",
        out.display()
    );
}
