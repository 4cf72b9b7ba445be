//! Random access: re-read given records (by [`SourceRef`]) or given ids, touching as little of the
//! corpus as possible.

use super::jsonl::parse_jsonl_line;
use super::options::{DefaultId, ReadOptions, TextMode};
use super::parquet::{guarded, open_parquet, parquet_row};
use super::reader::open_corpus;
use super::record::{Raw, SkipReason};
use super::spec::CorpusFile;
use super::text::text_line_doc;
use crate::doc::{Document, Format, SourceRef};
use crate::error::{CorpusError, Result};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The raw bytes of the record a [`SourceRef`] points to: the jsonl line, the text span, or the
/// parquet text value (column `opts.text_column`).
pub fn read_record_bytes(src: &SourceRef, opts: &ReadOptions) -> Result<Vec<u8>> {
    match src.format {
        Format::Jsonl | Format::Text => {
            if src.byte_len > opts.max_doc_bytes as u64 {
                return Err(CorpusError::BadRecord {
                    path: src.path.clone(),
                    record: src.row,
                    reason: Some(SkipReason::TooLarge),
                    msg: "record larger than max_doc_bytes".into(),
                });
            }
            let mut f = File::open(&src.path).map_err(|e| CorpusError::io(&src.path, e))?;
            f.seek(SeekFrom::Start(src.byte_offset))
                .map_err(|e| CorpusError::io(&src.path, e))?;
            let mut buf = vec![0u8; src.byte_len as usize];
            f.read_exact(&mut buf)
                .map_err(|e| CorpusError::io(&src.path, e))?;
            Ok(buf)
        }
        Format::Parquet => {
            // Only the text is wanted: no id needs recomputing.
            let opts = ReadOptions {
                default_id: DefaultId::FileRow,
                ..opts.clone()
            };
            let docs = fetch_documents(std::slice::from_ref(src), &opts)?;
            Ok(docs
                .into_iter()
                .next()
                .map(|d| d.text.into_bytes())
                .unwrap_or_default())
        }
    }
}

/// Re-read the documents at `sources` (e.g. the prefilter's candidates), in the same order,
/// touching only those records: a seek per jsonl/text record, one row-selected pass per parquet file.
///
/// The document ids are recomputed as the reader would (given id, else `<file name>:<row>`), and
/// titles read as the reader would. A record that no longer parses the same way is an error (the
/// corpus changed); so is a record without an id of its own under [`DefaultId::Ordinal`] (its
/// ordinal depends on the whole stream, not on the record).
pub fn fetch_documents(sources: &[SourceRef], opts: &ReadOptions) -> Result<Vec<Document>> {
    let mut out: Vec<Option<Document>> = vec![None; sources.len()];
    // Group parquet rows per file.
    let mut parquet: std::collections::BTreeMap<&Path, Vec<(u64, usize)>> = Default::default();
    for (k, src) in sources.iter().enumerate() {
        match src.format {
            Format::Parquet => parquet
                .entry(src.path.as_path())
                .or_default()
                .push((src.row, k)),
            fmt => {
                let bytes = read_record_bytes(src, opts)?;
                let rel = src
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let raw = if fmt == Format::Jsonl {
                    parse_jsonl_line(&bytes, src.clone(), &rel, opts)
                } else if opts.text_mode == TextMode::File {
                    match String::from_utf8(bytes) {
                        Ok(text) => Raw::Doc {
                            own_id: false,
                            doc: Document {
                                id: rel.clone(),
                                title: None,
                                text,
                                source: src.clone(),
                            },
                        },
                        Err(_) => Raw::Skip(src.row, SkipReason::InvalidUtf8),
                    }
                } else {
                    text_line_doc(&bytes, src.clone(), &rel)
                };
                out[k] = Some(expect_doc(raw, src, opts)?);
            }
        }
    }
    for (path, mut rows) in parquet {
        rows.sort_unstable();
        let mut selectors = Vec::new();
        let mut next = 0u64;
        let mut distinct = Vec::new();
        for &(row, _) in &rows {
            if distinct.last() == Some(&row) {
                continue;
            }
            if row > next {
                selectors.push(RowSelector::skip((row - next) as usize));
            }
            selectors.push(RowSelector::select(1));
            next = row + 1;
            distinct.push(row);
        }
        let size = std::fs::metadata(path)
            .map_err(|e| CorpusError::io(path, e))?
            .len();
        let rel = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = CorpusFile {
            path: path.to_path_buf(),
            rel,
            format: Format::Parquet,
            size,
        };
        let (mut reader, total) = open_parquet(&file, opts, Some(RowSelection::from(selectors)))?;
        if let Some(&max) = distinct.last() {
            if max >= total {
                return Err(CorpusError::BadRecord {
                    path: file.path.clone(),
                    record: max,
                    reason: None,
                    msg: format!("row out of range (file has {total} rows): corpus changed?"),
                });
            }
        }
        let mut it = distinct.iter();
        let mut docs = std::collections::HashMap::new();
        while let Some(batch) = guarded(path, || Ok(reader.next()))? {
            let batch = batch.map_err(|e| CorpusError::parquet(path, e))?;
            for i in 0..batch.num_rows() {
                let Some(&row) = it.next() else { break };
                let raw = parquet_row(&file, &batch, i, row, opts);
                let src = SourceRef {
                    path: file.path.clone(),
                    format: Format::Parquet,
                    row,
                    byte_offset: 0,
                    byte_len: 0,
                };
                docs.insert(row, expect_doc(raw, &src, opts)?);
            }
        }
        for (row, k) in rows {
            out[k] = docs.get(&row).cloned();
        }
    }
    out.into_iter()
        .zip(sources)
        .map(|(d, s)| {
            d.ok_or_else(|| CorpusError::BadRecord {
                path: s.path.clone(),
                record: s.row,
                reason: None,
                msg: "record not found: corpus changed?".into(),
            })
        })
        .collect()
}

fn expect_doc(raw: Raw, src: &SourceRef, opts: &ReadOptions) -> Result<Document> {
    match raw {
        Raw::Doc { own_id: false, .. } if opts.default_id == DefaultId::Ordinal => {
            Err(CorpusError::BadRecord {
                path: src.path.clone(),
                record: src.row,
                reason: None,
                msg: "no id in the record, and an ordinal id cannot be recomputed for one record \
                      (read the corpus as a stream, or use an id column)"
                    .into(),
            })
        }
        Raw::Doc { doc, .. } => Ok(doc),
        Raw::Skip(row, reason) => Err(CorpusError::BadRecord {
            path: src.path.clone(),
            record: row,
            reason: Some(reason),
            msg: format!("{} (corpus changed since indexing?)", reason.describe()),
        }),
    }
}

/// Stream the corpus once and keep the documents whose id is in `ids` (memory: the kept ones).
pub fn fetch_by_ids(
    path: &Path,
    opts: &ReadOptions,
    ids: &HashSet<String>,
) -> Result<Vec<Document>> {
    let mut out = Vec::new();
    for doc in open_corpus(path, opts)? {
        let doc = doc?;
        if ids.contains(&doc.id) {
            out.push(doc);
        }
    }
    Ok(out)
}
