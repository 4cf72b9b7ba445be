//! Token → document mapping by the byte offsets of ONE tokenization, on tricky inputs:
//! newlines inside documents, titles with brackets, unicode (accents, CJK, emoji), and a chat
//! template that wraps the message in special text.

use std::path::PathBuf;

use tda_context::prompt::{build_prompts, ChatTemplate, Part, Prompt, PromptTemplate};
use tda_context::Document;
use tda_model::device::Cpu;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn tricky_docs() -> Vec<Document> {
    vec![
        Document::new(
            "a",
            Some("Zürich [old]"),
            "Zürich lies on a lake.\nIt has trams.",
        ),
        Document::new(
            "b",
            None,
            "東京 is large 😀; its name means \"eastern capital\".",
        ),
        Document::new(
            "c",
            Some("Document [9]"),
            "Document [1] is not a header here.\n\n",
        ),
    ]
}

/// Checks the mapping against the text itself: every non-whitespace byte of a body is covered
/// by a token mapped to that body, every token mapped to a body overlaps it, and no token of
/// another part covers a body byte.
fn check(p: &Prompt, docs: &[Document]) {
    assert_eq!(p.ids.len(), p.offsets.len());
    assert_eq!(p.ids.len(), p.parts.len());
    for (i, d) in p.docs.iter().enumerate() {
        assert_eq!(
            &p.text[d.body.clone()],
            docs[i].text,
            "body span of doc {i}"
        );
        if let (Some(t), Some(title)) = (&d.title, &docs[i].title) {
            assert_eq!(&p.text[t.clone()], title);
        }
        for b in d.body.clone() {
            let byte = p.text.as_bytes()[b];
            let covering: Vec<usize> = (0..p.ids.len())
                .filter(|&j| p.offsets[j].0 <= b && b < p.offsets[j].1)
                .collect();
            for &j in &covering {
                assert_eq!(
                    p.parts[j],
                    Part::Body(i),
                    "token {j} covers body byte {b} of doc {i}"
                );
            }
            if !byte.is_ascii_whitespace() {
                assert!(
                    !covering.is_empty(),
                    "byte {b} of doc {i} is covered by no token"
                );
            }
        }
    }
    for (j, part) in p.parts.iter().enumerate() {
        let (s, e) = p.offsets[j];
        match part {
            Part::Body(i) => {
                let b = &p.docs[*i].body;
                assert!(
                    s < b.end && b.start < e,
                    "token {j} is Body({i}) but outside it"
                );
            }
            Part::Header(i) => {
                let a = &p.docs[*i].all;
                assert!(
                    s >= a.start && e <= a.end,
                    "header token {j} outside doc {i}"
                );
            }
            _ => {}
        }
    }
    // Headers exist for every document and the word "Document" of a header is never a body token.
    for i in 0..p.docs.len() {
        assert!(
            p.parts.contains(&Part::Header(i)),
            "doc {i} has no header token"
        );
        assert!(
            p.parts.contains(&Part::Body(i)),
            "doc {i} has no body token"
        );
        let header_start = p.docs[i].all.start;
        let first = (0..p.ids.len())
            .find(|&j| p.offsets[j].0 == header_start && p.offsets[j].1 > header_start)
            .expect("a token starts the header");
        assert_eq!(p.parts[first], Part::Header(i));
    }
}

#[test]
fn mapping_is_exact_on_tricky_text() {
    let m = tda_model::load_folder::<Cpu>(&fixture("gpt2"), &Default::default()).unwrap();
    let docs = tricky_docs();
    let pair = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &PromptTemplate::default(),
        "Which city? ünïcödé",
        &docs,
        None,
    )
    .unwrap();
    check(&pair.with_docs, &docs);
    // The decoded body tokens give back the body text (byte-level BPE is lossless); a token that
    // straddles the body edge may bring one neighbouring newline or space.
    for (i, d) in docs.iter().enumerate() {
        let ids: Vec<u32> = (0..pair.with_docs.ids.len())
            .filter(|&j| pair.with_docs.parts[j] == Part::Body(i))
            .map(|j| pair.with_docs.ids[j])
            .collect();
        let text = m.tokenizer.decode(&ids, false).unwrap();
        assert_eq!(text.trim(), d.text.trim(), "decoded body of doc {i}");
    }
    // The MIRAGE header form and a BOS first.
    let p = &pair.with_docs;
    assert!(p
        .text
        .contains("Document [1](Title: Zürich [old]): Zürich lies"));
    assert!(p.text.contains("Document [2]: 東京"));
    assert_eq!(p.ids[0], m.model.config.bos_token_id.unwrap());
    assert_eq!(p.parts[0], Part::Template);
    // The contextless prompt: the same template with no documents.
    let q = &pair.without_docs;
    assert!(q.docs.is_empty());
    assert!(q.parts.iter().all(|x| *x == Part::Template));
    assert!(q.text.ends_with("\n\n\nAnswer:"), "{:?}", q.text);
    assert!(!q.text.contains("Document"));
}

#[test]
fn chat_template_wraps_and_shifts_spans() {
    let m = tda_model::load_folder::<Cpu>(&fixture("qwen2"), &Default::default()).unwrap();
    // Zephyr's template (as in its tokenizer_config.json), rendered by minijinja.
    let chat = ChatTemplate {
        source: "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}".into(),
        bos_token: Some("<|endoftext|>".into()),
        eos_token: Some("<|endoftext|>".into()),
    };
    let docs = tricky_docs();
    let pair = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &PromptTemplate::default(),
        "Which city?",
        &docs,
        Some(&chat),
    )
    .unwrap();
    let p = &pair.with_docs;
    assert!(
        p.text.trim_start().starts_with("<|user|>\nInstruction:"),
        "{:?}",
        &p.text[..20]
    );
    assert!(p.text.trim_end().ends_with("<|assistant|>"));
    check(p, &docs);
    // The eos special token inside the template is one token of the template.
    let eos = m.model.config.eos_token_id.unwrap();
    let at = p
        .ids
        .iter()
        .position(|&x| x == eos)
        .expect("eos token in the chat");
    assert_eq!(p.parts[at], Part::Template);
}

#[test]
fn chat_template_from_folder_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_folder(dir.path()).unwrap().is_none());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ messages[0]['content'] }}"}], "eos_token": {"content": "</s>"}}"#,
    )
    .unwrap();
    let c = ChatTemplate::from_folder(dir.path()).unwrap().unwrap();
    assert_eq!(c.render_user("hi").unwrap(), "hi");
    assert_eq!(c.eos_token.as_deref(), Some("</s>"));
    // A template that rewrites the content cannot be mapped: a clear error, not a wrong mapping.
    let m = tda_model::load_folder::<Cpu>(&fixture("gpt2"), &Default::default()).unwrap();
    let bad = ChatTemplate {
        source: "{{ messages[0]['content'] | upper }}".into(),
        bos_token: None,
        eos_token: None,
    };
    let err = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &PromptTemplate::default(),
        "q",
        &tricky_docs(),
        Some(&bad),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("chat template changes the user message"),
        "{err}"
    );
    // Templates without {context} or with an unknown placeholder are errors.
    let mut tpl = PromptTemplate {
        prompt: "Question: {question}".into(),
        ..PromptTemplate::default()
    };
    let err = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &tpl,
        "q",
        &tricky_docs(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("{context} exactly once"), "{err}");
    tpl.prompt = "{context} {nope}".into();
    let err = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &tpl,
        "q",
        &tricky_docs(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown placeholder {nope}"), "{err}");
}
