//! Helpers shared by the pipeline tests: the HF fixtures and in-memory corpora.
#![allow(dead_code)]

use std::path::PathBuf;

use tda_trace::DocSource;

/// `tests/fixtures/NAME` of the workspace.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// An in-memory document: row `row` of a pretend jsonl file "mem".
pub fn mem_doc(row: usize, id: String, text: String) -> tda_corpus::Document {
    tda_corpus::Document {
        title: None,
        id,
        source: tda_corpus::SourceRef {
            path: "mem".into(),
            format: tda_corpus::Format::Jsonl,
            row: row as u64,
            byte_offset: 0,
            byte_len: text.len() as u64,
        },
        text,
    }
}

/// Documents `d0, d1, …` with these texts.
pub fn mem_docs(texts: &[&str]) -> DocSource {
    DocSource::docs(
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| mem_doc(i, format!("d{i}"), t.to_string()))
            .collect(),
    )
}
