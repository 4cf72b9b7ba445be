//! Index build / open / add / check: fingerprints, atomic writes, bad input, and candidates that
//! map back to the exact source records for every format.

mod common;
use common::*;
use tda_corpus::*;

fn opts() -> IndexOptions {
    IndexOptions {
        threads: 2,
        memory_budget: 64 << 20,
        ..Default::default()
    }
}

/// Nothing but `keep` in `dir` (no temporary folders left behind).
fn assert_only(dir: &std::path::Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    keep.sort();
    assert_eq!(names, keep);
}

#[test]
fn candidates_map_back_to_exact_records_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    std::fs::create_dir_all(root.join("txt")).unwrap();
    let jsonl = "{\"id\": \"j0\", \"text\": \"oxygen and hydrogen make water\"}\n{\"text\": \"nothing relevant\"}\r\n{\"id\": \"j2\", \"text\": \"water water everywhere\"}";
    std::fs::write(root.join("a.jsonl"), jsonl).unwrap();
    let txt = "the water cycle\nunrelated line\n\nhydrogen bonds in water\n";
    std::fs::write(root.join("txt/b.txt"), txt).unwrap();
    let texts = [
        "water molecules are polar",
        "stones",
        "heavy water uses deuterium",
    ];
    write_parquet(
        &root.join("c.parquet"),
        &texts.map(Some),
        Some(&[7, 8, 9]),
        2,
    );

    let idx_dir = dir.path().join("indexes/corpus");
    let (idx, summary) = CorpusIndex::build(&root, &idx_dir, &opts(), Progress::Hidden).unwrap();
    assert_eq!(summary.docs, 9);
    assert_eq!(summary.skipped.empty, 1);
    assert_eq!(summary.files_indexed, 3);
    assert!(summary.to_string().contains("1 skipped"));
    idx.check_corpus(&root).unwrap();

    let hits = idx.search("water", 100, Ranking::Bm25).unwrap();
    let mut ids: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["7", "9", "j0", "j2", "txt/b.txt:0", "txt/b.txt:3"]);
    let docs = idx.fetch(&hits).unwrap();
    let read = ReadOptions::default();
    for (h, d) in hits.iter().zip(&docs) {
        assert_eq!(d.id, h.doc_id);
        assert!(d.text.contains("water"), "{:?}", d.text);
        let raw = read_record_bytes(&h.source, &read).unwrap();
        match h.source.format {
            Format::Jsonl => {
                let line = jsonl.as_bytes()[h.source.byte_offset as usize..]
                    [..h.source.byte_len as usize]
                    .to_vec();
                assert_eq!(raw, line);
                let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
                assert_eq!(v["text"], d.text.as_str());
            }
            Format::Text => {
                assert_eq!(
                    &txt.as_bytes()[h.source.byte_offset as usize..][..h.source.byte_len as usize],
                    d.text.as_bytes()
                );
                assert_eq!(raw, d.text.as_bytes());
            }
            Format::Parquet => {
                assert_eq!(raw, texts[h.source.row as usize].as_bytes());
                assert_eq!(d.id, (7 + h.source.row).to_string());
            }
        }
    }
    // Windows of a fetched candidate point into its text.
    let ws = |t: &str| {
        let mut ids = Vec::new();
        let mut offs = Vec::new();
        let mut pos = 0;
        for w in t.split(' ') {
            ids.push(w.len() as u32);
            offs.push((pos, pos + w.len()));
            pos += w.len() + 1;
        }
        Ok::<_, String>((ids, offs))
    };
    let d = docs.iter().find(|d| d.id == "j0").unwrap();
    let w = windows(d, &ws, 2, 2).unwrap();
    assert_eq!(
        w.iter().map(|w| w.text(d)).collect::<Vec<_>>(),
        ["oxygen and", "hydrogen make", "water"]
    );
}

#[test]
fn stale_or_foreign_corpus_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("x.jsonl"), "{\"text\": \"alpha beta\"}\n").unwrap();
    std::fs::write(b.join("x.jsonl"), "{\"text\": \"gamma delta\"}\n").unwrap();
    let idx_dir = dir.path().join("idx");
    let (mut idx, _) = CorpusIndex::build(&a, &idx_dir, &opts(), Progress::Hidden).unwrap();
    idx.check_corpus(&a).unwrap();
    // Another corpus with the same file names.
    let e = idx.check_corpus(&b).unwrap_err();
    assert_one_line_err(&e, &["does not match", "x.jsonl changed"]);
    // A moved copy of the same corpus still matches.
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::copy(a.join("x.jsonl"), moved.join("x.jsonl")).unwrap();
    idx.check_corpus(&moved).unwrap();
    // A new shard: not indexed until added.
    std::fs::write(a.join("y.jsonl"), "{\"text\": \"epsilon\"}\n").unwrap();
    let e = idx.check_corpus(&a).unwrap_err();
    assert_one_line_err(&e, &["1 corpus files are not in the index", "y.jsonl"]);
    let s = idx
        .add(std::slice::from_ref(&a), Progress::Hidden, 1, 32 << 20)
        .unwrap();
    assert_eq!((s.docs, s.files_indexed, s.files_unchanged), (1, 1, 1));
    idx.check_corpus(&a).unwrap();
    assert_eq!(idx.search("epsilon", 5, Ranking::Bm25).unwrap().len(), 1);
    // The addition is persisted (commit payload) and re-adding is a no-op.
    let mut idx = CorpusIndex::open(&idx_dir).unwrap();
    assert_eq!(idx.info().files.len(), 2);
    assert_eq!(idx.info().docs, 2);
    assert_eq!(
        idx.add(std::slice::from_ref(&a), Progress::Hidden, 1, 32 << 20)
            .unwrap()
            .docs,
        0
    );
    assert_eq!(idx.num_docs(), 2);
    // A smaller corpus (file removed) is a mismatch too.
    std::fs::remove_file(a.join("y.jsonl")).unwrap();
    let e = idx.check_corpus(&a).unwrap_err();
    assert_one_line_err(&e, &["not in this corpus", "y.jsonl"]);
    // A changed file cannot be added over.
    std::fs::write(a.join("x.jsonl"), "{\"text\": \"alpha beta changed\"}\n").unwrap();
    let e = idx
        .add(std::slice::from_ref(&a), Progress::Hidden, 1, 32 << 20)
        .unwrap_err();
    assert_one_line_err(&e, &["changed since it was indexed"]);
    assert_eq!(CorpusIndex::open(&idx_dir).unwrap().num_docs(), 2);
}

#[test]
fn failed_build_leaves_no_index_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.jsonl"), "{\"text\": \"fine doc\"}\n").unwrap();
    let idx_dir = dir.path().join("idx");
    // A truncated parquet shard after a good file: error naming it, no index, no temp folder.
    std::fs::write(root.join("b.parquet"), b"PAR1\x00\x00garbage").unwrap();
    let e = CorpusIndex::build(&root, &idx_dir, &opts(), Progress::Hidden)
        .err()
        .unwrap();
    assert_one_line_err(&e, &["b.parquet"]);
    assert_only(dir.path(), &["c"]);
    // Build a good one, then fail an overwrite: the old index survives intact.
    std::fs::remove_file(root.join("b.parquet")).unwrap();
    CorpusIndex::build(&root, &idx_dir, &opts(), Progress::Hidden).unwrap();
    let e = CorpusIndex::build(&root, &idx_dir, &opts(), Progress::Hidden)
        .err()
        .unwrap();
    assert_one_line_err(&e, &["already exists"]);
    std::fs::write(root.join("b.parquet"), b"not parquet").unwrap();
    let over = IndexOptions {
        overwrite: true,
        ..opts()
    };
    assert!(CorpusIndex::build(&root, &idx_dir, &over, Progress::Hidden).is_err());
    assert_only(dir.path(), &["c", "idx"]);
    let idx = CorpusIndex::open(&idx_dir).unwrap();
    assert_eq!(idx.search("fine", 3, Ranking::Bm25).unwrap().len(), 1);
    // A failed add (missing column in a new parquet shard) is rolled back.
    let mut idx = idx;
    std::fs::remove_file(root.join("b.parquet")).unwrap();
    std::fs::write(
        root.join("b.jsonl"),
        "{\"text\": \"added before the failure\"}\n",
    )
    .unwrap();
    write_parquet_binary(&root.join("c.parquet"), &[b"no text column"]);
    let e = idx
        .add(std::slice::from_ref(&root), Progress::Hidden, 1, 32 << 20)
        .unwrap_err();
    assert_one_line_err(&e, &["c.parquet", "column 'text' not found"]);
    let idx = CorpusIndex::open(&idx_dir).unwrap();
    assert_eq!(idx.num_docs(), 1);
    assert_eq!(idx.info().files.len(), 1);
    assert!(idx.search("added", 3, Ranking::Bm25).unwrap().is_empty());
    // Overwrite with a good corpus replaces it.
    std::fs::remove_file(root.join("c.parquet")).unwrap();
    let (idx, _) = CorpusIndex::build(&root, &idx_dir, &over, Progress::Hidden).unwrap();
    assert_eq!(idx.num_docs(), 2);
    assert_only(dir.path(), &["c", "idx"]);
}

#[test]
fn empty_corpus_and_non_index_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.jsonl");
    std::fs::write(&p, "\n{\"text\": \"\"}\n{\"other\": 1}\n").unwrap();
    let e = CorpusIndex::build(&p, &dir.path().join("idx"), &opts(), Progress::Hidden)
        .err()
        .unwrap();
    assert_one_line_err(
        &e,
        &[
            "no documents to index",
            "empty.jsonl",
            "all 3 records were skipped",
        ],
    );
    assert_only(dir.path(), &["empty.jsonl"]);
    let e = CorpusIndex::open(dir.path()).err().unwrap();
    assert_one_line_err(&e, &["no index here"]);
    // A tantivy index that is not a tda index.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mut sb = tantivy::schema::Schema::builder();
    sb.add_text_field("title", tantivy::schema::TEXT);
    tantivy::Index::create_in_dir(&other, sb.build()).unwrap();
    let e = CorpusIndex::open(&other).err().unwrap();
    assert_one_line_err(&e, &["not a tda index"]);
}

#[test]
fn a_single_enormous_document_is_indexed_or_skipped_by_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.txt");
    // ~12 MB on one line: 2M tokens.
    let mut big = String::with_capacity(13 << 20);
    for i in 0..2_000_000u32 {
        big.push_str(["alpha ", "beta ", "gamma ", "delta "][(i % 4) as usize]);
    }
    big.push_str("needle\nsmall doc with needle\n");
    std::fs::write(&p, &big).unwrap();
    let (idx, s) =
        CorpusIndex::build(&p, &dir.path().join("i1"), &opts(), Progress::Hidden).unwrap();
    assert_eq!(s.docs, 2);
    let hits = idx.search("needle", 5, Ranking::Bm25).unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(
        hits[0].doc_id, "big.txt:1",
        "length normalisation puts the short doc first"
    );
    // With a lower limit it is skipped and counted.
    let small = IndexOptions {
        read: ReadOptions {
            max_doc_bytes: 1 << 20,
            ..Default::default()
        },
        ..opts()
    };
    let (idx, s) =
        CorpusIndex::build(&p, &dir.path().join("i2"), &small, Progress::Hidden).unwrap();
    assert_eq!((s.docs, s.skipped.too_large), (1, 1));
    assert_eq!(idx.info().skipped.too_large, 1);
}

#[test]
fn index_options_are_stored_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.parquet");
    // The text lives in `content`, ids in `id`.
    write_parquet_binary(&p, &[b"first content", b"second content"]);
    let o = IndexOptions {
        read: ReadOptions {
            text_column: "content".into(),
            id_column: None,
            ..Default::default()
        },
        ..opts()
    };
    let (idx, _) = CorpusIndex::build(&p, &dir.path().join("i"), &o, Progress::Hidden).unwrap();
    let idx2 = CorpusIndex::open(idx.dir()).unwrap();
    assert_eq!(idx2.info().read.text_column, "content");
    let hits = idx2.search("second", 5, Ranking::TfIdf).unwrap();
    assert_eq!(hits[0].doc_id, "c.parquet:1");
    assert_eq!(idx2.fetch(&hits).unwrap()[0].text, "second content");
}

#[test]
fn many_hits_across_segments_keep_id_and_source_together() {
    // 6,000 docs in 3 shards added in 2 steps (several segments, many dictionary blocks).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    std::fs::create_dir(&root).unwrap();
    let write = |name: &str, from: usize| {
        let body: String = (from..from + 2000)
            .map(|i| {
                format!(
                    "{{\"id\": \"id-{i:05}\", \"text\": \"common word {} filler{}\"}}\n",
                    "x ".repeat(i % 7),
                    i % 13
                )
            })
            .collect();
        std::fs::write(root.join(name), body).unwrap();
    };
    write("s0.jsonl", 0);
    write("s1.jsonl", 2000);
    let (mut idx, _) = CorpusIndex::build(
        &root,
        &dir.path().join("i"),
        &IndexOptions {
            merge: false,
            ..opts()
        },
        Progress::Hidden,
    )
    .unwrap();
    write("s2.jsonl", 4000);
    idx.add(std::slice::from_ref(&root), Progress::Hidden, 2, 32 << 20)
        .unwrap();
    for ranking in [Ranking::Bm25, Ranking::TfIdf] {
        let hits = idx.search("common filler3", 6000, ranking).unwrap();
        assert_eq!(hits.len(), 6000);
        for w in hits.windows(2) {
            assert!(w[0].score >= w[1].score);
        }
        for h in &hits {
            let i: u64 = h.doc_id[3..].parse().unwrap();
            assert_eq!(h.source.row, i % 2000, "{}", h.doc_id);
            assert!(h.source.path.ends_with(format!("s{}.jsonl", i / 2000)));
        }
        let docs = idx.fetch(&hits[..50]).unwrap();
        for (d, h) in docs.iter().zip(&hits) {
            assert_eq!(d.id, h.doc_id);
            assert!(d.text.starts_with("common word"));
        }
    }
}

#[test]
fn passages_are_ranked_and_map_to_their_span() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("long.jsonl");
    // One long document: the rare word sits in its middle; a short document mentions it once.
    let mut words: Vec<String> = (0..1000).map(|i| format!("filler{}", i % 50)).collect();
    words[500] = "zircon".into();
    words[501] = "zircon".into();
    let long = words.join(" ");
    let body = format!(
        "{}\n{}\n",
        serde_json::json!({"id": "long", "text": long}),
        serde_json::json!({"id": "short", "text": "one zircon among filler1 filler2 filler3 filler4"})
    );
    std::fs::write(&p, body).unwrap();
    let o = IndexOptions {
        passages: Some(Passages {
            words: 100,
            stride: 50,
        }),
        ..opts()
    };
    let (idx, s) = CorpusIndex::build(&p, &dir.path().join("i"), &o, Progress::Hidden).unwrap();
    assert_eq!(s.docs, 2);
    assert_eq!(s.entries, 19 + 1); // 1000 words, 100 per passage every 50 → 19 passages
    let hits = idx.search("zircon", 10, Ranking::Bm25).unwrap();
    // Words 500-501 fall in passages starting at 450 and 500 of the long doc.
    assert_eq!(hits.len(), 3);
    let docs = idx.fetch(&hits).unwrap();
    for (h, d) in hits.iter().zip(&docs) {
        assert!(h.text(d).contains("zircon"), "{}: {:?}", h.doc_id, h.span);
        if h.doc_id == "long" {
            assert_eq!(h.text(d).split(' ').count(), 100);
        } else {
            assert_eq!(h.span, (0, d.text.len()));
        }
    }
    let cands = idx
        .candidates("zircon", 2, &QueryOptions::default())
        .unwrap();
    assert_eq!(cands.len(), 2);
    for (h, d) in &cands {
        assert_eq!(&h.doc_id, &d.id);
        assert!(h.text(d).contains("zircon"));
    }
    let reopened = CorpusIndex::open(idx.dir()).unwrap();
    assert_eq!(
        reopened.info().passages,
        Some(Passages {
            words: 100,
            stride: 50
        })
    );
    assert_eq!(reopened.info().entries, 20);
    // Bad passage settings are an error, not a panic, and leave nothing behind.
    let bad = IndexOptions {
        passages: Some(Passages {
            words: 10,
            stride: 20,
        }),
        ..opts()
    };
    assert!(CorpusIndex::build(&p, &dir.path().join("j"), &bad, Progress::Hidden).is_err());
    assert!(!dir.path().join("j").exists());
}

#[test]
fn an_index_inside_the_corpus_folder_is_not_read_as_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.jsonl"), "{\"text\": \"some text\"}\n").unwrap();
    let idx_dir = root.join("indexes/a");
    let (idx, _) = CorpusIndex::build(root, &idx_dir, &opts(), Progress::Hidden).unwrap();
    idx.check_corpus(root).unwrap();
    let over = IndexOptions {
        overwrite: true,
        ..opts()
    };
    let (idx, s) = CorpusIndex::build(root, &idx_dir, &over, Progress::Hidden).unwrap();
    assert_eq!((s.docs, s.files_indexed), (1, 1));
    idx.check_corpus(root).unwrap();
}
