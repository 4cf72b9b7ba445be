//! The outcome of reading one record — a document, or a skip with its reason — and the skip
//! counters. Shared by the format readers, the streaming reader and the random-access fetch.

use crate::doc::Document;
use serde::{Deserialize, Serialize};

/// Why a record was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Empty or whitespace-only text.
    Empty,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A jsonl line that is not a JSON object.
    BadJson,
    /// The text field is absent (jsonl) or null (parquet), or not a string.
    MissingText,
    /// Larger than `max_doc_bytes`.
    TooLarge,
}

impl SkipReason {
    pub(super) fn describe(self) -> &'static str {
        match self {
            SkipReason::Empty => "empty document",
            SkipReason::InvalidUtf8 => "invalid UTF-8",
            SkipReason::BadJson => "not a JSON object",
            SkipReason::MissingText => "missing or null text field",
            SkipReason::TooLarge => "document larger than max_doc_bytes",
        }
    }
}

/// Counts of skipped records, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts {
    pub empty: u64,
    pub invalid_utf8: u64,
    pub bad_json: u64,
    pub missing_text: u64,
    pub too_large: u64,
}

impl SkipCounts {
    pub fn total(&self) -> u64 {
        self.empty + self.invalid_utf8 + self.bad_json + self.missing_text + self.too_large
    }
    pub(super) fn bump(&mut self, r: SkipReason) {
        match r {
            SkipReason::Empty => self.empty += 1,
            SkipReason::InvalidUtf8 => self.invalid_utf8 += 1,
            SkipReason::BadJson => self.bad_json += 1,
            SkipReason::MissingText => self.missing_text += 1,
            SkipReason::TooLarge => self.too_large += 1,
        }
    }
    /// The non-zero counts, e.g. `"empty 1, bad JSON 2"` (`""` when nothing was skipped).
    pub fn reasons(&self) -> String {
        [
            ("empty", self.empty),
            ("invalid UTF-8", self.invalid_utf8),
            ("bad JSON", self.bad_json),
            ("missing text", self.missing_text),
            ("too large", self.too_large),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
    pub fn add(&mut self, o: &SkipCounts) {
        self.empty += o.empty;
        self.invalid_utf8 += o.invalid_utf8;
        self.bad_json += o.bad_json;
        self.missing_text += o.missing_text;
        self.too_large += o.too_large;
    }
}

impl std::fmt::Display for SkipCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} skipped (empty {}, invalid UTF-8 {}, bad JSON {}, missing text {}, too large {})",
            self.total(),
            self.empty,
            self.invalid_utf8,
            self.bad_json,
            self.missing_text,
            self.too_large
        )
    }
}

pub(super) enum Raw {
    /// A document; `own_id` is false when its id is the `<file>:<row>` fallback, which the
    /// consumer replaces under [`DefaultId::Ordinal`](super::DefaultId::Ordinal).
    Doc {
        doc: Document,
        own_id: bool,
    },
    Skip(u64, SkipReason),
}

/// The [`DefaultId::FileRow`](super::DefaultId::FileRow) id.
pub(super) fn default_id(rel: &str, row: u64) -> String {
    format!("{rel}:{row}")
}
