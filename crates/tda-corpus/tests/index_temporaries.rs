//! Index builds go through tda-io's hidden temporaries, and corpus walking never reads them.

use tda_corpus::*;

fn opts() -> IndexOptions {
    IndexOptions {
        threads: 1,
        memory_budget: 32 << 20,
        ..Default::default()
    }
}

#[test]
fn leftover_temporaries_in_the_corpus_folder_are_not_corpus_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.jsonl"), "{\"text\": \"real document\"}\n").unwrap();
    // What a killed index build (folder) or file write leaves beside its target.
    let tmp_dir = tda_io::sibling(&root.join("idx"), "tmp");
    std::fs::create_dir(&tmp_dir).unwrap();
    std::fs::write(tmp_dir.join("b.jsonl"), "{\"text\": \"half built\"}\n").unwrap();
    let old_dir = tda_io::sibling(&root.join("idx"), "old");
    std::fs::create_dir(&old_dir).unwrap();
    std::fs::write(old_dir.join("c.jsonl"), "{\"text\": \"old copy\"}\n").unwrap();
    let tmp_file = tda_io::sibling(&root.join("d.jsonl"), "tmp");
    std::fs::write(&tmp_file, "{\"text\": \"partial file\"}\n").unwrap();

    let spec = CorpusSpec::resolve(root).unwrap();
    let rels: Vec<_> = spec.files.iter().map(|f| f.rel.as_str()).collect();
    assert_eq!(rels, ["a.jsonl"]);

    // An index built inside the corpus folder: only the real document, no temporary of its own
    // left behind, and the corpus still matches after an overwrite.
    let idx_dir = root.join("idx");
    let (idx, s) = CorpusIndex::build(root, &idx_dir, &opts(), Progress::Hidden).unwrap();
    assert_eq!((s.docs, s.files_indexed), (1, 1));
    let over = IndexOptions {
        overwrite: true,
        ..opts()
    };
    drop(idx);
    let (idx, _) = CorpusIndex::build(root, &idx_dir, &over, Progress::Hidden).unwrap();
    idx.check_corpus(root).unwrap();
    let mut temporaries: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| tda_io::is_temporary(n))
        .collect();
    temporaries.sort();
    let mut planted: Vec<_> = [&tmp_dir, &old_dir, &tmp_file]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    planted.sort();
    assert_eq!(
        temporaries, planted,
        "the builds left no temporary of their own"
    );
}
