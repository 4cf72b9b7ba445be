//! The explanation of one answer: JSON (serde) and one self-contained HTML page (no script: a
//! click on a token opens its details by CSS `:target`).

use std::fmt::Write as _;

use tda_context::report::escape;
use tda_context::{Attribution, Document};
use tda_trace::{Query, ResultRow};

use crate::layers::LayerShare;
use crate::route::{Route, TokenExplanation};

/// A training document found for a memory span.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainingDoc {
    pub rank: usize,
    pub doc_id: String,
    pub score: f64,
    pub text: String,
}

impl TrainingDoc {
    pub fn from_row(r: &ResultRow) -> Self {
        Self {
            rank: r.rank,
            doc_id: r.doc_id.clone(),
            score: r.score,
            text: r.text.clone(),
        }
    }
}

/// Consecutive memory tokens traced together: the measurement is log p(text | query.prompt).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemorySpan {
    pub index: usize,
    pub tokens: Vec<usize>,
    pub text: String,
    pub query: Query,
    /// The measurement's value (when traced).
    pub value: Option<f32>,
    pub training: Vec<TrainingDoc>,
    pub layers: Vec<LayerShare>,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Timings {
    pub context_s: f64,
    pub memory_s: f64,
    pub layers_s: f64,
    pub total_s: f64,
}

/// Everything `tda explain` reports for one answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    pub question: String,
    pub answer: String,
    pub generated: bool,
    pub documents: Vec<Document>,
    pub tokens: Vec<TokenExplanation>,
    pub memory_spans: Vec<MemorySpan>,
    /// Whether the memory spans were traced into a training corpus.
    pub traced: bool,
    /// The full context attribution (citations per sentence), when the prompt has documents.
    pub context: Option<Attribution>,
    pub memory_min_prob: f32,
    pub timings: Timings,
}

fn route_class(r: Route) -> &'static str {
    match r {
        Route::Context => "ctx",
        Route::Question => "q",
        Route::Memory => "mem",
        Route::Neither => "none",
    }
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.5em}
.answer{font-size:1.25em;line-height:2.2;padding:.6em;border:1px solid #ccc;border-radius:6px}
.answer a{text-decoration:none;color:inherit;padding:2px 1px;border-radius:3px}
.ctx{background:#7fd18b}.mem{background:#f5a25d}.q{background:#9fc5f8}.none{background:#eee}
.legend span{display:inline-block;padding:0 .5em;margin-right:.5em;border-radius:3px}
.detail{display:none;border:1px solid #bbb;border-radius:6px;padding:.5em 1em;margin:.8em 0}
.detail:target{display:block}
.bar{display:inline-block;height:.8em;background:#6a3d9a;vertical-align:middle}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.doc{font-family:ui-monospace,monospace;font-size:.9em}";

impl Explanation {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an explanation serializes")
    }

    /// One self-contained page: the answer with tokens coloured by route, a details box per token
    /// (opened by clicking it), the prompt's documents and the traced spans.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tda explain</title><style>{STYLE}</style></head><body><h1>tda explain</h1><p><b>Prompt:</b> {}</p>",
            escape(&self.question)
        );
        let count = |r: Route| self.tokens.iter().filter(|t| t.route == r).count();
        let _ = write!(
            h,
            "<p class=\"legend\"><span class=\"ctx\">context document ({})</span><span class=\"mem\">training data ({})</span><span class=\"q\">question ({})</span><span class=\"none\">neither ({})</span> — click a token for its documents and layers.</p><div class=\"answer\">",
            count(Route::Context),
            count(Route::Memory),
            count(Route::Question),
            count(Route::Neither)
        );
        for t in &self.tokens {
            let _ = write!(
                h,
                "<a href=\"#tok-{}\" class=\"{}\" title=\"{}\">{}</a>",
                t.index,
                route_class(t.route),
                escape(&format!("{:?}", t.route).to_lowercase()),
                escape(&t.text)
            );
        }
        h.push_str("</div>");
        for t in &self.tokens {
            let _ = write!(
                h,
                "<div class=\"detail\" id=\"tok-{}\"><b>{}</b> — {}; log p = {:.3} with the documents, {:.3} without{}",
                t.index,
                escape(t.text.trim()),
                match t.route {
                    Route::Context => "driven by the prompt's documents",
                    Route::Question => "copied from the question",
                    Route::Memory => "from the model's memory (training data)",
                    Route::Neither => "neither context- nor memory-driven",
                },
                t.logprob,
                t.logprob_without_documents,
                t.cti.map_or(String::new(), |k| format!("; CTI KL {k:.3} nats"))
            );
            if !t.documents.is_empty() {
                h.push_str("<h2>Prompt documents</h2><table>");
                for d in &t.documents {
                    let text = self
                        .documents
                        .get(d.doc - 1)
                        .map_or("", |x| x.text.as_str());
                    let _ = write!(
                        h,
                        "<tr><td>[{}]</td><td>{:.3}</td><td class=\"doc\">{}</td></tr>",
                        d.doc,
                        d.score,
                        escape(text)
                    );
                }
                h.push_str("</table>");
            }
            if let Some(sp) = t.span.and_then(|s| self.memory_spans.get(s)) {
                let _ = write!(
                    h,
                    "<h2>Training documents for “{}”</h2>",
                    escape(sp.text.trim())
                );
                if sp.training.is_empty() {
                    h.push_str("<p>not traced (no factors and corpus given)</p>");
                } else {
                    h.push_str("<table><tr><th>rank</th><th>influence</th><th>document</th></tr>");
                    for d in &sp.training {
                        let _ = write!(
                            h,
                            "<tr><td>{}</td><td>{:+.3e}</td><td class=\"doc\"><b>{}</b> {}</td></tr>",
                            d.rank,
                            d.score,
                            escape(&d.doc_id),
                            escape(&d.text)
                        );
                    }
                    h.push_str("</table>");
                }
            }
            if !t.layers.is_empty() {
                h.push_str("<h2>Layers</h2><table>");
                for l in &t.layers {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td><span class=\"bar\" style=\"width:{:.0}px\"></span> {:.0} %{}</td></tr>",
                        escape(&l.layer),
                        l.share * 200.0,
                        l.share * 100.0,
                        if l.score < 0.0 { " (against)" } else { "" }
                    );
                }
                h.push_str("</table>");
            }
            h.push_str("</div>");
        }
        if !self.documents.is_empty() {
            h.push_str("<h2>Documents in the prompt</h2><table>");
            for (i, d) in self.documents.iter().enumerate() {
                let _ = write!(
                    h,
                    "<tr><td>[{}]</td><td>{}</td><td class=\"doc\">{}</td></tr>",
                    i + 1,
                    escape(&d.id),
                    escape(&d.text)
                );
            }
            h.push_str("</table>");
        }
        let _ = write!(
            h,
            "<p style=\"color:#777\">Routes: context = context-sensitive (KL(P_noctx‖P_ctx) above the CTI threshold) with a document that drives it; question = a word of the question; training data = said without the documents with p ≥ {}; layers: gradient × output of each block's residual writes (context) or the per-layer split of the influence (training data). {:.2} s.</p></body></html>",
            self.memory_min_prob, self.timings.total_s
        );
        h
    }
}
