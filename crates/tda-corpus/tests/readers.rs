//! Readers: ids and sources round-trip to the exact record bytes for every format; bad input is
//! an error or a counted skip, never a panic.

mod common;
use common::*;
use std::collections::HashSet;
use std::io::Write;
use tda_corpus::*;

fn collect(path: &std::path::Path, opts: &ReadOptions) -> (Vec<Document>, ReadStats) {
    let mut r = open_corpus(path, opts).unwrap();
    let docs: Vec<Document> = (&mut r).map(|d| d.unwrap()).collect();
    (docs, r.stats().clone())
}

#[test]
fn jsonl_ids_and_exact_line_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.jsonl");
    let lines = [
        r#"{"id": "a1", "text": "Water is composed of hydrogen and oxygen."}"#,
        r#"{"text": "no id here, unicode: déjà vu \u00e9"}"#,
        r#"{"id": 42, "text": "numeric id", "extra": [1,2]}"#,
    ];
    // CRLF on the first line, no newline at the end.
    let content = format!("{}\r\n{}\n{}", lines[0], lines[1], lines[2]);
    std::fs::write(&p, &content).unwrap();
    let (docs, stats) = collect(&p, &ReadOptions::default());
    assert_eq!(stats.docs, 3);
    assert_eq!(
        docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["a1", "c.jsonl:1", "42"]
    );
    assert_eq!(docs[1].text, "no id here, unicode: déjà vu é");
    for (d, line) in docs.iter().zip(lines) {
        assert_eq!(
            read_record_bytes(&d.source, &ReadOptions::default()).unwrap(),
            line.as_bytes()
        );
        let start = d.source.byte_offset as usize;
        assert_eq!(
            &content.as_bytes()[start..start + d.source.byte_len as usize],
            line.as_bytes()
        );
    }
    // Fetching by source gives back the same documents.
    let srcs: Vec<SourceRef> = docs.iter().rev().map(|d| d.source.clone()).collect();
    let fetched = fetch_documents(&srcs, &ReadOptions::default()).unwrap();
    let mut rev = docs.clone();
    rev.reverse();
    assert_eq!(fetched, rev);
}

#[test]
fn text_line_and_file_modes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.txt");
    let content = "first line\n\n  \nthird — ünïcode\r\nlast";
    std::fs::write(&p, content).unwrap();
    let (docs, stats) = collect(&p, &ReadOptions::default());
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["first line", "third — ünïcode", "last"]
    );
    assert_eq!(
        docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["t.txt:0", "t.txt:3", "t.txt:4"]
    );
    assert_eq!(stats.skipped.empty, 2);
    for d in &docs {
        let s = d.source.byte_offset as usize;
        assert_eq!(
            &content.as_bytes()[s..s + d.source.byte_len as usize],
            d.text.as_bytes()
        );
    }
    let fetched = fetch_documents(
        &docs.iter().map(|d| d.source.clone()).collect::<Vec<_>>(),
        &ReadOptions::default(),
    )
    .unwrap();
    assert_eq!(fetched, docs);

    let opts = ReadOptions {
        text_mode: TextMode::File,
        ..Default::default()
    };
    let (docs, _) = collect(&p, &opts);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].id, "t.txt");
    assert_eq!(docs[0].text, content);
    assert_eq!(
        read_record_bytes(&docs[0].source, &opts).unwrap(),
        content.as_bytes()
    );
    assert_eq!(
        fetch_documents(&[docs[0].source.clone()], &opts).unwrap(),
        docs
    );
}

#[test]
fn parquet_rows_across_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shard.parquet");
    let texts: Vec<String> = (0..25)
        .map(|i| format!("document number {i} about topic {}", i % 3))
        .collect();
    let mut col: Vec<Option<&str>> = texts.iter().map(|s| Some(s.as_str())).collect();
    col[4] = None; // null → skipped
    col[7] = Some("   "); // empty → skipped
    let ids: Vec<i64> = (0..25).map(|i| 1000 + i).collect();
    write_parquet(&p, &col, Some(&ids), 6);
    let (docs, stats) = collect(&p, &ReadOptions::default());
    assert_eq!(stats.docs, 23);
    assert_eq!(stats.skipped.missing_text, 1);
    assert_eq!(stats.skipped.empty, 1);
    for d in &docs {
        let row = d.source.row as usize;
        assert_eq!(d.text, texts[row]);
        assert_eq!(d.id, (1000 + row).to_string());
        assert_eq!(
            read_record_bytes(&d.source, &ReadOptions::default()).unwrap(),
            texts[row].as_bytes()
        );
    }
    // Fetch a scattered subset, out of order and with a duplicate.
    let pick = [22usize, 3, 13, 3, 0];
    let srcs: Vec<SourceRef> = pick.iter().map(|&i| docs[i].source.clone()).collect();
    let fetched = fetch_documents(&srcs, &ReadOptions::default()).unwrap();
    for (f, &i) in fetched.iter().zip(&pick) {
        assert_eq!(f, &docs[i]);
    }
    // Without an id column the id is file:row.
    let opts = ReadOptions {
        id_column: None,
        ..Default::default()
    };
    let (docs, _) = collect(&p, &opts);
    assert_eq!(docs[0].id, "shard.parquet:0");
    assert_eq!(docs[4].id, "shard.parquet:5");
}

#[test]
fn directory_of_mixed_shards_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("b.jsonl"), "{\"text\": \"jsonl doc\"}\n").unwrap();
    std::fs::write(root.join("sub/a.txt"), "text doc one\ntext doc two\n").unwrap();
    write_parquet(&root.join("a.parquet"), &[Some("parquet doc")], None, 10);
    std::fs::write(root.join("notes.csv"), "ignored").unwrap();
    std::fs::write(root.join(".hidden.jsonl"), "{\"text\": \"hidden\"}\n").unwrap();
    let spec = CorpusSpec::resolve(root).unwrap();
    assert_eq!(
        spec.files
            .iter()
            .map(|f| f.rel.as_str())
            .collect::<Vec<_>>(),
        ["a.parquet", "b.jsonl", "sub/a.txt"]
    );
    assert_eq!(spec.ignored.len(), 1);
    let (docs, _) = collect(root, &ReadOptions::default());
    assert_eq!(
        docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["a.parquet:0", "b.jsonl:0", "sub/a.txt:0", "sub/a.txt:1"]
    );
    let ids: HashSet<String> = ["b.jsonl:0".to_string(), "sub/a.txt:1".to_string()].into();
    let got = fetch_by_ids(root, &ReadOptions::default(), &ids).unwrap();
    assert_eq!(
        got.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["jsonl doc", "text doc two"]
    );
    // A list of files, in the order given.
    let many = CorpusSpec::resolve_many(&[root.join("sub/a.txt"), root.join("b.jsonl")]).unwrap();
    let docs: Vec<_> = CorpusReader::new(many, ReadOptions::default())
        .map(|d| d.unwrap().id)
        .collect();
    assert_eq!(docs, ["a.txt:0", "a.txt:1", "b.jsonl:0"]);
}

#[test]
fn bad_records_are_skipped_and_counted_or_errors_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(b"{\"text\": \"good one\"}\n").unwrap();
    f.write_all(b"{\"text\": \"bad \xff\xfe bytes\"}\n")
        .unwrap(); // non-UTF-8
    f.write_all(b"not json at all\n").unwrap();
    f.write_all(b"[1, 2]\n").unwrap(); // JSON, not an object
    f.write_all(b"{\"body\": \"no text field\"}\n").unwrap();
    f.write_all(b"{\"text\": null}\n").unwrap();
    f.write_all(b"{\"text\": \"\"}\n").unwrap();
    f.write_all(b"\n").unwrap();
    let huge = format!("{{\"text\": \"{}\"}}\n", "x".repeat(5000));
    f.write_all(huge.as_bytes()).unwrap();
    f.write_all(b"{\"text\": \"good two\"}").unwrap();
    drop(f);
    let opts = ReadOptions {
        max_doc_bytes: 1000,
        ..Default::default()
    };
    let (docs, stats) = collect(&p, &opts);
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["good one", "good two"]
    );
    assert_eq!(docs[1].source.row, 9);
    let s = &stats.skipped;
    assert_eq!(
        (
            s.invalid_utf8,
            s.bad_json,
            s.missing_text,
            s.empty,
            s.too_large
        ),
        (1, 2, 2, 2, 1)
    );
    assert_eq!(s.total(), 8);
    assert!(s.to_string().starts_with("8 skipped"));

    let strict = ReadOptions {
        strict: true,
        ..opts
    };
    let mut r = open_corpus(&p, &strict).unwrap();
    assert!(r.next().unwrap().is_ok());
    let e = r.next().unwrap().unwrap_err();
    assert_one_line_err(&e, &["bad.jsonl", "line 2", "invalid UTF-8"]);
}

#[test]
fn text_with_non_utf8_line_and_enormous_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.txt");
    let mut bytes = b"ok line\n\xc3\x28 invalid\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'y', 3 << 20)); // one 3 MiB line, never buffered whole
    bytes.extend(b"\nafter the giant\n");
    std::fs::write(&p, &bytes).unwrap();
    let opts = ReadOptions {
        max_doc_bytes: 1 << 20,
        ..Default::default()
    };
    let (docs, stats) = collect(&p, &opts);
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["ok line", "after the giant"]
    );
    assert_eq!(docs[1].source.row, 3);
    assert_eq!(
        &bytes[docs[1].source.byte_offset as usize..][..15],
        b"after the giant"
    );
    assert_eq!(
        (stats.skipped.invalid_utf8, stats.skipped.too_large),
        (1, 1)
    );
    // File mode: a file over the limit is skipped, not loaded.
    let fm = ReadOptions {
        text_mode: TextMode::File,
        ..opts
    };
    let (docs, stats) = collect(&p, &fm);
    assert!(docs.is_empty());
    assert_eq!(stats.skipped.too_large, 1);
}

#[test]
fn parquet_bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated: a valid file cut in half (footer lost).
    let good = dir.path().join("good.parquet");
    let texts: Vec<String> = (0..200).map(|i| format!("row {i} text")).collect();
    write_parquet(
        &good,
        &texts.iter().map(|s| Some(s.as_str())).collect::<Vec<_>>(),
        None,
        50,
    );
    let bytes = std::fs::read(&good).unwrap();
    let trunc = dir.path().join("trunc.parquet");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_corpus(&trunc, &ReadOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert_one_line_err(&e, &["trunc.parquet", "parquet"]);
    // Not parquet at all.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"hello").unwrap();
    let e = open_corpus(&junk, &ReadOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert_one_line_err(&e, &["junk.parquet"]);
    // Corrupted data pages, intact footer: an error from the batch reader, no panic.
    let mut corrupt = bytes.clone();
    for b in corrupt.iter_mut().skip(4).take(bytes.len() / 3) {
        *b ^= 0x5a;
    }
    let cp = dir.path().join("corrupt.parquet");
    std::fs::write(&cp, &corrupt).unwrap();
    let results: Vec<_> = open_corpus(&cp, &ReadOptions::default()).unwrap().collect();
    assert!(
        results.iter().any(|r| r.is_err()),
        "corruption not detected"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_one_line_err(r, &["corrupt.parquet"]);
    }
    // Missing text column.
    let opts = ReadOptions {
        text_column: "content".into(),
        ..Default::default()
    };
    let e = open_corpus(&good, &opts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert_one_line_err(&e, &["good.parquet", "column 'content' not found", "text"]);
    // Wrong type.
    let ints = dir.path().join("ints.parquet");
    write_parquet_int_text(&ints);
    let e = open_corpus(&ints, &ReadOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert_one_line_err(&e, &["ints.parquet", "Int64"]);
    // Binary column with a non-UTF-8 value: that row skipped and counted.
    let bin = dir.path().join("bin.parquet");
    write_parquet_binary(&bin, &[b"fine", b"\xff\xfe", b"also fine"]);
    let (docs, stats) = collect(&bin, &opts);
    assert_eq!(
        docs.iter().map(|d| d.source.row).collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(stats.skipped.invalid_utf8, 1);
}

#[test]
fn unknown_paths_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_corpus(&dir.path().join("nope.jsonl"), &ReadOptions::default())
        .err()
        .unwrap();
    assert_one_line_err(&e, &["nope.jsonl"]);
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "a,b").unwrap();
    let e = open_corpus(&csv, &ReadOptions::default()).err().unwrap();
    assert_one_line_err(&e, &["x.csv", "unsupported"]);
    let e = open_corpus(dir.path(), &ReadOptions::default())
        .err()
        .unwrap();
    assert_one_line_err(&e, &["no corpus files"]);
}
