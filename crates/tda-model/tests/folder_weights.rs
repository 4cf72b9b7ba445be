//! The lazy folder reader (`FolderWeights`, what `load_folder` uses so that loading holds the
//! model once) gives exactly the tensors of the eager reader (`read_folder_weights`), for a
//! sharded f16 folder and a single-file f32 one; an absent name is `None`.

use std::path::PathBuf;

use tda_model::hf::{read_folder_weights, FolderWeights};
use tda_model::WeightSource;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

#[test]
fn lazy_reader_equals_eager_reader() {
    for name in ["gpt2", "llama", "rag"] {
        let dir = fixture(name);
        let eager = read_folder_weights(&dir).unwrap();
        let lazy = FolderWeights::open(&dir).unwrap();
        assert!(!eager.is_empty());
        for (k, t) in &eager {
            let got = lazy
                .fetch(k)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {k} missing"));
            assert_eq!(&got, t, "{name}: {k}");
            // Taken twice (the file pages were released after the first): the same bytes.
            assert_eq!(&lazy.fetch(k).unwrap().unwrap(), t, "{name}: {k} again");
        }
        assert!(lazy.fetch("no.such.tensor").unwrap().is_none());
    }
}
