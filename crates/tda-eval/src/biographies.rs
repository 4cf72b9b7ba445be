//! A small generated corpus of short biographies of invented people, with facts that appear in
//! exactly one document each ("planted" facts). The demo and the tests train on it, so that
//! attribution results can be checked against a known truth. Deterministic in the seed.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::words::{pick, word, CITIES, COLORS, JOBS, PETS};

const FILLER: &[&str] = &[
    "The weather in the valley was mild that year.",
    "Many people in the town enjoy long walks by the river.",
    "The market opens early on most days of the week.",
    "Old maps of the region show roads that no longer exist.",
    "Travellers often stop at the inn near the bridge.",
    "The library keeps records of every family in the district.",
    "In winter the lake freezes and children skate on it.",
    "Local stories say the hills were once covered in forest.",
];

/// One invented person and the facts stated about them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Person {
    pub name: String,
    pub city: String,
    pub job: String,
    pub color: String,
    pub pet: String,
    pub year: u32,
}

/// A generated document: an id, its text, and the person it is about.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyntheticDoc {
    pub id: String,
    pub text: String,
    pub person: Person,
}

/// `n` biographies (distinct names), one person per document.
pub fn biographies(n: usize, seed: u64) -> Vec<SyntheticDoc> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let name = format!("{} {}", word(&mut rng, 2), word(&mut rng, 2));
        if !seen.insert(name.clone()) {
            continue;
        }
        let p = Person {
            name,
            city: pick(&mut rng, CITIES).into(),
            job: pick(&mut rng, JOBS).into(),
            color: pick(&mut rng, COLORS).into(),
            pet: pick(&mut rng, PETS).into(),
            year: rng.random_range(1900..2000),
        };
        let first = p.name.split(' ').next().unwrap_or("").to_string();
        let mut sentences = vec![
            format!("{} was born in {} in {}.", p.name, p.city, p.year),
            format!("{} works as a {}.", first, p.job),
            format!("The favourite colour of {} is {}.", p.name, p.color),
            format!("{} has a {} at home.", first, p.pet),
        ];
        // Shuffle the fact order and add one or two filler sentences.
        for i in (1..sentences.len()).rev() {
            let j = rng.random_range(0..=i);
            sentences.swap(i, j);
        }
        for _ in 0..rng.random_range(1..=2) {
            let at = rng.random_range(0..=sentences.len());
            sentences.insert(at, pick(&mut rng, FILLER).to_string());
        }
        out.push(SyntheticDoc {
            id: format!("bio-{:05}", out.len()),
            text: sentences.join(" "),
            person: p,
        });
    }
    out
}

/// Writes documents as jsonl (`{"id", "text"}` per line) to `path`, atomically.
pub fn write_jsonl(docs: &[SyntheticDoc], path: &std::path::Path) -> std::io::Result<()> {
    let mut s = String::new();
    for d in docs {
        s.push_str(&serde_json::json!({ "id": d.id, "text": d.text }).to_string());
        s.push('\n');
    }
    tda_io::write_file(path, s.as_bytes())
}

#[cfg(feature = "runs")]
/// One fact of document `i` as a query, for the first `n` documents: fact `i mod 4` of
/// (birth place and year, job, colour, pet), in the template of the documents, with the
/// document's id as the query id (the planted truth of a fact-tracing query).
pub fn fact_queries(docs: &[SyntheticDoc], n: usize) -> Vec<tda_trace::Query> {
    docs.iter()
        .take(n)
        .enumerate()
        .map(|(i, d)| {
            let p = &d.person;
            let first = p.name.split(' ').next().unwrap_or("");
            let (prompt, completion) = match i % 4 {
                0 => (
                    format!("{} was born in", p.name),
                    format!(" {} in {}.", p.city, p.year),
                ),
                1 => (format!("{first} works as a"), format!(" {}.", p.job)),
                2 => (
                    format!("The favourite colour of {} is", p.name),
                    format!(" {}.", p.color),
                ),
                _ => (format!("{first} has a"), format!(" {} at home.", p.pet)),
            };
            tda_trace::Query {
                id: d.id.clone(),
                prompt,
                completion,
            }
        })
        .collect()
}

/// The tiny GPT-2 shape that the planted-fact tests and benches train on biographies (2 layers,
/// hidden 64, 128 positions, tied embeddings; `eot` is BOS and EOS).
pub fn tiny_gpt2(vocab_size: usize, eot: u32) -> tda_model::ModelConfig {
    tda_model::ModelConfig {
        arch: tda_model::Arch::Gpt2,
        vocab_size,
        hidden: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 4,
        head_dim: 16,
        intermediate: 256,
        max_positions: 128,
        norm_eps: 1e-5,
        rope_theta: 0.0,
        tie_embeddings: true,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        bos_token_id: Some(eot),
        eos_token_id: Some(eot),
        sliding_window: None,
    }
}
