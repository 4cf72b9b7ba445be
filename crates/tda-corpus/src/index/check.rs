//! Checking that a corpus is exactly the one an index was built from (file fingerprints).

use super::open::{display_paths, CorpusIndex};
use super::schema::IndexedFile;
use crate::error::{CorpusError, Result};
use crate::fingerprint::fingerprint_file;
use crate::read::CorpusSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl CorpusIndex {
    /// Check that the corpus at `corpus` is exactly what this index was built from: same files
    /// (matched by path relative to the corpus root, so a moved corpus still matches) with the
    /// same fingerprints. One-line error naming the first difference otherwise.
    pub fn check_corpus(&self, corpus: &Path) -> Result<()> {
        self.check_corpus_many(&[corpus.to_path_buf()])
    }

    pub fn check_corpus_many(&self, corpus: &[PathBuf]) -> Result<()> {
        let spec = CorpusSpec::resolve_many(corpus)?;
        let mismatch = |msg: String| CorpusError::IndexMismatch {
            index: self.dir.clone(),
            corpus: PathBuf::from(display_paths(corpus)),
            msg,
        };
        let mut indexed: HashMap<&str, Vec<&IndexedFile>> = HashMap::new();
        for f in &self.info.files {
            indexed.entry(f.rel.as_str()).or_default().push(f);
        }
        let mut not_indexed = Vec::new();
        for f in &spec.files {
            let fp = fingerprint_file(&f.path)?;
            let candidates = indexed.get_mut(f.rel.as_str());
            let pos = candidates
                .as_ref()
                .and_then(|c| c.iter().position(|x| x.fingerprint == fp));
            match (candidates, pos) {
                (Some(c), Some(i)) => {
                    c.swap_remove(i);
                }
                (Some(c), None) if !c.is_empty() => {
                    return Err(mismatch(format!(
                        "{} changed since indexing (size {} -> {} bytes or content differs); rebuild the index",
                        f.rel, c[0].fingerprint.size, fp.size
                    )))
                }
                _ => not_indexed.push(f.rel.clone()),
            }
        }
        if !not_indexed.is_empty() {
            return Err(mismatch(format!(
                "{} corpus files are not in the index (first: {}); build it from this corpus or add them",
                not_indexed.len(),
                not_indexed[0]
            )));
        }
        let extra: Vec<&str> = indexed.values().flatten().map(|f| f.rel.as_str()).collect();
        if !extra.is_empty() {
            return Err(mismatch(format!(
                "the index has {} files that are not in this corpus (first: {})",
                extra.len(),
                extra[0]
            )));
        }
        Ok(())
    }
}
