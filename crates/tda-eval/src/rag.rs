//! A generated RAG set with planted truth, for evaluating citations: every fact of an answer is
//! stated in exactly one document, and distractor documents share its words — other people with
//! the same sentence templates, and "tie" distractors that contain every content word of the
//! answer sentence (the same value and the asked person's name) without stating the fact.
//! A lexical-overlap citer cannot tell a tie distractor from the true document; a model that
//! reads "X was born in C" as a fact about X can. Deterministic in the seed.

use rand::{rngs::StdRng, Rng, SeedableRng};

use tda_context::prompt::render_prompt;
use tda_context::{Document, PromptTemplate};

use crate::words::{pick, CITIES, COLORS, JOBS, PETS};

/// The kinds of facts; each has a question phrase, a statement and a tie-distractor form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fact {
    City,
    Job,
    Pet,
    Color,
}

impl Fact {
    pub(crate) const ALL: [Fact; 4] = [Fact::City, Fact::Job, Fact::Pet, Fact::Color];
    pub(crate) fn values(self) -> &'static [&'static str] {
        match self {
            Fact::City => CITIES,
            Fact::Job => JOBS,
            Fact::Pet => PETS,
            Fact::Color => COLORS,
        }
    }
    pub(crate) fn ask(self, name: &str) -> String {
        match self {
            Fact::City => format!("where was {name} born"),
            Fact::Job => format!("what does {name} work as"),
            Fact::Pet => format!("which pet does {name} have"),
            Fact::Color => format!("which colour does {name} like"),
        }
    }
    /// The predicate after the subject, e.g. "was born in Ashford".
    pub(crate) fn predicate(self, v: &str) -> String {
        match self {
            Fact::City => format!("was born in {v}"),
            Fact::Job => format!("works as a {v}"),
            Fact::Pet => format!("has a {v}"),
            Fact::Color => format!("likes the colour {v}"),
        }
    }
}

fn word(rng: &mut StdRng) -> String {
    crate::words::word(rng, 2)
}

pub(crate) fn name(rng: &mut StdRng) -> String {
    format!("{} {}", word(rng), word(rng))
}

/// One question with documents, the reference answer (one sentence per fact), and per answer
/// sentence the 1-based index of the one document that states it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RagExample {
    pub question: String,
    pub docs: Vec<Document>,
    pub answer: String,
    pub sentences: Vec<String>,
    pub gold: Vec<usize>,
    /// Per answer sentence: a "tie" distractor holds every content word of it (overlap misleads).
    pub ties: Vec<bool>,
}

/// `n` examples: two facts about one person, stated in two documents, plus two or three
/// distractor documents (same templates about other people; with probability ½ per fact a tie
/// distractor "{Other}, who {predicate}, knows {Name}."). Documents are shuffled.
pub fn rag_set(n: usize, seed: u64) -> Vec<RagExample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| one(&mut rng, false)).collect()
}

/// Training examples for a reader that reads, and says "I don't know" by its odds: as
/// [`rag_set`], except that
/// - a tie distractor's value is drawn at random ("{Other}, who likes the colour W, knows
///   {Name}."), so the value of a "who" clause is no evidence about the asked person (in
///   `rag_set` it is always the asked person's, and a reader trained on that may read the answer
///   from the tie);
/// - in [`ABLATED`] of the examples each document is kept with probability ½, as ContextCite's
///   ablations do, and the reference answer is kept: when its document is gone, a value is
///   independent of the prompt, so a reader trained by maximum likelihood gives it its prior
///   (1 / #values), and ablation-based attribution sees the drop it should. `gold` is then 0
///   for a fact whose document was dropped.
///
/// Evaluation sets stay [`rag_set`].
pub fn rag_training_set(n: usize, seed: u64) -> Vec<RagExample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| one(&mut rng, true)).collect()
}

/// The share of [`rag_training_set`]'s examples whose documents are randomly ablated.
pub const ABLATED: f64 = 0.3;

/// A value of `f` other than `v`.
fn other_value(rng: &mut StdRng, f: Fact, v: &str) -> &'static str {
    loop {
        let w = pick(rng, f.values());
        if w != v {
            break w;
        }
    }
}

fn one(rng: &mut StdRng, training: bool) -> RagExample {
    let who = name(rng);
    let f1 = Fact::ALL[rng.random_range(0..4)];
    let f2 = loop {
        let f = Fact::ALL[rng.random_range(0..4)];
        if f != f1 {
            break f;
        }
    };
    let v1 = pick(rng, f1.values());
    let v2 = pick(rng, f2.values());
    // (text, gold for sentence k)
    let mut docs: Vec<(String, Option<usize>)> = vec![
        (format!("{who} {}.", f1.predicate(v1)), Some(0)),
        (format!("{who} {}.", f2.predicate(v2)), Some(1)),
    ];
    let mut ties = Vec::with_capacity(2);
    for (f, v) in [(f1, v1), (f2, v2)] {
        let other = name(rng);
        ties.push(rng.random_bool(0.5));
        if ties[ties.len() - 1] {
            let tv = if training { pick(rng, f.values()) } else { v };
            docs.push((
                format!("{other}, who {}, knows {who}.", f.predicate(tv)),
                None,
            ));
        } else {
            let w = other_value(rng, f, v);
            docs.push((format!("{other} {}.", f.predicate(w)), None));
        }
    }
    if rng.random_bool(0.5) {
        let f = Fact::ALL[rng.random_range(0..4)];
        docs.push((
            format!("{} {}.", name(rng), f.predicate(pick(rng, f.values()))),
            None,
        ));
    }
    if training && rng.random_bool(ABLATED) {
        docs.retain(|_| rng.random_bool(0.5));
    }
    for i in (1..docs.len()).rev() {
        let j = rng.random_range(0..=i);
        docs.swap(i, j);
    }
    let mut gold = vec![0; 2];
    for (i, (_, g)) in docs.iter().enumerate() {
        if let Some(k) = g {
            gold[*k] = i + 1;
        }
    }
    let q = format!("{} and {}?", f1.ask(&who), f2.ask(&who));
    let question = q[..1].to_uppercase() + &q[1..];
    let sentences = vec![
        format!("{who} {}.", f1.predicate(v1)),
        format!("{who} {}.", f2.predicate(v2)),
    ];
    RagExample {
        question,
        docs: docs
            .into_iter()
            .enumerate()
            .map(|(i, (t, _))| Document::new(format!("d{}", i + 1), None, t))
            .collect(),
        answer: sentences.join(" "),
        sentences,
        gold,
        ties,
    }
}

/// The prompt template the planted-truth model is trained with: MIRAGE's form without the
/// instruction (which would only cost context).
pub fn template() -> PromptTemplate {
    PromptTemplate {
        instruction: String::new(),
        prompt: "Question: {question}\n\n{context}\nAnswer:".into(),
        ..PromptTemplate::default()
    }
}

/// Context-attribution options for asking the planted models: the planted template, greedy
/// answers of at most 40 tokens ending at `eos`.
pub fn answer_options(eos: u32) -> tda_context::Options {
    let mut o = tda_context::Options {
        template: template(),
        ..tda_context::Options::default()
    };
    o.generation.max_new_tokens = 40;
    o.generation.stop_token = Some(eos);
    o
}

/// The training text of an example: the prompt, the separator, the answer.
pub fn training_text(ex: &RagExample) -> String {
    let tpl = template();
    let (prompt, _) =
        render_prompt(&tpl, &ex.question, &ex.docs, None).expect("the planted template renders");
    format!("{prompt}{}{}", tpl.answer_separator, ex.answer)
}
