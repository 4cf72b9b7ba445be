//! The streaming reader: one pass over the files of a [`CorpusSpec`], yielding documents and
//! counting skipped records.

use super::jsonl::parse_jsonl_line;
use super::lines::read_bounded_line;
use super::options::{DefaultId, ReadOptions, TextMode};
use super::parquet::{open_parquet, ParquetState};
use super::record::{Raw, SkipCounts, SkipReason};
use super::spec::{CorpusFile, CorpusSpec};
use super::text::{read_whole_text, text_line_doc};
use crate::doc::{Document, Format, SourceRef};
use crate::error::{CorpusError, Result};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Running statistics of a [`CorpusReader`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReadStats {
    /// Documents yielded.
    pub docs: u64,
    /// Text bytes of the documents yielded.
    pub text_bytes: u64,
    pub skipped: SkipCounts,
    /// Files fully read.
    pub files_done: usize,
    /// Estimated bytes of corpus files consumed so far (exact for jsonl/text).
    pub file_bytes_done: u64,
}

impl ReadStats {
    /// Records seen: documents yielded plus records skipped.
    pub fn records(&self) -> u64 {
        self.docs + self.skipped.total()
    }

    /// One line: `"917 documents, 3 records skipped (empty 1, bad JSON 2)"`.
    pub fn summary(&self) -> String {
        match self.skipped.total() {
            0 => format!("{} documents, 0 records skipped", self.docs),
            n => format!(
                "{} documents, {n} records skipped ({})",
                self.docs,
                self.skipped.reasons()
            ),
        }
    }

    /// Why a pass yielded no document, with the option to change when one explains it.
    pub fn why_no_documents(&self, opts: &ReadOptions) -> String {
        let n = self.records();
        let s = &self.skipped;
        if n == 0 {
            return "no records (the corpus is empty)".into();
        }
        if s.missing_text == n {
            return format!(
                "no `{}` field in {n} of {n} records; use --text-column",
                opts.text_column
            );
        }
        let mut hints = Vec::new();
        if s.missing_text > 0 {
            hints.push(format!(
                "{} without a `{}` field (--text-column)",
                s.missing_text, opts.text_column
            ));
        }
        if s.too_large > 0 {
            hints.push(format!(
                "{} larger than {} MiB (--max-doc-mib)",
                s.too_large,
                opts.max_doc_bytes >> 20
            ));
        }
        if s.bad_json > 0 {
            hints.push(format!("{} not a JSON object", s.bad_json));
        }
        let mut msg = format!("all {n} records were skipped ({})", s.reasons());
        if !hints.is_empty() {
            msg.push_str(": ");
            msg.push_str(&hints.join("; "));
        }
        msg
    }
}

/// Open a corpus (file or directory) for streaming; format auto-detected by extension.
pub fn open_corpus(path: &Path, opts: &ReadOptions) -> Result<CorpusReader> {
    Ok(CorpusReader::new(CorpusSpec::resolve(path)?, opts.clone()))
}

/// Streaming iterator over the documents of a corpus.
///
/// Yields `Err` for a file that cannot be read (then moves on to the next file) and, in strict
/// mode, for a bad record. Skipped records are counted in [`CorpusReader::stats`].
pub struct CorpusReader {
    spec: CorpusSpec,
    opts: ReadOptions,
    next_file: usize,
    current: Option<FileReader>,
    stats: ReadStats,
}

impl CorpusReader {
    pub fn new(spec: CorpusSpec, opts: ReadOptions) -> Self {
        CorpusReader {
            spec,
            opts,
            next_file: 0,
            current: None,
            stats: ReadStats::default(),
        }
    }
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }
    pub fn spec(&self) -> &CorpusSpec {
        &self.spec
    }
    /// Bytes consumed so far, including the current file (estimated for parquet).
    pub fn bytes_done(&self) -> u64 {
        self.stats.file_bytes_done + self.current.as_ref().map(|c| c.position()).unwrap_or(0)
    }
    /// Index in `spec().files` of the file the last document came from.
    pub fn current_file(&self) -> usize {
        self.next_file.saturating_sub(1)
    }

    fn skip(
        &mut self,
        file: &CorpusFile,
        row: u64,
        reason: SkipReason,
    ) -> Option<Result<Document>> {
        if self.opts.strict {
            return Some(Err(CorpusError::BadRecord {
                path: file.path.clone(),
                record: row,
                reason: Some(reason),
                msg: reason.describe().into(),
            }));
        }
        self.stats.skipped.bump(reason);
        None
    }
}

impl Iterator for CorpusReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                if self.next_file >= self.spec.files.len() {
                    return None;
                }
                let file = self.spec.files[self.next_file].clone();
                self.next_file += 1;
                match FileReader::open(&file, &self.opts) {
                    Ok(r) => self.current = Some(r),
                    Err(e) => {
                        self.stats.files_done += 1;
                        self.stats.file_bytes_done += file.size;
                        return Some(Err(e));
                    }
                }
            }
            let file = &self.spec.files[self.next_file - 1];
            let raw = self
                .current
                .as_mut()
                .map(|c| c.next_raw(&self.opts))
                .unwrap_or(None);
            match raw {
                None => {
                    self.current = None;
                    self.stats.files_done += 1;
                    self.stats.file_bytes_done += file.size;
                }
                Some(Err(e)) => {
                    self.current = None;
                    self.stats.files_done += 1;
                    self.stats.file_bytes_done += file.size;
                    return Some(Err(e));
                }
                Some(Ok(Raw::Skip(row, reason))) => {
                    let file = file.clone();
                    if let Some(e) = self.skip(&file, row, reason) {
                        return Some(e);
                    }
                }
                Some(Ok(Raw::Doc { mut doc, own_id })) => {
                    self.stats.docs += 1;
                    if !own_id && self.opts.default_id == DefaultId::Ordinal {
                        doc.id = self.stats.docs.to_string();
                    }
                    self.stats.text_bytes += doc.text.len() as u64;
                    return Some(Ok(doc));
                }
            }
        }
    }
}

enum FileReader {
    Lines {
        file: CorpusFile,
        reader: BufReader<File>,
        pos: u64,
        row: u64,
        buf: Vec<u8>,
        jsonl: bool,
    },
    WholeText {
        file: CorpusFile,
        done: bool,
    },
    Parquet(ParquetState),
}

impl FileReader {
    fn open(file: &CorpusFile, opts: &ReadOptions) -> Result<FileReader> {
        match (file.format, opts.text_mode) {
            (Format::Text, TextMode::File) => Ok(FileReader::WholeText {
                file: file.clone(),
                done: false,
            }),
            (Format::Text, TextMode::Line) | (Format::Jsonl, _) => {
                let f = File::open(&file.path).map_err(|e| CorpusError::io(&file.path, e))?;
                Ok(FileReader::Lines {
                    file: file.clone(),
                    reader: BufReader::with_capacity(1 << 16, f),
                    pos: 0,
                    row: 0,
                    buf: Vec::new(),
                    jsonl: file.format == Format::Jsonl,
                })
            }
            (Format::Parquet, _) => {
                let (reader, total_rows) = open_parquet(file, opts, None)?;
                Ok(FileReader::Parquet(ParquetState {
                    file: file.clone(),
                    reader,
                    batch: None,
                    batch_pos: 0,
                    row: 0,
                    total_rows,
                }))
            }
        }
    }

    fn position(&self) -> u64 {
        match self {
            FileReader::Lines { pos, .. } => *pos,
            FileReader::WholeText { .. } => 0,
            FileReader::Parquet(p) => {
                if p.total_rows == 0 {
                    0
                } else {
                    (p.file.size as f64 * p.row as f64 / p.total_rows as f64) as u64
                }
            }
        }
    }

    fn next_raw(&mut self, opts: &ReadOptions) -> Option<Result<Raw>> {
        match self {
            FileReader::WholeText { file, done } => {
                if *done {
                    return None;
                }
                *done = true;
                Some(read_whole_text(file, opts))
            }
            FileReader::Lines {
                file,
                reader,
                pos,
                row,
                buf,
                jsonl,
            } => {
                let start = *pos;
                let (consumed, overflow, term) =
                    match read_bounded_line(reader, buf, opts.max_doc_bytes) {
                        Ok(Some(x)) => x,
                        Ok(None) => return None,
                        Err(e) => return Some(Err(CorpusError::io(&file.path, e))),
                    };
                *pos += consumed;
                let r = *row;
                *row += 1;
                if overflow {
                    return Some(Ok(Raw::Skip(r, SkipReason::TooLarge)));
                }
                let len = consumed - term;
                let src = SourceRef {
                    path: file.path.clone(),
                    format: file.format,
                    row: r,
                    byte_offset: start,
                    byte_len: len,
                };
                Some(Ok(if *jsonl {
                    parse_jsonl_line(buf, src, &file.rel, opts)
                } else {
                    text_line_doc(buf, src, &file.rel)
                }))
            }
            FileReader::Parquet(p) => p.next_raw(opts),
        }
    }
}
