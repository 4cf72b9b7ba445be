//! The attribution report: JSON (serde) and a self-contained HTML page, written atomically.

use std::fmt::Write as _;

use crate::ablation::Method;
use crate::cci::{Gradient, Passes};
use crate::cite::CciFilter;
use crate::cti::Threshold;

/// One answer token. `text` is the token decoded alone (with its leading space, if any);
/// `start..end` are byte offsets in [`Attribution::answer`] (whitespace may be trimmed).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenReport {
    pub index: usize,
    pub id: u32,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub sentence: Option<usize>,
    /// CTI score: KL(P_noctx ‖ P_ctx) at this token.
    pub cti: f32,
    /// Chosen for CCI (above the threshold, or the sentence fallback).
    pub selected: bool,
    pub fallback: bool,
    pub contrast_id: u32,
    pub contrast: String,
    pub logprob_ctx: f32,
    pub logprob_noctx: f32,
    /// MIRAGE's contrastive target value f_t.
    pub target: f32,
    /// Per document (in input order) the filtered gradient mass; only for selected tokens.
    pub doc_scores: Option<Vec<f32>>,
    /// Per document the unfiltered gradient mass over its tokens.
    pub doc_scores_unfiltered: Option<Vec<f32>>,
    /// 1-based index of the document with the largest filtered score.
    pub top_doc: Option<usize>,
}

/// One answer sentence and its citations (1-based document indices, best first).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SentenceReport {
    pub index: usize,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub tokens: Vec<usize>,
    pub citations: Vec<usize>,
    pub doc_scores: Vec<f32>,
}

/// An attributed span of a document's text (byte offsets in `text`), summed over all selected tokens.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DocHighlight {
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DocReport {
    /// 1-based, as in the prompt's `Document [i]`.
    pub index: usize,
    pub id: String,
    pub title: Option<String>,
    pub text: String,
    pub cited: bool,
    pub highlights: Vec<DocHighlight>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    pub kl_direction: String,
    pub threshold: Threshold,
    /// The CTI threshold in nats that was applied to this answer.
    pub threshold_value: f32,
    pub filter: CciFilter,
    pub method: Method,
    /// MIRAGE's reduction of the embedding gradient.
    pub gradient: Gradient,
    pub contrast: String,
    pub count_titles: bool,
    pub max_citations: usize,
    pub min_share: f32,
    pub sentence_fallback: bool,
    pub chat_template: bool,
    pub batch_rows: usize,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Timings {
    /// Prompt building and generation (0-ish for a given answer).
    pub generate_s: f64,
    pub cti_s: f64,
    pub cci_s: f64,
    pub total_s: f64,
}

/// Everything `tda cite` reports for one answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attribution {
    pub question: String,
    pub answer: String,
    /// The answer with ` [i][j]` after each sentence.
    pub answer_with_citations: String,
    pub generated: bool,
    pub prompt_tokens: usize,
    pub contextless_prompt_tokens: usize,
    pub documents: Vec<DocReport>,
    pub sentences: Vec<SentenceReport>,
    pub tokens: Vec<TokenReport>,
    pub settings: Settings,
    pub passes: Passes,
    pub timings: Timings,
}

/// `answer` with ` [i][j]` inserted at the end of each sentence that has citations.
pub fn with_citations(answer: &str, sentences: &[SentenceReport]) -> String {
    let mut out = String::with_capacity(answer.len() + 8 * sentences.len());
    let mut at = 0;
    for s in sentences {
        out.push_str(&answer[at..s.end]);
        at = s.end;
        if !s.citations.is_empty() {
            out.push(' ');
            for c in &s.citations {
                let _ = write!(out, "[{c}]");
            }
        }
    }
    out.push_str(&answer[at..]);
    out
}

/// Colours of documents 1, 2, … (cycled).
const PALETTE: &[(u8, u8, u8)] = &[
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
];

fn colour(doc: usize, alpha: f32) -> String {
    let (r, g, b) = PALETTE[(doc.max(1) - 1) % PALETTE.len()];
    format!("rgba({r},{g},{b},{:.3})", alpha.clamp(0.0, 1.0))
}

/// HTML-escapes text (also for attribute values).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// The page style of [`Attribution::to_html`] (also for pages that embed [`Attribution::html_sections`]).
pub const CSS: &str = r#"
body{font:15px/1.55 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.q{background:#f6f6f6;padding:.6em .9em;border-radius:6px}
.answer{font-size:1.1em;line-height:2;padding:.6em .9em;border:1px solid #ddd;border-radius:6px}
.tok{border-radius:3px;padding:1px 0;white-space:pre-wrap}
.tok.sel{outline:1px solid rgba(0,0,0,.35)}
.cite{font-size:.75em;vertical-align:super;font-weight:600;text-decoration:none;margin-left:1px;padding:0 2px;border-radius:3px;color:#fff}
.legend span{display:inline-block;margin-right:1em}
.sw{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:middle;margin-right:.3em}
.doc{border-left:5px solid #ccc;padding:.4em .8em;margin:.8em 0;background:#fcfcfc}
.doc h3{font-size:.95em;margin:.1em 0 .4em}
.doc .body{white-space:pre-wrap}
.badge{font-size:.75em;background:#2a7;color:#fff;border-radius:3px;padding:0 .4em;margin-left:.5em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td.l,th.l{text-align:left}
.meta{color:#666;font-size:.85em}
"#;

impl Attribution {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// A self-contained HTML page (inline CSS, no scripts): the answer with inline citations and
    /// every selected token coloured by its top document, the sentence × document scores, and the
    /// documents with their attributed spans highlighted.
    pub fn to_html(&self) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tda cite</title><style>{CSS}</style></head><body><h1>Context attribution</h1>{}</body></html>",
            self.html_sections()
        )
    }

    /// The body of [`Self::to_html`] without the page around it (styled by [`CSS`]): the
    /// question, the answer with its citations, the sentence × document scores, the documents.
    pub fn html_sections(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<div class=\"q\"><b>Question.</b> {}</div>",
            escape(&self.question)
        );
        // Legend.
        h.push_str("<p class=\"legend\">");
        for d in &self.documents {
            let _ = write!(
                h,
                "<span><i class=\"sw\" style=\"background:{}\"></i>[{}] {}</span>",
                colour(d.index, 0.9),
                d.index,
                escape(d.title.as_deref().unwrap_or(&d.id))
            );
        }
        h.push_str("</p>");
        // Answer.
        let max_tok = self
            .tokens
            .iter()
            .filter_map(|t| Some(t.doc_scores.as_ref()?[t.top_doc? - 1]))
            .fold(0.0f32, f32::max);
        h.push_str("<h2>Answer</h2><div class=\"answer\">");
        let mut at = 0;
        let mut next_sentence = 0;
        let close_sentences = |h: &mut String, upto: usize, next: &mut usize| {
            while *next < self.sentences.len() && self.sentences[*next].end <= upto {
                for c in &self.sentences[*next].citations {
                    let _ = write!(
                        h,
                        "<a class=\"cite\" href=\"#doc-{c}\" style=\"background:{}\">[{c}]</a>",
                        colour(*c, 0.95)
                    );
                }
                *next += 1;
            }
        };
        for t in &self.tokens {
            if t.start < at {
                continue;
            }
            close_sentences(&mut h, t.start, &mut next_sentence);
            h.push_str(&escape(&self.answer[at..t.start]));
            let mut tip = format!(
                "token {:?} · CTI {:.3} nats · log p ctx {:.2} / no ctx {:.2} · contrast {:?}",
                t.text, t.cti, t.logprob_ctx, t.logprob_noctx, t.contrast
            );
            let mut style = String::new();
            if let (Some(ds), Some(top)) = (&t.doc_scores, t.top_doc) {
                let a = if max_tok > 0.0 {
                    ds[top - 1] / max_tok
                } else {
                    0.0
                };
                style = format!(" style=\"background:{}\"", colour(top, 0.15 + 0.6 * a));
                tip.push_str(" · docs: ");
                for (i, s) in ds.iter().enumerate() {
                    let _ = write!(tip, "[{}] {:.3e} ", i + 1, s);
                }
            }
            let _ = write!(
                h,
                "<span class=\"tok{}\" title=\"{}\"{}>{}</span>",
                if t.selected { " sel" } else { "" },
                escape(&tip),
                style,
                escape(&self.answer[t.start..t.end])
            );
            at = t.end;
        }
        close_sentences(&mut h, self.answer.len(), &mut next_sentence);
        h.push_str(&escape(&self.answer[at.min(self.answer.len())..]));
        h.push_str("</div><p class=\"meta\">Outlined tokens are context-sensitive (CTI); their colour is the document their gradient points to most (darker = more). Hover a token for its scores.</p>");
        // Sentence × document table.
        h.push_str("<h2>Sentences</h2><table><tr><th class=\"l\">sentence</th><th>cites</th>");
        for d in &self.documents {
            let _ = write!(h, "<th>[{}]</th>", d.index);
        }
        h.push_str("</tr>");
        for s in &self.sentences {
            let cites: String = s.citations.iter().map(|c| format!("[{c}]")).collect();
            let _ = write!(
                h,
                "<tr><td class=\"l\">{}</td><td>{}</td>",
                escape(&s.text),
                cites
            );
            for v in &s.doc_scores {
                let _ = write!(h, "<td>{v:.3e}</td>");
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
        // Documents.
        h.push_str("<h2>Documents</h2>");
        let max_hl = self
            .documents
            .iter()
            .flat_map(|d| d.highlights.iter().map(|x| x.score))
            .fold(0.0f32, f32::max);
        for d in &self.documents {
            let _ = write!(
                h,
                "<div class=\"doc\" id=\"doc-{}\" style=\"border-color:{}\"><h3>[{}] {}{}</h3><div class=\"body\">",
                d.index,
                colour(d.index, 0.9),
                d.index,
                escape(d.title.as_deref().unwrap_or(&d.id)),
                if d.cited { "<span class=\"badge\">cited</span>" } else { "" }
            );
            let mut hl = d.highlights.clone();
            hl.sort_by_key(|x| x.start);
            let mut at = 0;
            for x in &hl {
                if x.start < at || x.end > d.text.len() {
                    continue;
                }
                h.push_str(&escape(&d.text[at..x.start]));
                let a = if max_hl > 0.0 { x.score / max_hl } else { 0.0 };
                let _ = write!(
                    h,
                    "<mark style=\"background:{}\" title=\"{:.3e}\">{}</mark>",
                    colour(d.index, 0.15 + 0.7 * a),
                    x.score,
                    escape(&d.text[x.start..x.end])
                );
                at = x.end;
            }
            h.push_str(&escape(&d.text[at..]));
            h.push_str("</div></div>");
        }
        let p = &self.passes;
        let _ = write!(
            h,
            "<p class=\"meta\">method {} · {} · threshold {:.3} nats · {} forward passes + {} backward batches ({} gradient rows){} · {:.2} s</p>",
            self.settings.method.name(),
            escape(&self.settings.kl_direction),
            self.settings.threshold_value,
            p.forwards,
            p.backwards,
            p.gradient_rows,
            if p.generated_tokens > 0 { format!(" · {} generated tokens", p.generated_tokens) } else { String::new() },
            self.timings.total_s
        );
        h
    }
}
