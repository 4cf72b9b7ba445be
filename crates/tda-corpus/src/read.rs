//! Streaming corpus readers: jsonl, plain text and parquet, single files, lists, or directories.
//!
//! Invariants:
//! - Memory is bounded: at most one line (≤ `max_doc_bytes`, longer lines are skipped without being
//!   buffered), one text file (≤ `max_doc_bytes`), or one arrow batch (`parquet_batch_rows` rows) is
//!   held at a time.
//! - Files are read in a deterministic order (as listed; directories sorted by relative path).
//! - A bad record (empty, non-UTF-8, unparsable JSON, missing or null text, too large) is skipped
//!   and counted in [`ReadStats`] — or is an error in strict mode. A file that cannot be read at all
//!   (unreadable, truncated or corrupt parquet, missing text column) is always an error.

use crate::doc::{Document, Format, SourceRef};
use crate::error::{CorpusError, Result};
use arrow::array::{
    Array, BinaryArray, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How plain-text files are cut into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextMode {
    /// One document per line.
    #[default]
    Line,
    /// One document per file.
    File,
}

/// Options of the readers. `Default` gives the Hugging Face layout: text in `text`, id in `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Field (jsonl) or column (parquet) holding the text.
    pub text_column: String,
    /// Field / column holding the id; when absent in a record, the id is `<file>:<row>`.
    pub id_column: Option<String>,
    /// How `.txt` files are cut into documents.
    pub text_mode: TextMode,
    /// Documents (lines, text files, parquet values) larger than this are skipped and counted.
    pub max_doc_bytes: usize,
    /// Rows per arrow batch when reading parquet.
    pub parquet_batch_rows: usize,
    /// Turn every skipped record into an error.
    pub strict: bool,
    /// Field / column holding an optional title.
    pub title_column: Option<String>,
    /// Id of a record without one.
    pub default_id: DefaultId,
}

/// Id given to a document whose record has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DefaultId {
    /// `<file>:<row>`.
    #[default]
    FileRow,
    /// 1-based position among the documents yielded.
    Ordinal,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            text_column: "text".into(),
            id_column: Some("id".into()),
            text_mode: TextMode::Line,
            max_doc_bytes: 64 << 20,
            parquet_batch_rows: 1024,
            strict: false,
            title_column: None,
            default_id: DefaultId::FileRow,
        }
    }
}

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
    fn describe(self) -> &'static str {
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
    fn bump(&mut self, r: SkipReason) {
        match r {
            SkipReason::Empty => self.empty += 1,
            SkipReason::InvalidUtf8 => self.invalid_utf8 += 1,
            SkipReason::BadJson => self.bad_json += 1,
            SkipReason::MissingText => self.missing_text += 1,
            SkipReason::TooLarge => self.too_large += 1,
        }
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

/// Running statistics of a [`CorpusReader`].
#[derive(Clone, Debug, Default)]
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

/// One file of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusFile {
    /// Absolute path.
    pub path: PathBuf,
    /// Path relative to the corpus root, `/`-separated (the file name for a single file).
    pub rel: String,
    pub format: Format,
    pub size: u64,
}

/// The resolved list of files making a corpus: a single file, a list of files, or directories
/// of shards (walked recursively, sorted; hidden entries, unknown extensions and tantivy index
/// folders ignored).
#[derive(Clone, Debug, Default)]
pub struct CorpusSpec {
    pub files: Vec<CorpusFile>,
    /// Files in the given directories that were ignored (unknown extension).
    pub ignored: Vec<PathBuf>,
}

impl CorpusSpec {
    /// Resolve one path (file or directory).
    pub fn resolve(path: &Path) -> Result<CorpusSpec> {
        Self::resolve_many(std::slice::from_ref(&path.to_path_buf()))
    }

    /// Resolve several paths, concatenated in the order given.
    pub fn resolve_many(paths: &[PathBuf]) -> Result<CorpusSpec> {
        let mut spec = CorpusSpec::default();
        for p in paths {
            let meta = std::fs::metadata(p).map_err(|e| CorpusError::io(p, e))?;
            let abs = std::fs::canonicalize(p).map_err(|e| CorpusError::io(p, e))?;
            if meta.is_dir() {
                let mut found = Vec::new();
                walk(&abs, &abs, &mut found, &mut spec.ignored)?;
                found.sort_by(|a: &CorpusFile, b| a.rel.cmp(&b.rel));
                if found.is_empty() {
                    return Err(CorpusError::NoFiles { path: p.clone() });
                }
                spec.files.extend(found);
            } else {
                let format =
                    Format::from_path(p).ok_or(CorpusError::UnknownFormat { path: p.clone() })?;
                let rel = abs
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                spec.files.push(CorpusFile {
                    path: abs,
                    rel,
                    format,
                    size: meta.len(),
                });
            }
        }
        if spec.files.is_empty() {
            return Err(CorpusError::InvalidArgument("no corpus path given".into()));
        }
        Ok(spec)
    }

    /// Total size in bytes of the corpus files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<CorpusFile>,
    ignored: &mut Vec<PathBuf>,
) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| CorpusError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| CorpusError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| CorpusError::io(&path, e))?;
        if meta.is_dir() {
            // A tantivy index folder (e.g. `indexes/` inside the corpus) is not corpus data.
            if path.join(".managed.json").exists() {
                ignored.push(path);
                continue;
            }
            walk(root, &path, out, ignored)?;
        } else if let Some(format) = Format::from_path(&path) {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(CorpusFile {
                path,
                rel,
                format,
                size: meta.len(),
            });
        } else {
            ignored.push(path);
        }
    }
    Ok(())
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
                Some(Ok(Raw::Doc(mut doc))) => {
                    if self.opts.default_id == DefaultId::Ordinal
                        && doc.id == default_id(&file.rel, doc.source.row)
                    {
                        doc.id = (self.stats.docs + 1).to_string();
                    }
                    self.stats.docs += 1;
                    self.stats.text_bytes += doc.text.len() as u64;
                    return Some(Ok(doc));
                }
            }
        }
    }
}

enum Raw {
    Doc(Document),
    Skip(u64, SkipReason),
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

struct ParquetState {
    file: CorpusFile,
    reader: ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    batch_pos: usize,
    row: u64,
    total_rows: u64,
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

/// Read one line into `buf` without its terminator, buffering at most `max` bytes.
/// Returns (bytes consumed including terminator, overflowed, terminator length).
fn read_bounded_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<(u64, bool, u64)>> {
    buf.clear();
    let mut consumed = 0u64;
    let mut overflow = false;
    let mut saw_newline = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let (chunk, used, nl) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !overflow {
            if buf.len() + chunk.len() > max {
                overflow = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        consumed += used as u64;
        if nl {
            saw_newline = true;
            break;
        }
    }
    if consumed == 0 {
        return Ok(None);
    }
    let mut term = 0;
    if saw_newline {
        term = 1;
        if buf.last() == Some(&b'\r') {
            buf.pop();
            term = 2;
        }
    }
    Ok(Some((consumed, overflow, term)))
}

fn default_id(rel: &str, row: u64) -> String {
    format!("{rel}:{row}")
}

fn text_line_doc(buf: &[u8], src: SourceRef, rel: &str) -> Raw {
    let text = match std::str::from_utf8(buf) {
        Ok(t) => t,
        Err(_) => return Raw::Skip(src.row, SkipReason::InvalidUtf8),
    };
    if text.trim().is_empty() {
        return Raw::Skip(src.row, SkipReason::Empty);
    }
    Raw::Doc(Document {
        title: None,
        id: default_id(rel, src.row),
        text: text.to_owned(),
        source: src,
    })
}

fn parse_jsonl_line(buf: &[u8], src: SourceRef, rel: &str, opts: &ReadOptions) -> Raw {
    let line = match std::str::from_utf8(buf) {
        Ok(t) => t,
        Err(_) => return Raw::Skip(src.row, SkipReason::InvalidUtf8),
    };
    if line.trim().is_empty() {
        return Raw::Skip(src.row, SkipReason::Empty);
    }
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(_) => return Raw::Skip(src.row, SkipReason::BadJson),
    };
    let serde_json::Value::Object(mut obj) = value else {
        return Raw::Skip(src.row, SkipReason::BadJson);
    };
    let text = match obj.remove(&opts.text_column) {
        Some(serde_json::Value::String(s)) => s,
        _ => return Raw::Skip(src.row, SkipReason::MissingText),
    };
    if text.trim().is_empty() {
        return Raw::Skip(src.row, SkipReason::Empty);
    }
    let id = opts
        .id_column
        .as_ref()
        .and_then(|c| match obj.get(c) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| default_id(rel, src.row));
    let title = opts.title_column.as_ref().and_then(|c| match obj.get(c) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => None,
    });
    Raw::Doc(Document {
        id,
        title,
        text,
        source: src,
    })
}

fn read_whole_text(file: &CorpusFile, opts: &ReadOptions) -> Result<Raw> {
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
    Ok(Raw::Doc(Document {
        title: None,
        id: file.rel.clone(),
        text,
        source: src,
    }))
}

/// Open a parquet file projected on the text (and id) columns. Checks the columns exist and
/// have a usable type. Returns the reader and the number of rows in the file.
fn open_parquet(
    file: &CorpusFile,
    opts: &ReadOptions,
    selection: Option<RowSelection>,
) -> Result<(ParquetRecordBatchReader, u64)> {
    let f = File::open(&file.path).map_err(|e| CorpusError::io(&file.path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| CorpusError::parquet(&file.path, e))?;
    let schema = builder.schema().clone();
    let available = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text_field =
        schema
            .field_with_name(&opts.text_column)
            .map_err(|_| CorpusError::MissingColumn {
                path: file.path.clone(),
                column: opts.text_column.clone(),
                available: available(),
            })?;
    if !matches!(
        text_field.data_type(),
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
    ) {
        return Err(CorpusError::ColumnType {
            path: file.path.clone(),
            column: opts.text_column.clone(),
            dtype: text_field.data_type().to_string(),
        });
    }
    let mut cols = vec![opts.text_column.as_str()];
    if let Some(id) = &opts.id_column {
        if schema.field_with_name(id).is_ok() {
            cols.push(id.as_str());
        }
    }
    let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mask = ProjectionMask::columns(builder.parquet_schema(), cols);
    let mut builder = builder
        .with_projection(mask)
        .with_batch_size(opts.parquet_batch_rows.max(1));
    if let Some(sel) = selection {
        builder = builder.with_row_selection(sel);
    }
    let reader = builder
        .build()
        .map_err(|e| CorpusError::parquet(&file.path, e))?;
    Ok((reader, total_rows))
}

/// Text value of row `i` of a string/binary array: `Ok(None)` for null, `Err(())` for non-UTF-8.
fn text_value(arr: &dyn Array, i: usize) -> std::result::Result<Option<&str>, ()> {
    if arr.is_null(i) {
        return Ok(None);
    }
    let any = arr.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Ok(Some(a.value(i)));
    }
    if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        return Ok(Some(a.value(i)));
    }
    if let Some(a) = any.downcast_ref::<StringViewArray>() {
        return Ok(Some(a.value(i)));
    }
    let bytes = if let Some(a) = any.downcast_ref::<BinaryArray>() {
        a.value(i)
    } else if let Some(a) = any.downcast_ref::<LargeBinaryArray>() {
        a.value(i)
    } else {
        return Ok(None);
    };
    std::str::from_utf8(bytes).map(Some).map_err(|_| ())
}

fn id_value(arr: &dyn Array, i: usize) -> Option<String> {
    if arr.is_null(i) {
        return None;
    }
    match text_value(arr, i) {
        Ok(Some(s)) => Some(s.to_owned()),
        _ => arrow::util::display::array_value_to_string(arr, i).ok(),
    }
}

impl ParquetState {
    fn next_raw(&mut self, opts: &ReadOptions) -> Option<Result<Raw>> {
        loop {
            if let Some(batch) = &self.batch {
                if self.batch_pos < batch.num_rows() {
                    let i = self.batch_pos;
                    self.batch_pos += 1;
                    let row = self.row;
                    self.row += 1;
                    return Some(Ok(parquet_row(&self.file, batch, i, row, opts)));
                }
                self.batch = None;
            }
            match self.reader.next()? {
                Ok(b) => {
                    self.batch = Some(b);
                    self.batch_pos = 0;
                }
                Err(e) => {
                    return Some(Err(CorpusError::Parquet {
                        path: self.file.path.clone(),
                        msg: format!("near row {}: {}", self.row, crate::error::one_line(&e)),
                    }))
                }
            }
        }
    }
}

fn parquet_row(
    file: &CorpusFile,
    batch: &RecordBatch,
    i: usize,
    row: u64,
    opts: &ReadOptions,
) -> Raw {
    let Some(text_col) = batch.column_by_name(&opts.text_column) else {
        return Raw::Skip(row, SkipReason::MissingText);
    };
    let text = match text_value(text_col.as_ref(), i) {
        Ok(Some(t)) => t,
        Ok(None) => return Raw::Skip(row, SkipReason::MissingText),
        Err(()) => return Raw::Skip(row, SkipReason::InvalidUtf8),
    };
    if text.len() > opts.max_doc_bytes {
        return Raw::Skip(row, SkipReason::TooLarge);
    }
    if text.trim().is_empty() {
        return Raw::Skip(row, SkipReason::Empty);
    }
    let id = opts
        .id_column
        .as_ref()
        .and_then(|c| batch.column_by_name(c))
        .and_then(|c| id_value(c.as_ref(), i))
        .unwrap_or_else(|| default_id(&file.rel, row));
    Raw::Doc(Document {
        id,
        title: None,
        text: text.to_owned(),
        source: SourceRef {
            path: file.path.clone(),
            format: Format::Parquet,
            row,
            byte_offset: 0,
            byte_len: text.len() as u64,
        },
    })
}

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
            let docs = fetch_documents(std::slice::from_ref(src), opts)?;
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
/// The document ids are recomputed as the reader would (given id, else `<file name>:<row>`).
/// A record that no longer parses the same way is an error (the corpus changed).
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
                        Ok(text) => Raw::Doc(Document {
                            title: None,
                            id: rel.clone(),
                            text,
                            source: src.clone(),
                        }),
                        Err(_) => Raw::Skip(src.row, SkipReason::InvalidUtf8),
                    }
                } else {
                    text_line_doc(&bytes, src.clone(), &rel)
                };
                out[k] = Some(expect_doc(raw, src)?);
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
        let (reader, total) = open_parquet(&file, opts, Some(RowSelection::from(selectors)))?;
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
        for batch in reader {
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
                docs.insert(row, expect_doc(raw, &src)?);
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

fn expect_doc(raw: Raw, src: &SourceRef) -> Result<Document> {
    match raw {
        Raw::Doc(d) => Ok(d),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_line_reader() {
        let data = b"ab\r\ncdefgh\nij";
        let mut r = BufReader::with_capacity(2, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 4).unwrap(),
            Some((4, false, 2))
        );
        assert_eq!(buf, b"ab");
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 4).unwrap(),
            Some((7, true, 1))
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 4).unwrap(),
            Some((2, false, 0))
        );
        assert_eq!(buf, b"ij");
        assert_eq!(read_bounded_line(&mut r, &mut buf, 4).unwrap(), None);
    }

    #[test]
    fn format_detection() {
        assert_eq!(
            Format::from_path(Path::new("a/b.JSONL")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            Format::from_path(Path::new("x.parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(Format::from_path(Path::new("x.txt")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("x.csv")), None);
    }
}
