//! Helpers shared by the integration tests: tiny corpora written on the fly.
#![allow(dead_code)]

use arrow::array::{ArrayRef, BinaryArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

/// Write a parquet file with a `text` column (nullable strings) and, if given, an `id` column
/// (int64), `rows_per_group` rows per row group.
pub fn write_parquet(
    path: &Path,
    texts: &[Option<&str>],
    ids: Option<&[i64]>,
    rows_per_group: usize,
) {
    let mut fields = vec![Field::new("text", DataType::Utf8, true)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(texts.to_vec()))];
    if let Some(ids) = ids {
        fields.push(Field::new("id", DataType::Int64, false));
        cols.push(Arc::new(Int64Array::from(ids.to_vec())));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    write_batch(path, batch, rows_per_group);
}

/// A parquet file whose text column is binary (so it may hold non-UTF-8 bytes).
pub fn write_parquet_binary(path: &Path, texts: &[&[u8]]) {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "content",
        DataType::Binary,
        false,
    )]));
    let col: ArrayRef = Arc::new(BinaryArray::from(texts.to_vec()));
    write_batch(path, RecordBatch::try_new(schema, vec![col]).unwrap(), 1024);
}

/// A parquet file with an integer `text` column (wrong type).
pub fn write_parquet_int_text(path: &Path) {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "text",
        DataType::Int64,
        false,
    )]));
    let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    write_batch(path, RecordBatch::try_new(schema, vec![col]).unwrap(), 1024);
}

fn write_batch(path: &Path, batch: RecordBatch, rows_per_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Assert an error's message is one line and contains all of `needles`.
pub fn assert_one_line_err(e: &tda_corpus::CorpusError, needles: &[&str]) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}
