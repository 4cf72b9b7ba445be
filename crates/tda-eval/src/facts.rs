//! A fact-tracing world: planted facts stated in varied templates by 1, 2 or 3 documents each,
//! with hard negatives, and queries in a template the stating documents use or in one they do
//! not (a paraphrase). Ground truth for "which documents taught the model this fact".
//!
//! Per person, one planted fact (birthplace, job or pet) with `k ∈ {1, 2, 3}` stating documents,
//! each in a different template of that relation. Hard negatives, none of which states the fact:
//! - *entity* negatives: the same person with another relation (their favourite colour, a hobby);
//! - *object* negatives: another person with the same object, in the query's own template when
//!   the query is a paraphrase (so that matching the query's wording finds the wrong person);
//! - *both*: the same person and the same object in an unrelated relation ("X once visited Y").
//!
//! Invariants: deterministic in (`people`, `seed`); every document has a unique id; every query's
//! `truth` lists exactly the documents that state its fact; the query's completion is the object.

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::Serialize;

use crate::words::{pick, word, CITIES, COLORS, JOBS, PETS};

/// The relations with planted facts and their templates: (prompt before the object, after it).
/// Every template ends with the object, so any of them can be a query (prompt → " object.").
const TEMPLATES: [(&str, &[&str]); 3] = [
    (
        "birthplace",
        &[
            "{name} was born in",
            "The birthplace of {name} is",
            "{name} grew up in the town of",
            "Ask {name} where home is and the answer is",
        ],
    ),
    (
        "job",
        &[
            "{name} works as a",
            "By trade {name} is a",
            "The profession of {name} is that of a",
            "Everyone in town knows {name} as the local",
        ],
    ),
    (
        "pet",
        &[
            "{name} has a pet",
            "At home {name} keeps a",
            "The animal that lives with {name} is a",
            "Every morning {name} feeds the",
        ],
    ),
];

const FILLER: &[&str] = &[
    "The weather was mild that year.",
    "The market opens early on most days.",
    "Old maps of the region show roads that no longer exist.",
    "Travellers often stop at the inn near the bridge.",
    "In winter the lake freezes over.",
    "Local stories say the hills were once a forest.",
];

/// The world's corpus in a folder written by [`FactWorld::write_to`].
pub const CORPUS_FILE: &str = "corpus.jsonl";

/// A document of the world.
#[derive(Clone, Debug, Serialize)]
pub struct FactDoc {
    pub id: String,
    pub text: String,
}

/// How a query relates to its stating documents' wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum QueryKind {
    /// The query's template is one of the stating documents'.
    SameTemplate,
    /// No stating document uses the query's template.
    Paraphrase,
}

/// A fact-tracing query with its truth.
#[derive(Clone, Debug, Serialize)]
pub struct FactQuery {
    #[serde(flatten)]
    pub query: tda_trace::Query,
    pub relation: &'static str,
    /// The person the fact is about.
    pub subject: String,
    pub kind: QueryKind,
    /// Ids of the documents that state the fact (`1..=3`).
    pub truth: Vec<String>,
}

/// The world: documents (shuffled) and two queries per person (same template, paraphrase).
#[derive(Clone, Debug)]
pub struct FactWorld {
    pub docs: Vec<FactDoc>,
    pub queries: Vec<FactQuery>,
}

fn fill(template: &str, name: &str) -> String {
    template.replace("{name}", name)
}

/// The world of `people` people (distinct names), deterministic in `seed`.
pub fn fact_world(people: usize, seed: u64) -> FactWorld {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names = std::collections::HashSet::new();
    let mut docs: Vec<(String, String)> = Vec::new(); // (kind tag, text) before ids
    let mut queries = Vec::new();
    let mut next_id = 0usize;
    let mut push = |docs: &mut Vec<(String, String)>, text: String, rng: &mut StdRng| {
        let text = if rng.random_bool(0.5) {
            format!("{text} {}", pick(rng, FILLER))
        } else {
            format!("{} {text}", pick(rng, FILLER))
        };
        let id = format!("fact-{next_id:05}");
        next_id += 1;
        docs.push((id.clone(), text));
        id
    };
    for p in 0..people {
        let name = loop {
            let n = format!("{} {}", word(&mut rng, 2), word(&mut rng, 2));
            if names.insert(n.clone()) {
                break n;
            }
        };
        let (relation, templates) = TEMPLATES[p % TEMPLATES.len()];
        let objects = match relation {
            "birthplace" => CITIES,
            "job" => JOBS,
            _ => PETS,
        };
        let object = pick(&mut rng, objects);
        let k = 1 + p / TEMPLATES.len() % 3;
        let mut order: Vec<usize> = (0..templates.len()).collect();
        order.shuffle(&mut rng);
        // The first k templates state the fact; the query's paraphrase template is the last.
        let mut truth = Vec::with_capacity(k);
        for &t in &order[..k] {
            let text = format!("{} {object}.", fill(templates[t], &name));
            truth.push(push(&mut docs, text, &mut rng));
        }
        let same = order[rng.random_range(0..k)];
        let para = order[templates.len() - 1];
        // Entity negatives: the same person, other relations.
        let color = pick(&mut rng, COLORS);
        push(
            &mut docs,
            format!("The favourite colour of {name} is {color}."),
            &mut rng,
        );
        push(
            &mut docs,
            format!("On Sundays {name} likes to walk by the river."),
            &mut rng,
        );
        // Object negatives: other people with the same object, in the paraphrase template.
        for _ in 0..2 {
            let other = format!("{} {}", word(&mut rng, 2), word(&mut rng, 2));
            let text = format!("{} {object}.", fill(templates[para], &other));
            push(&mut docs, text, &mut rng);
        }
        // Both: the same person and object, another relation.
        let both = match relation {
            "birthplace" => format!("{name} once visited {object} on a holiday."),
            "job" => format!("{name} once met a {object} at the fair."),
            _ => format!("{name} once saw a {object} in a picture book."),
        };
        push(&mut docs, both, &mut rng);
        for (kind, t) in [
            (QueryKind::SameTemplate, same),
            (QueryKind::Paraphrase, para),
        ] {
            queries.push(FactQuery {
                query: tda_trace::Query {
                    id: format!(
                        "{}-{}",
                        truth[0],
                        if kind == QueryKind::Paraphrase {
                            "para"
                        } else {
                            "same"
                        }
                    ),
                    prompt: fill(templates[t], &name),
                    completion: format!(" {object}."),
                },
                relation,
                subject: name.clone(),
                kind,
                truth: truth.clone(),
            });
        }
    }
    docs.shuffle(&mut rng);
    FactWorld {
        docs: docs
            .into_iter()
            .map(|(id, text)| FactDoc { id, text })
            .collect(),
        queries,
    }
}

impl FactWorld {
    /// Writes the world into `dir` (created): `corpus.jsonl` and `queries.jsonl` (each query with
    /// its truth); returns the corpus path. A folder whose corpus differs while it holds a model
    /// record (`model.json`) is refused before anything is written, so a cached model never meets
    /// a corpus it was not trained on.
    pub fn write_to(
        &self,
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf, crate::methods::MethodError> {
        use crate::methods::MethodError::Usage;
        let err =
            |p: &std::path::Path, e: &dyn std::fmt::Display| Usage(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(dir)
            .map_err(|e| err(dir, &format!("cannot create the folder: {e}")))?;
        let corpus = dir.join(CORPUS_FILE);
        let jsonl = self.corpus_jsonl();
        let same = std::fs::read(&corpus).is_ok_and(|b| b == jsonl.as_bytes());
        if !same && dir.join("model.json").exists() {
            return Err(err(
                dir,
                &"this folder holds another world (other --people / --seed) and its model; use another folder or delete it",
            ));
        }
        if !same {
            tda_io::write_file(&corpus, jsonl.as_bytes()).map_err(|e| err(&corpus, &e))?;
        }
        let mut q = String::new();
        for fq in &self.queries {
            q.push_str(&serde_json::to_string(fq).expect("a query serialises"));
            q.push('\n');
        }
        let queries = dir.join("queries.jsonl");
        tda_io::write_file(&queries, q.as_bytes()).map_err(|e| err(&queries, &e))?;
        Ok(corpus)
    }

    /// The documents as jsonl (`{"id", "text"}` per line).
    pub fn corpus_jsonl(&self) -> String {
        let mut s = String::new();
        for d in &self.docs {
            s.push_str(&serde_json::json!({ "id": d.id, "text": d.text }).to_string());
            s.push('\n');
        }
        s
    }
}
