//! `ReadOptions::title_column` (titles into `Document::title`) and `ReadOptions::default_id`
//! (`<file>:<row>` or the 1-based ordinal for documents without an id), for jsonl and parquet.

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use std::path::Path;
use std::sync::Arc;
use tda_corpus::*;

fn read_all(path: &Path, opts: &ReadOptions) -> Vec<Document> {
    open_corpus(path, opts)
        .unwrap()
        .collect::<Result<Vec<_>>>()
        .unwrap()
}

fn ids(docs: &[Document]) -> Vec<&str> {
    docs.iter().map(|d| d.id.as_str()).collect()
}

fn titles(docs: &[Document]) -> Vec<Option<&str>> {
    docs.iter().map(|d| d.title.as_deref()).collect()
}

/// A parquet file with nullable string columns `text`, `id`, `title` (a column is left out when
/// `None`).
fn write_parquet(
    path: &Path,
    texts: &[Option<&str>],
    ids: Option<&[Option<&str>]>,
    titles: Option<&[Option<&str>]>,
) {
    let mut fields = vec![Field::new("text", DataType::Utf8, true)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(texts.to_vec()))];
    for (name, col) in [("id", ids), ("title", titles)] {
        if let Some(c) = col {
            fields.push(Field::new(name, DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(c.to_vec())));
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

const JSONL: &str = concat!(
    "{\"id\":\"a\",\"title\":\"Alpha\",\"text\":\"first text\"}\n",
    "{\"title\":null,\"text\":\"second text\"}\n",
    "not json\n",
    "{\"title\":7,\"text\":\"third text\"}\n",
    "{\"id\":42,\"text\":\"fourth text\"}\n",
    "{\"title\":\"Fifth\",\"text\":\"fifth text\"}\n",
);

#[test]
fn defaults_read_no_title_and_file_row_ids() {
    let opts = ReadOptions::default();
    assert_eq!(opts.title_column, None);
    assert_eq!(opts.default_id, DefaultId::FileRow);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("docs.jsonl");
    std::fs::write(&p, JSONL).unwrap();
    let docs = read_all(&p, &opts);
    assert_eq!(
        ids(&docs),
        ["a", "docs.jsonl:1", "docs.jsonl:3", "42", "docs.jsonl:5"]
    );
    assert!(
        docs.iter().all(|d| d.title.is_none()),
        "no title column set"
    );
}

#[test]
fn jsonl_titles_and_ordinal_ids() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("docs.jsonl");
    std::fs::write(&p, JSONL).unwrap();
    let opts = ReadOptions {
        title_column: Some("title".into()),
        default_id: DefaultId::Ordinal,
        ..Default::default()
    };
    let docs = read_all(&p, &opts);
    // Ordinals count the documents yielded (the bad line takes no number); given ids are kept.
    assert_eq!(ids(&docs), ["a", "2", "3", "42", "5"]);
    // Absent, null or non-string titles are None.
    assert_eq!(
        titles(&docs),
        [Some("Alpha"), None, None, None, Some("Fifth")]
    );
    // File-row ids with titles.
    let fr = ReadOptions {
        default_id: DefaultId::FileRow,
        ..opts.clone()
    };
    let docs = read_all(&p, &fr);
    assert_eq!(
        ids(&docs),
        ["a", "docs.jsonl:1", "docs.jsonl:3", "42", "docs.jsonl:5"]
    );
    assert_eq!(docs[0].title.as_deref(), Some("Alpha"));
    // Re-reading a record by its SourceRef gives the same title (and the id it was given).
    let back = fetch_documents(&[docs[4].source.clone(), docs[0].source.clone()], &fr).unwrap();
    assert_eq!(back[0], docs[4]);
    assert_eq!(back[1], docs[0]);
    // An ordinal cannot be recomputed from one record: an error, not a wrong id.
    let e = fetch_documents(&[docs[1].source.clone()], &opts).unwrap_err();
    assert!(e.to_string().contains("ordinal"), "{e}");
    assert!(fetch_documents(&[docs[0].source.clone()], &opts).is_ok());
}

#[test]
fn ordinals_run_across_the_files_of_a_corpus() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("a.jsonl"),
        "{\"text\":\"one\"}\n\n{\"text\":\"two\"}\n",
    )
    .unwrap();
    std::fs::write(d.path().join("b.txt"), "three\nfour\n").unwrap();
    let opts = ReadOptions {
        default_id: DefaultId::Ordinal,
        ..Default::default()
    };
    let docs = read_all(d.path(), &opts);
    assert_eq!(ids(&docs), ["1", "2", "3", "4"]);
    let texts: Vec<_> = docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three", "four"]);
}

#[test]
fn parquet_titles_and_ordinal_ids() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("docs.parquet");
    write_parquet(
        &p,
        &[Some("first"), None, Some("third"), Some("fourth")],
        Some(&[Some("x"), Some("y"), None, None]),
        Some(&[Some("T1"), Some("T2"), None, Some("T4")]),
    );
    let opts = ReadOptions {
        title_column: Some("title".into()),
        default_id: DefaultId::Ordinal,
        ..Default::default()
    };
    let docs = read_all(&p, &opts);
    // Row 1 (null text) is skipped and takes no number; null ids fall back to the ordinal.
    assert_eq!(ids(&docs), ["x", "2", "3"]);
    assert_eq!(titles(&docs), [Some("T1"), None, Some("T4")]);

    let fr = ReadOptions {
        default_id: DefaultId::FileRow,
        ..opts.clone()
    };
    let docs = read_all(&p, &fr);
    assert_eq!(ids(&docs), ["x", "docs.parquet:2", "docs.parquet:3"]);
    let back = fetch_documents(&[docs[2].source.clone(), docs[0].source.clone()], &fr).unwrap();
    assert_eq!(back[0].title.as_deref(), Some("T4"));
    assert_eq!(back[0].id, "docs.parquet:3");
    assert_eq!(back[1].title.as_deref(), Some("T1"));
    assert!(fetch_documents(&[docs[1].source.clone()], &opts).is_err());

    // No title column in the file: every title is None (not an error); no id column either.
    let q = d.path().join("bare.parquet");
    write_parquet(&q, &[Some("a"), Some("b")], None, None);
    let docs = read_all(&q, &opts);
    assert_eq!(ids(&docs), ["1", "2"]);
    assert_eq!(titles(&docs), [None, None]);
}
