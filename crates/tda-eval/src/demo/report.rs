//! The demo's one self-contained HTML page (inline CSS, no script): the world and the model, each
//! traced generation with its top training documents (tokens coloured by influence, red raises
//! and blue lowers the generation, as in Grosse et al. 2023's figures), their BM25 ranks beside
//! the influence ranks, per-layer bars, and the citation view of a RAG answer.

use std::fmt::Write as _;

use tda_context::report::escape;

use super::{CitationView, Demo, Role, Traced};

/// Solid bar colours (the screenshot test looks for them).
pub const RAISE: (u8, u8, u8) = (214, 39, 40);
pub const LOWER: (u8, u8, u8) = (31, 119, 180);

const CSS: &str = "
.demo-sum{background:#f6f6f6;padding:.6em .9em;border-radius:6px}
.demo-nav a{margin-right:1.2em}
.gen{font-size:1.15em;padding:.5em .9em;border:1px solid #ddd;border-radius:6px;margin:.6em 0}
.gen .out{font-weight:600;padding:0 .2em;border-radius:3px}
.gen .ok{background:#c9efcf}.gen .bad{background:#f8d0d0}
table.docs td{vertical-align:top;text-align:left}
table.docs td.n{text-align:right;white-space:nowrap}
.infl{font-family:ui-monospace,monospace;font-size:.92em;white-space:pre-wrap}
.infl span{border-radius:2px}
.role{font-size:.75em;border-radius:3px;padding:0 .4em;margin-right:.4em;color:#fff;white-space:nowrap}
.r-states{background:#2a7}.r-person-and-object{background:#8e44ad}.r-same-person{background:#777}
.r-same-object{background:#d68910}.r-other{background:#aaa}.r-gen{background:#c0392b}
table.layers td{text-align:left;border:none;padding:1px 6px}
.lbar{display:inline-block;height:.85em;vertical-align:middle}
";

fn rgb((r, g, b): (u8, u8, u8)) -> String {
    format!("rgb({r},{g},{b})")
}

/// The background of a token with influence `s` (`max` = the largest |s| shown).
fn token_bg(s: f64, max: f64) -> String {
    let a = if max > 0.0 {
        (s.abs() / max).min(1.0)
    } else {
        0.0
    };
    let (r, g, b) = if s >= 0.0 { RAISE } else { LOWER };
    format!("rgba({r},{g},{b},{:.3})", 0.85 * a)
}

fn role_class(r: Role) -> &'static str {
    match r {
        Role::States => "r-states",
        Role::PersonAndObject => "r-person-and-object",
        Role::SamePerson => "r-same-person",
        Role::SameObject => "r-same-object",
        Role::Other => "r-other",
    }
}

/// The page.
pub fn to_html(d: &Demo) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tda demo</title><style>{}{CSS}</style></head><body><h1>tda demo — which training documents made the model say this?</h1>",
        tda_context::report::CSS
    );
    summary(&mut h, d);
    h.push_str("<p class=\"demo-nav\">");
    for (i, t) in d.traced.iter().enumerate() {
        let _ = write!(
            h,
            "<a href=\"#gen-{i}\">{} generation</a>",
            if t.correct { "factual" } else { "wrong" }
        );
    }
    if d.citation.is_some() {
        h.push_str("<a href=\"#cite\">citations of a RAG answer</a>");
    }
    h.push_str("</p>");
    for (i, t) in d.traced.iter().enumerate() {
        traced(&mut h, i, t);
    }
    if let Some(c) = &d.citation {
        citation(&mut h, c);
    }
    let t = &d.timings;
    let _ = write!(
        h,
        "<p class=\"meta\">This run: generations {:.1} s · factors {:.1} s ({}) · trace {:.1} s · BM25 {:.2} s · citation {:.1} s · {:.1} s in all after the model.</p></body></html>",
        t.generate_s,
        t.fit_s,
        if d.factors_cached { "cached" } else { "fitted now" },
        t.trace_s,
        t.bm25_s,
        t.cite_s,
        t.total_s
    );
    h
}

fn summary(h: &mut String, d: &Demo) {
    let m = &d.model;
    let trained = match (m.trained_now, m.loss) {
        (true, Some([a, b])) => format!("trained now in {:.0} s (loss {a:.2} → {b:.2})", m.train_s),
        (true, None) => format!("trained now in {:.0} s", m.train_s),
        _ => "cached from an earlier run".into(),
    };
    let a = &d.accuracy;
    let _ = write!(
        h,
        "<div class=\"demo-sum\"><b>World.</b> {} invented people, one planted fact each (birthplace, job or pet) stated by 1–3 documents in different templates, with hard negatives that share the person or the object but not the fact: {} training documents (seed {}).<br><b>Model.</b> {} ({} parameters, {} steps), {}; greedy completions right for {}/{} prompts in a stating document's template and {}/{} paraphrased prompts.<br><b>Influence.</b> EK-FAC over {} linear layers, every document scored (no prefilter at this size); BM25 ranks from the tantivy index of the same corpus.</div>",
        d.world.people,
        d.world.documents,
        d.world.seed,
        escape(&m.recipe),
        m.parameters,
        m.steps,
        trained,
        a.same_template[0],
        a.same_template[1],
        a.paraphrase[0],
        a.paraphrase[1],
        d.factor_layers
    );
}

fn traced(h: &mut String, i: usize, t: &Traced) {
    let _ = write!(
        h,
        "<h2 id=\"gen-{i}\">{}. A {} generation</h2><p class=\"meta\">Chosen as {}.</p><div class=\"gen\">{} <span class=\"out {}\">{}</span></div><p>{} · log p(traced completion | prompt) = {:.3}{}</p>",
        i + 1,
        if t.correct { "factual" } else { "wrong" },
        escape(&t.why),
        escape(&t.prompt),
        if t.correct { "ok" } else { "bad" },
        if t.generated.trim().is_empty() {
            format!("(nothing; traced: {})", escape(&t.measured))
        } else {
            escape(&t.generated)
        },
        if t.correct {
            "right: the planted fact".to_string()
        } else {
            format!("wrong: the planted fact is <b>{}</b>", escape(t.truth.trim()))
        },
        t.logprob,
        match t.kind {
            crate::facts::QueryKind::Paraphrase => " · the prompt's template is in no stating document",
            crate::facts::QueryKind::SameTemplate => " · a stating document uses the prompt's template",
        }
    );
    h.push_str(
        "<p>Documents that state the fact — influence rank / BM25 rank (of the whole corpus): ",
    );
    for (k, s) in t.stating.iter().enumerate() {
        let _ = write!(
            h,
            "{}<b>{}</b>: {} / {}",
            if k > 0 { "; " } else { "" },
            escape(&s.doc_id),
            s.influence_rank,
            s.bm25_rank
        );
    }
    h.push_str("</p>");
    let max = t
        .top
        .iter()
        .flat_map(|d| d.tokens.iter().map(|x| x.score.abs()))
        .fold(0.0f64, f64::max);
    h.push_str("<table class=\"docs\"><tr><th>influence rank</th><th>BM25 rank</th><th>score</th><th class=\"l\">training document — each token coloured by the influence of predicting it (red raises the generation, blue lowers it; hover for the value)</th></tr>");
    for d in &t.top {
        let _ = write!(
            h,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:+.3e}</td><td><span class=\"role {}\">{}</span>{}<span class=\"meta\">{}</span><div class=\"infl\">{}",
            d.influence_rank,
            d.bm25_rank,
            d.score,
            role_class(d.role),
            d.role.label(),
            if d.names_generated {
                "<span class=\"role r-gen\">names the generated object</span>"
            } else {
                ""
            },
            escape(&d.doc_id),
            escape(&d.lead)
        );
        for x in &d.tokens {
            let _ = write!(
                h,
                "<span style=\"background:{}\" title=\"{:+.3e}\">{}</span>",
                token_bg(x.score, max),
                x.score,
                escape(&x.token)
            );
        }
        h.push_str("</div></td></tr>");
    }
    h.push_str("</table>");
    layers(h, t);
}

fn layers(h: &mut String, t: &Traced) {
    if t.layers.is_empty() {
        return;
    }
    let max = t
        .layers
        .iter()
        .map(|l| l.score.abs())
        .fold(0.0f64, f64::max);
    let _ = write!(
        h,
        "<h3>Layers</h3><p class=\"meta\">The influence of the top {} documents, summed per tracked layer (red raises, blue lowers).</p><table class=\"layers\">",
        t.top.len()
    );
    for l in &t.layers {
        let w = if max > 0.0 {
            300.0 * l.score.abs() / max
        } else {
            0.0
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td><span class=\"lbar\" style=\"width:{w:.0}px;background:{}\"></span></td><td>{:+.3e}</td></tr>",
            escape(&l.layer),
            rgb(if l.score >= 0.0 { RAISE } else { LOWER }),
            l.score
        );
    }
    h.push_str("</table>");
}

fn citation(h: &mut String, c: &CitationView) {
    let a = &c.attribution;
    let _ = write!(
        h,
        "<h2 id=\"cite\">{}. Which retrieved document supports each sentence?</h2><p class=\"meta\">A separate reader model (the embedded RAG fixture, weak: it answers {}/{} held-out questions exactly) answers from retrieved documents; shown: {}. Citations by {} ({} forward passes).</p>",
        3,
        c.exact,
        c.tried,
        escape(&c.why),
        escape(a.settings.method.name()),
        a.passes.forwards
    );
    h.push_str("<table><tr><th class=\"l\">answer sentence</th><th>tda cites</th><th>states it</th><th>word overlap cites</th></tr>");
    for (k, s) in a.sentences.iter().enumerate() {
        let list = |v: &[usize]| v.iter().map(|i| format!("[{i}]")).collect::<String>();
        let gold = match c.gold.get(k) {
            Some(g) if c.correct => format!(
                "[{g}]{}",
                if c.ties.get(k) == Some(&true) {
                    " (a tie distractor is present)"
                } else {
                    ""
                }
            ),
            _ => "—".into(),
        };
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.text),
            list(&s.citations),
            gold,
            list(c.lexical.get(k).map_or(&[][..], |v| v.as_slice()))
        );
    }
    h.push_str("</table>");
    h.push_str(&a.html_sections());
}
