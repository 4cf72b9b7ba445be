//! A planted world for `tda explain`: people whose facts are only in the training data (memory)
//! and questions whose other fact is only in the prompt's documents (context).
//!
//! - `memory` people each have two memorised facts of different kinds: one that questions ask
//!   about, one that is a hard negative sharing the entity (stated in its own training document).
//! - Training items: one statement document per memorised fact (loss on every token), recall
//!   examples — a RAG prompt whose documents state another fact of the person but not the asked
//!   memorised one, answered with both (loss on the answer) — and plain RAG examples of
//!   [`crate::rag_set`] that keep the reading skill.
//! - Cases: a fresh recall question per person. The asked memorised fact is in no document of the
//!   prompt; the other fact is in exactly one. So each answer sentence has one known source.
//!
//! Deterministic in the seed.

use rand::{rngs::StdRng, Rng, SeedableRng};

use tda_context::Document;

use crate::rag::{name, rag_set, template, training_text, Fact};
use crate::words::pick;

/// One training sequence. `answer_at` is the byte offset of the answer in `text` for examples
/// trained on their answer only (`None`: loss on every token).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainItem {
    pub id: String,
    pub text: String,
    #[serde(skip)]
    pub answer_at: Option<usize>,
}

/// One question of the world and where each answer sentence comes from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExplainCase {
    pub question: String,
    pub docs: Vec<Document>,
    pub answer: String,
    pub sentences: Vec<String>,
    /// Per sentence: the fact's object as it appears in the sentence (e.g. "Ashford").
    pub values: Vec<String>,
    /// Per sentence: the 1-based prompt document that states it (context facts), else `None`.
    pub context_gold: Vec<Option<usize>>,
    /// Per sentence: the ids of the training items that state it (memory facts), else empty.
    pub memory_gold: Vec<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct ExplainWorld {
    pub train: Vec<TrainItem>,
    pub cases: Vec<ExplainCase>,
}

struct Person {
    who: String,
    asked: (Fact, &'static str),
    negative: (Fact, &'static str),
}

fn other_kind(rng: &mut StdRng, not: &[Fact]) -> Fact {
    loop {
        let f = Fact::ALL[rng.random_range(0..4)];
        if !not.contains(&f) {
            return f;
        }
    }
}

/// A recall question about `p`: its asked memorised fact (in no document) and a fact of a third
/// kind stated in one of 3–4 documents (the others: the same kind about other people, one of
/// them possibly a tie distractor).
fn recall(rng: &mut StdRng, p: &Person) -> (ExplainCase, String) {
    let (fm, vm) = p.asked;
    let fc = other_kind(rng, &[fm, p.negative.0]);
    let vc = pick(rng, fc.values());
    let mut docs: Vec<(String, bool)> = vec![(format!("{} {}.", p.who, fc.predicate(vc)), true)];
    for _ in 0..rng.random_range(2..4) {
        let other = name(rng);
        let w = pick(rng, fc.values());
        docs.push((format!("{other} {}.", fc.predicate(w)), false));
    }
    if rng.random_bool(0.5) {
        docs.push((
            format!("{}, who {}, knows {}.", name(rng), fc.predicate(vc), p.who),
            false,
        ));
    }
    for i in (1..docs.len()).rev() {
        let j = rng.random_range(0..=i);
        docs.swap(i, j);
    }
    let gold = docs.iter().position(|d| d.1).expect("the stating document") + 1;
    let memory_first = rng.random_bool(0.5);
    let (mem_s, ctx_s) = (
        format!("{} {}.", p.who, fm.predicate(vm)),
        format!("{} {}.", p.who, fc.predicate(vc)),
    );
    let (q1, q2) = if memory_first {
        (fm.ask(&p.who), fc.ask(&p.who))
    } else {
        (fc.ask(&p.who), fm.ask(&p.who))
    };
    let q = format!("{q1} and {q2}?");
    let question = q[..1].to_uppercase() + &q[1..];
    let (sentences, values, context_gold) = if memory_first {
        (
            vec![mem_s.clone(), ctx_s],
            vec![vm.to_string(), vc.to_string()],
            vec![None, Some(gold)],
        )
    } else {
        (
            vec![ctx_s, mem_s.clone()],
            vec![vc.to_string(), vm.to_string()],
            vec![Some(gold), None],
        )
    };
    let case = ExplainCase {
        question,
        docs: docs
            .into_iter()
            .enumerate()
            .map(|(i, (t, _))| Document::new(format!("d{}", i + 1), None, t))
            .collect(),
        answer: sentences.join(" "),
        sentences,
        values,
        context_gold,
        memory_gold: Vec::new(),
    };
    (case, mem_s)
}

/// The world: `people` memorised people, `recalls` recall training examples per person,
/// `rag` plain RAG examples, and one test case per person.
pub fn explain_world(people: usize, recalls: usize, rag: usize, seed: u64) -> ExplainWorld {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xE8_91A1);
    let persons: Vec<Person> = (0..people)
        .map(|_| {
            let who = name(&mut rng);
            let fa = Fact::ALL[rng.random_range(0..4)];
            let fb = other_kind(&mut rng, &[fa]);
            Person {
                who,
                asked: (fa, pick(&mut rng, fa.values())),
                negative: (fb, pick(&mut rng, fb.values())),
            }
        })
        .collect();
    let mut train = Vec::new();
    let mut stating: Vec<Vec<String>> = vec![Vec::new(); people];
    for (i, p) in persons.iter().enumerate() {
        train.push(TrainItem {
            id: format!("fact-{i}"),
            text: format!("{} {}.", p.who, p.asked.0.predicate(p.asked.1)),
            answer_at: None,
        });
        stating[i].push(format!("fact-{i}"));
        train.push(TrainItem {
            id: format!("other-fact-{i}"),
            text: format!("{} {}.", p.who, p.negative.0.predicate(p.negative.1)),
            answer_at: None,
        });
    }
    let tpl = template();
    for (i, p) in persons.iter().enumerate() {
        for r in 0..recalls {
            let (case, _) = recall(&mut rng, p);
            let (prompt, _) =
                tda_context::prompt::render_prompt(&tpl, &case.question, &case.docs, None)
                    .expect("the planted template renders");
            let at = prompt.len() + tpl.answer_separator.len();
            let id = format!("recall-{i}-{r}");
            stating[i].push(id.clone());
            train.push(TrainItem {
                id,
                text: format!("{prompt}{}{}", tpl.answer_separator, case.answer),
                answer_at: Some(at),
            });
        }
    }
    for (k, ex) in rag_set(rag, seed ^ 0x5EED).iter().enumerate() {
        let text = training_text(ex);
        let at = text.len() - ex.answer.len();
        train.push(TrainItem {
            id: format!("rag-{k}"),
            text,
            answer_at: Some(at),
        });
    }
    // Interleave deterministically so every batch mixes the kinds.
    for i in (1..train.len()).rev() {
        let j = rng.random_range(0..=i);
        train.swap(i, j);
    }
    let cases = persons
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (mut case, mem_s) = recall(&mut rng, p);
            case.memory_gold = case
                .sentences
                .iter()
                .map(|s| {
                    if *s == mem_s {
                        stating[i].clone()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            case
        })
        .collect();
    ExplainWorld { train, cases }
}

/// The world `tests/fixtures/explain` is trained on (`examples/train_explain.rs`).
pub fn fixture_world() -> ExplainWorld {
    explain_world(24, 20, 1500, 1)
}

/// One answer token as `tda explain` routed it (for [`score_routes`]): bytes in the answer, the
/// route (`context`, `memory`, …), its best prompt document (1-based) and, for memory tokens, the
/// ids of its span's training documents, best first.
#[derive(Clone, Debug, Default)]
pub struct RoutedToken {
    pub start: usize,
    pub end: usize,
    pub route: String,
    pub doc: Option<usize>,
    pub training: Vec<String>,
}

/// Routing quality over facts: a fact's route is the route of the first answer token of its
/// value (the object, e.g. "Ashford"). Context facts should be routed `context` and cited to
/// their document; memory facts `memory`, with a stating training document high in the span's
/// ranking (reciprocal rank, 0 when none is listed).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RouteScore {
    pub context_facts: usize,
    pub memory_facts: usize,
    /// Facts routed `context` / `memory` (of either kind).
    pub routed_context: usize,
    pub routed_memory: usize,
    pub context_right: usize,
    pub memory_right: usize,
    /// Context facts routed `context` whose best document is the stating one.
    pub cited_right: usize,
    /// Σ reciprocal rank over memory facts routed `memory`.
    pub rr_sum: f64,
}

impl RouteScore {
    pub fn add(&mut self, o: &RouteScore) {
        self.context_facts += o.context_facts;
        self.memory_facts += o.memory_facts;
        self.routed_context += o.routed_context;
        self.routed_memory += o.routed_memory;
        self.context_right += o.context_right;
        self.memory_right += o.memory_right;
        self.cited_right += o.cited_right;
        self.rr_sum += o.rr_sum;
    }
    fn ratio(a: usize, b: usize) -> f64 {
        if b == 0 {
            0.0
        } else {
            a as f64 / b as f64
        }
    }
    pub fn context_precision(&self) -> f64 {
        Self::ratio(self.context_right, self.routed_context)
    }
    pub fn context_recall(&self) -> f64 {
        Self::ratio(self.context_right, self.context_facts)
    }
    pub fn memory_precision(&self) -> f64 {
        Self::ratio(self.memory_right, self.routed_memory)
    }
    pub fn memory_recall(&self) -> f64 {
        Self::ratio(self.memory_right, self.memory_facts)
    }
    /// Of the context facts, the share routed `context` AND cited to the right document.
    pub fn citation_accuracy(&self) -> f64 {
        Self::ratio(self.cited_right, self.context_facts)
    }
    /// MRR of the stating training documents over all memory facts (0 for those not routed memory).
    pub fn mrr(&self) -> f64 {
        if self.memory_facts == 0 {
            0.0
        } else {
            self.rr_sum / self.memory_facts as f64
        }
    }
}

/// Scores the routing of `case`'s reference answer (teacher-forced, so `answer == case.answer`).
pub fn score_routes(case: &ExplainCase, tokens: &[RoutedToken]) -> RouteScore {
    let mut s = RouteScore::default();
    let mut at = 0;
    for (k, sentence) in case.sentences.iter().enumerate() {
        let start = case.answer[at..]
            .find(sentence.as_str())
            .map_or(at, |i| at + i);
        at = start + sentence.len();
        let v = start + sentence.rfind(case.values[k].as_str()).unwrap_or(0);
        let Some(tok) = tokens
            .iter()
            .find(|t| t.end > v && t.start < v + case.values[k].len())
        else {
            continue;
        };
        let is_context = case.context_gold[k].is_some();
        if is_context {
            s.context_facts += 1;
        } else {
            s.memory_facts += 1;
        }
        match tok.route.as_str() {
            "context" => {
                s.routed_context += 1;
                if is_context {
                    s.context_right += 1;
                    if tok.doc == case.context_gold[k] {
                        s.cited_right += 1;
                    }
                }
            }
            "memory" => {
                s.routed_memory += 1;
                if !is_context {
                    s.memory_right += 1;
                    if let Some(r) = tok
                        .training
                        .iter()
                        .position(|id| case.memory_gold[k].contains(id))
                    {
                        s.rr_sum += 1.0 / (r + 1) as f64;
                    }
                }
            }
            _ => {}
        }
    }
    s
}

impl ExplainWorld {
    /// The training items as a jsonl corpus (`{"id", "text"}` per line), written atomically.
    pub fn write_corpus(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut s = String::new();
        for t in &self.train {
            s.push_str(&serde_json::json!({"id": t.id, "text": t.text}).to_string());
            s.push('\n');
        }
        tda_io::write_file(path, s.as_bytes())
    }
}

impl TrainItem {
    /// As it was trained: `(prompt, completion)` with the loss on the completion only — the whole
    /// text as the completion of an empty prompt for a statement document, else split where the
    /// answer starts (the whitespace before it goes with the answer, as the tokenizer sees it).
    pub fn as_pair(&self) -> (&str, &str) {
        match self.answer_at {
            None => ("", &self.text),
            Some(at) => {
                let prompt = self.text[..at].trim_end();
                (prompt, &self.text[prompt.len()..])
            }
        }
    }
}

impl ExplainWorld {
    /// The training items as prompt/completion pairs (`{"id", "prompt", "completion"}` per line,
    /// see [`TrainItem::as_pair`]), written atomically: `tda trace --completion-only` scores them
    /// with the loss the model was trained with.
    pub fn write_pairs(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut s = String::new();
        for t in &self.train {
            let (prompt, completion) = t.as_pair();
            s.push_str(
                &serde_json::json!({"id": t.id, "prompt": prompt, "completion": completion})
                    .to_string(),
            );
            s.push('\n');
        }
        tda_io::write_file(path, s.as_bytes())
    }
}

/// The tokens of a `tda explain` JSON report (`tokens[]` with `start`, `end`, `route`,
/// `documents[0].doc`, `span` into `memory_spans[].training[].doc_id`) as [`RoutedToken`]s.
pub fn routed_tokens(report: &serde_json::Value) -> Vec<RoutedToken> {
    let spans = report["memory_spans"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    report["tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| RoutedToken {
            start: t["start"].as_u64().unwrap_or(0) as usize,
            end: t["end"].as_u64().unwrap_or(0) as usize,
            route: t["route"].as_str().unwrap_or("").to_string(),
            doc: t["documents"][0]["doc"].as_u64().map(|d| d as usize),
            training: t["span"]
                .as_u64()
                .and_then(|s| spans.get(s as usize))
                .and_then(|s| s["training"].as_array())
                .map(|ds| {
                    ds.iter()
                        .filter_map(|d| d["doc_id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}
