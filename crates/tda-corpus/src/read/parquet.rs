//! Parquet through arrow: projected on the text (and id, title) columns, read batch by batch, optionally
//! restricted to selected rows.

use super::options::ReadOptions;
use super::record::{default_id, Raw, SkipReason};
use super::spec::CorpusFile;
use crate::doc::{Document, Format, SourceRef};
use crate::error::{CorpusError, Result};
use arrow::array::{
    Array, BinaryArray, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{ChunkReader, Length};
use std::fs::File;
use std::path::Path;

pub(super) struct ParquetState {
    pub(super) file: CorpusFile,
    pub(super) reader: ParquetRecordBatchReader,
    pub(super) batch: Option<RecordBatch>,
    pub(super) batch_pos: usize,
    pub(super) row: u64,
    pub(super) total_rows: u64,
}

/// Open a parquet file projected on the text (and id, title) columns. Checks the columns exist and
/// have a usable type. Returns the reader and the number of rows in the file.
pub(super) fn open_parquet(
    file: &CorpusFile,
    opts: &ReadOptions,
    selection: Option<RowSelection>,
) -> Result<(ParquetRecordBatchReader, u64)> {
    guarded(&file.path, || open_unguarded(file, opts, selection))
}

/// Runs a step of the parquet / arrow decoders, turning a panic into an error naming the file:
/// on some corrupt pages those crates assert (division by zero, a dictionary page missing,
/// a validity bitmap too short) instead of returning an error.
pub(super) fn guarded<T>(path: &Path, step: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(CorpusError::Parquet {
            path: path.to_path_buf(),
            msg: format!(
                "corrupt data (the decoder failed: {})",
                crate::error::one_line(&what)
            ),
        })
    })
}

fn open_unguarded(
    file: &CorpusFile,
    opts: &ReadOptions,
    selection: Option<RowSelection>,
) -> Result<(ParquetRecordBatchReader, u64)> {
    let f = File::open(&file.path).map_err(|e| CorpusError::io(&file.path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(StrictFile(f))
        .map_err(|e| CorpusError::parquet(&file.path, e))?;
    check_chunks(file, builder.metadata())?;
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
    for c in [&opts.id_column, &opts.title_column].into_iter().flatten() {
        if schema.field_with_name(c).is_ok() {
            cols.push(c.as_str());
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

/// A parquet source read like `File`, except that reading again after the end of the file is an
/// error. The parquet crate's thrift decoder skips fields with `io::copy`, which stops quietly at
/// the end, so a page header listing 2³¹ doubles would spin for minutes on reads of nothing.
struct StrictFile(File);

impl Length for StrictFile {
    fn len(&self) -> u64 {
        Length::len(&self.0)
    }
}

impl ChunkReader for StrictFile {
    type T = StrictRead<<File as ChunkReader>::T>;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(StrictRead {
            inner: self.0.get_read(start)?,
            ended: false,
        })
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// A reader that fails once asked for more after it has reported the end.
struct StrictRead<R> {
    inner: R,
    ended: bool,
}

impl<R: std::io::Read> std::io::Read for StrictRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.ended {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        let n = self.inner.read(buf)?;
        self.ended = n == 0;
        Ok(n)
    }
}

/// Refuses column chunks whose byte range is negative or runs past the end of the file: the
/// parquet crate asserts on the former (`ColumnChunkMetaData::byte_range`) instead of erroring.
fn check_chunks(file: &CorpusFile, meta: &ParquetMetaData) -> Result<()> {
    let size = std::fs::metadata(&file.path)
        .map_err(|e| CorpusError::io(&file.path, e))?
        .len();
    for (r, group) in meta.row_groups().iter().enumerate() {
        for (c, col) in group.columns().iter().enumerate() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or_else(|| col.data_page_offset());
            let len = col.compressed_size();
            if start < 0 || len < 0 || start as i128 + len as i128 > size as i128 {
                return Err(CorpusError::Parquet {
                    path: file.path.clone(),
                    msg: format!(
                        "row group {r}, column {c}: bytes {start}..+{len} are outside the file ({size} bytes)"
                    ),
                });
            }
        }
    }
    Ok(())
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
    pub(super) fn next_raw(&mut self, opts: &ReadOptions) -> Option<Result<Raw>> {
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
            let next = match guarded(&self.file.path, || Ok(self.reader.next())) {
                Ok(next) => next?,
                Err(e) => return Some(Err(e)),
            };
            match next {
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

pub(super) fn parquet_row(
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
        .and_then(|c| id_value(c.as_ref(), i));
    let title = opts
        .title_column
        .as_ref()
        .and_then(|c| batch.column_by_name(c))
        .and_then(|c| match text_value(c.as_ref(), i) {
            Ok(Some(s)) => Some(s.to_owned()),
            _ => None,
        });
    Raw::Doc {
        own_id: id.is_some(),
        doc: Document {
            id: id.unwrap_or_else(|| default_id(&file.rel, row)),
            title,
            text: text.to_owned(),
            source: SourceRef {
                path: file.path.clone(),
                format: Format::Parquet,
                row,
                byte_offset: 0,
                byte_len: text.len() as u64,
            },
        },
    }
}
