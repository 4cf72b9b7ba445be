//! Plain text: one document per line, or one per file.

use super::options::ReadOptions;
use super::record::{default_id, Raw, SkipReason};
use super::spec::CorpusFile;
use crate::doc::{Document, Format, SourceRef};
use crate::error::{CorpusError, Result};

pub(super) fn text_line_doc(buf: &[u8], src: SourceRef, rel: &str) -> Raw {
    let text = match std::str::from_utf8(buf) {
        Ok(t) => t,
        Err(_) => return Raw::Skip(src.row, SkipReason::InvalidUtf8),
    };
    if text.trim().is_empty() {
        return Raw::Skip(src.row, SkipReason::Empty);
    }
    Raw::Doc {
        own_id: false,
        doc: Document {
            id: default_id(rel, src.row),
            title: None,
            text: text.to_owned(),
            source: src,
        },
    }
}

pub(super) fn read_whole_text(file: &CorpusFile, opts: &ReadOptions) -> Result<Raw> {
    let meta = std::fs::metadata(&file.path).map_err(|e| CorpusError::io(&file.path, e))?;
    if meta.len() > opts.max_doc_bytes as u64 {
        return Ok(Raw::Skip(0, SkipReason::TooLarge));
    }
    let bytes = std::fs::read(&file.path).map_err(|e| CorpusError::io(&file.path, e))?;
    let src = SourceRef {
        path: file.path.clone(),
        format: Format::Text,
        row: 0,
        byte_offset: 0,
        byte_len: bytes.len() as u64,
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return Ok(Raw::Skip(0, SkipReason::InvalidUtf8)),
    };
    if text.trim().is_empty() {
        return Ok(Raw::Skip(0, SkipReason::Empty));
    }
    Ok(Raw::Doc {
        own_id: false,
        doc: Document {
            id: file.rel.clone(),
            title: None,
            text,
            source: src,
        },
    })
}
