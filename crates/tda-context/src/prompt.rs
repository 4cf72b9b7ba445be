//! Prompts with byte-offset bookkeeping: the documents are rendered into a template, the whole
//! prompt is tokenized ONCE, and every prompt token is assigned to the part of the prompt its
//! offsets fall in (template, a document header, a title, a document body). Pieces are never
//! re-tokenized, so the mapping is exact whatever the tokenizer does with newlines, unicode or
//! merges across piece boundaries.

use std::ops::Range;
use std::path::Path;

use tda_model::ModelConfig;
use tokenizers::Tokenizer;

use crate::docs::Document;
use crate::error::{ContextError, Result};

/// MIRAGE's ELI5 instruction (LLaMA-2 setup) without the self-citation part.
pub const DEFAULT_INSTRUCTION: &str = "Instruction: Write an accurate, engaging, and concise answer for the given question using only the provided search results (some of which might be irrelevant). Use an unbiased and journalistic tone.";

/// How a prompt is written. Placeholders: `{instruction}`, `{question}`, `{context}` in
/// `prompt`; `{i}` (1-based), `{id}`, `{title}`, `{text}` in `doc`/`doc_untitled`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PromptTemplate {
    pub instruction: String,
    /// The whole prompt. MIRAGE (LLaMA-2): `{instruction}\n\nQuestion: {question}\n\n{context}\nAnswer:`.
    pub prompt: String,
    /// One document; MIRAGE: `Document [{i}](Title: {title}): {text}\n` (each ends with a newline).
    pub doc: String,
    /// A document without a title.
    pub doc_untitled: String,
    /// Put before a given answer when it is teacher-forced after the prompt (MIRAGE: `" "`).
    pub answer_separator: String,
    /// The user message when the model's chat template is used (no trailing `Answer:`).
    pub chat_user: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self {
            instruction: DEFAULT_INSTRUCTION.into(),
            prompt: "{instruction}\n\nQuestion: {question}\n\n{context}\nAnswer:".into(),
            doc: "Document [{i}](Title: {title}): {text}\n".into(),
            doc_untitled: "Document [{i}]: {text}\n".into(),
            answer_separator: " ".into(),
            chat_user: "{instruction}\n\nQuestion: {question}\n\n{context}".into(),
        }
    }
}

/// Byte ranges of one rendered document inside the prompt text.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DocSpan {
    /// The whole rendered document (header, title, text, trailing template text).
    pub all: Range<usize>,
    pub title: Option<Range<usize>>,
    pub body: Range<usize>,
}

/// What a prompt token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Part {
    /// Instruction, question, separators, special tokens.
    Template,
    /// Template text of document `i` (0-based): `Document [i](Title: `, `): `, the newline.
    Header(usize),
    Title(usize),
    Body(usize),
}

impl Part {
    /// The document this token counts for: bodies always, titles when `titles` is set.
    pub fn doc(self, titles: bool) -> Option<usize> {
        match self {
            Part::Body(i) => Some(i),
            Part::Title(i) if titles => Some(i),
            _ => None,
        }
    }
}

/// A rendered, tokenized prompt. Invariant: `ids.len() == offsets.len() == parts.len()`.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub text: String,
    pub docs: Vec<DocSpan>,
    pub ids: Vec<u32>,
    /// Byte range of each token in `text` (`(0, 0)` for added special tokens).
    pub offsets: Vec<(usize, usize)>,
    pub parts: Vec<Part>,
}

/// An HF chat template (`chat_template` of `tokenizer_config.json`), rendered with minijinja.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn special_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    /// The chat template of a model folder, if its `tokenizer_config.json` has one (a string, or
    /// the list form, where the entry named `default` is taken).
    pub fn from_folder(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ContextError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ContextError::invalid(&path, format!("not valid JSON: {e}")))?;
        let source = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|e| e.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    ContextError::invalid(&path, "chat_template list has no template")
                })?,
            _ => return Ok(None),
        };
        // Compile once here, so that a broken template is an error naming this file.
        minijinja::Environment::new()
            .template_from_str(&source)
            .map_err(|e| ContextError::invalid(&path, format!("chat_template: {e}")))?;
        Ok(Some(Self {
            source,
            bos_token: special_token(v.get("bos_token")),
            eos_token: special_token(v.get("eos_token")),
        }))
    }

    /// Renders one user turn followed by the generation prompt.
    pub fn render_user(&self, content: &str) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_filter("format", bounded_format);
        env.add_filter("indent", bounded_indent);
        env.add_template("chat", &self.source)
            .map_err(|e| ContextError::Template(e.to_string()))?;
        let ctx = serde_json::json!({
            "messages": [{"role": "user", "content": content}],
            "add_generation_prompt": true,
            "bos_token": self.bos_token.clone().unwrap_or_default(),
            "eos_token": self.eos_token.clone().unwrap_or_default(),
        });
        env.set_fuel(Some(CHAT_FUEL));
        let mut out = CappedOutput::default();
        let rendered = env
            .get_template("chat")
            .and_then(|t| t.render_captured_to(ctx, &mut out).map(drop));
        match rendered {
            Ok(()) => Ok(String::from_utf8_lossy(&out.bytes).into_owned()),
            Err(_) if out.over => Err(ContextError::Template(format!(
                "the chat template writes more than {} MiB",
                CHAT_MAX_OUTPUT >> 20
            ))),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                Err(ContextError::Template(format!(
                    "the chat template runs more than {CHAT_FUEL} instructions (a loop that does not end?)"
                )))
            }
            Err(e) => Err(ContextError::Template(e.to_string())),
        }
    }
}

/// Most minijinja instructions one chat-template render may run (a real template runs a few
/// thousand): a template that loops for ever is an error, not a hang.
const CHAT_FUEL: u64 = 10_000_000;
/// Most bytes one chat-template render may write.
const CHAT_MAX_OUTPUT: usize = 16 << 20;

/// Widest field a chat template's `format` or `indent` may ask for: minijinja allocates the
/// width up front, so `'%1000000000s'|format(x)` would take gigabytes before any output cap.
const CHAT_MAX_WIDTH: usize = 1 << 16;

fn too_wide(n: usize) -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("field width {n} is more than {CHAT_MAX_WIDTH}"),
    )
}

/// minijinja's `format` filter, refusing printf widths and precisions over [`CHAT_MAX_WIDTH`].
fn bounded_format(
    state: &minijinja::State,
    spec: &minijinja::Value,
    args: minijinja::value::Rest<minijinja::Value>,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let text = spec.as_str().unwrap_or("");
    for conversion in text.split('%').skip(1) {
        // The flags, width and precision of one conversion: digits after optional `-+ #0.`.
        let head = conversion
            .split(|c: char| !(c.is_ascii_digit() || "-+ #.".contains(c)))
            .next()
            .unwrap_or("");
        for number in head.split(|c: char| !c.is_ascii_digit()) {
            if number.len() > 6 || number.parse::<usize>().is_ok_and(|n| n > CHAT_MAX_WIDTH) {
                return Err(too_wide(number.parse().unwrap_or(usize::MAX)));
            }
        }
    }
    minijinja::filters::format(state, spec, args)
}

/// minijinja's `indent` filter, refusing widths over [`CHAT_MAX_WIDTH`].
fn bounded_indent(
    value: minijinja::value::StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let w = match width {
        Some(w) => Some(w),
        None => kwargs.peek::<Option<usize>>("width")?,
    };
    if let Some(w) = w.filter(|&w| w > CHAT_MAX_WIDTH) {
        return Err(too_wide(w));
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// The render's output, refused past [`CHAT_MAX_OUTPUT`] bytes.
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + b.len() > CHAT_MAX_OUTPUT {
            self.over = true;
            return Err(std::io::Error::other("chat template output too large"));
        }
        self.bytes.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends `tpl` to `out`, filling `{name}` placeholders with `fill(name)`. Returns the byte range
/// in `out` of every placeholder occurrence by name (placeholders may repeat; all are kept).
fn render_into(
    out: &mut String,
    tpl: &str,
    fill: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Range<usize>)>> {
    let mut spans = Vec::new();
    let mut rest = tpl;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(spans);
        };
        let name = &after[..close];
        match fill(name) {
            Some(value) => {
                let start = out.len();
                out.push_str(&value);
                spans.push((name.to_string(), start..out.len()));
            }
            None => {
                return Err(ContextError::Template(format!(
                    "unknown placeholder {{{name}}} in \"{tpl}\""
                )))
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(spans)
}

/// The documents rendered with `doc`/`doc_untitled`, with their spans relative to the string.
pub fn render_context(tpl: &PromptTemplate, docs: &[Document]) -> Result<(String, Vec<DocSpan>)> {
    let mut out = String::new();
    let mut spans = Vec::with_capacity(docs.len());
    for (k, d) in docs.iter().enumerate() {
        let start = out.len();
        let doc_tpl = if d.title.is_some() {
            &tpl.doc
        } else {
            &tpl.doc_untitled
        };
        let fill = |name: &str| -> Option<String> {
            Some(match name {
                "i" => (k + 1).to_string(),
                "id" => d.id.clone(),
                "title" => d.title.clone().unwrap_or_default(),
                "text" => d.text.clone(),
                _ => return None,
            })
        };
        let placed = render_into(&mut out, doc_tpl, &fill)?;
        let body = placed
            .iter()
            .find(|(n, _)| n == "text")
            .map(|(_, r)| r.clone())
            .ok_or_else(|| {
                ContextError::Template(format!("document template \"{doc_tpl}\" has no {{text}}"))
            })?;
        let title = placed
            .iter()
            .find(|(n, _)| n == "title")
            .map(|(_, r)| r.clone());
        spans.push(DocSpan {
            all: start..out.len(),
            title,
            body,
        });
    }
    Ok((out, spans))
}

/// Renders the prompt (with `docs`, or the contextless one when `docs` is empty) as text plus
/// document spans in that text. With a chat template, the filled `chat_user` message is wrapped
/// by it and the spans are shifted to where the message sits in the rendered chat.
pub fn render_prompt(
    tpl: &PromptTemplate,
    question: &str,
    docs: &[Document],
    chat: Option<&ChatTemplate>,
) -> Result<(String, Vec<DocSpan>)> {
    let (context, mut spans) = render_context(tpl, docs)?;
    let mut text = String::new();
    let fill = |name: &str| -> Option<String> {
        Some(match name {
            "instruction" => tpl.instruction.clone(),
            "question" => question.to_string(),
            "context" => context.clone(),
            _ => return None,
        })
    };
    let outer = if chat.is_some() {
        &tpl.chat_user
    } else {
        &tpl.prompt
    };
    let placed = render_into(&mut text, outer, &fill)?;
    let ctx_at: Vec<usize> = placed
        .iter()
        .filter(|(n, _)| n == "context")
        .map(|(_, r)| r.start)
        .collect();
    if ctx_at.len() != 1 {
        return Err(ContextError::Template(format!(
            "the prompt template must contain {{context}} exactly once: \"{outer}\""
        )));
    }
    let shift = |spans: &mut Vec<DocSpan>, by: usize| {
        for s in spans.iter_mut() {
            s.all = s.all.start + by..s.all.end + by;
            s.body = s.body.start + by..s.body.end + by;
            s.title = s.title.as_ref().map(|t| t.start + by..t.end + by);
        }
    };
    shift(&mut spans, ctx_at[0]);
    if let Some(chat) = chat {
        let rendered = chat.render_user(&text)?;
        let at = rendered.find(&text).ok_or_else(|| {
            ContextError::Template(
                "the chat template changes the user message (it cannot be located in the rendered chat); use the plain prompt template".into(),
            )
        })?;
        shift(&mut spans, at);
        text = rendered;
    }
    Ok((text, spans))
}

/// Tokenizes `text` once and assigns each token to a [`Part`] by its byte offsets: a token that
/// overlaps a document's body is `Body` (also one that straddles the body edge), else one that
/// overlaps its title is `Title`, else one inside the rendered document is `Header`; the rest,
/// and added special tokens (offsets `(0, 0)`), are `Template`. A zero-width token at `s > 0`
/// (whitespace trimmed from its offsets) counts as the byte before `s`. Without a chat template, a BOS (EOS for models
/// without BOS) is put first when the tokenizer does not add it, as `tda_model` scores text.
pub fn tokenize_prompt(
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    text: String,
    docs: Vec<DocSpan>,
    chat: bool,
) -> Result<Prompt> {
    let (ids, offsets) = if chat {
        let enc = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| ContextError::usage(format!("cannot tokenize the prompt: {e}")))?;
        (enc.get_ids().to_vec(), enc.get_offsets().to_vec())
    } else {
        tda_model::infer::encode_for_scoring(tokenizer, config, &text)?
    };
    let overlaps = |(s, e): (usize, usize), r: &Range<usize>| s < e && s < r.end && r.start < e;
    let parts = offsets
        .iter()
        .map(|&(s, e)| {
            // A zero-width token after position 0 is whitespace whose offsets were trimmed
            // (byte-level BPE's lone `Ġ`): it stands for the byte before it.
            let o = if s == e && s > 0 { (s - 1, s) } else { (s, e) };
            for (i, d) in docs.iter().enumerate() {
                if overlaps(o, &d.body) {
                    return Part::Body(i);
                }
                if d.title.as_ref().is_some_and(|t| overlaps(o, t)) {
                    return Part::Title(i);
                }
                if overlaps(o, &d.all) {
                    return Part::Header(i);
                }
            }
            Part::Template
        })
        .collect();
    Ok(Prompt {
        text,
        docs,
        ids,
        offsets,
        parts,
    })
}

/// Both prompts of one question: with the documents and without them (MIRAGE's contextless
/// prompt: the same template with an empty `{context}`).
#[derive(Clone, Debug)]
pub struct PromptPair {
    pub with_docs: Prompt,
    pub without_docs: Prompt,
}

/// Renders and tokenizes the prompt with and without `docs`. Errors on no documents.
pub fn build_prompts(
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    tpl: &PromptTemplate,
    question: &str,
    docs: &[Document],
    chat: Option<&ChatTemplate>,
) -> Result<PromptPair> {
    if docs.is_empty() {
        return Err(ContextError::usage(
            "no documents: context attribution needs at least one document",
        ));
    }
    let (text, spans) = render_prompt(tpl, question, docs, chat)?;
    let with_docs = tokenize_prompt(tokenizer, config, text, spans, chat.is_some())?;
    let (text0, _) = render_prompt(tpl, question, &[], chat)?;
    let without_docs = tokenize_prompt(tokenizer, config, text0, Vec::new(), chat.is_some())?;
    Ok(PromptPair {
        with_docs,
        without_docs,
    })
}
