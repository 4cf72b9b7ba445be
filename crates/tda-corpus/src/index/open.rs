//! The opened index ([`CorpusIndex`]): open an existing folder, and its accessors. Building,
//! checking and searching are `impl CorpusIndex` blocks in the sibling modules.

use super::schema::{fields_of, Fields, IndexInfo, INDEX_FORMAT_VERSION, TOKENIZER};
use crate::error::{CorpusError, Result};
use std::path::{Path, PathBuf};
use tantivy::{Index, IndexReader};

/// An opened prefilter index.
pub struct CorpusIndex {
    pub(super) dir: PathBuf,
    pub(super) index: Index,
    pub(super) reader: IndexReader,
    pub(super) fields: Fields,
    pub(super) info: IndexInfo,
}

impl CorpusIndex {
    /// Open an existing index (read-only until [`CorpusIndex::add`]).
    pub fn open(dir: &Path) -> Result<CorpusIndex> {
        if !dir.join("meta.json").exists() {
            return Err(CorpusError::index(
                dir,
                "no index here (meta.json missing); build it with `tda index`",
            ));
        }
        let index = Index::open_in_dir(dir).map_err(|e| CorpusError::index(dir, e))?;
        let fields = fields_of(dir, &index.schema())?;
        let metas = index.load_metas().map_err(|e| CorpusError::index(dir, e))?;
        let payload = metas.payload.ok_or_else(|| {
            CorpusError::index(dir, "not a tda index (no build information in meta.json)")
        })?;
        let info: IndexInfo = serde_json::from_str(&payload)
            .map_err(|e| CorpusError::index(dir, format!("unreadable build information: {e}")))?;
        if info.format_version != INDEX_FORMAT_VERSION {
            return Err(CorpusError::index(
                dir,
                format!(
                    "index format {} but this tda reads format {INDEX_FORMAT_VERSION}; rebuild it",
                    info.format_version
                ),
            ));
        }
        index
            .tokenizers()
            .register(TOKENIZER, info.analyzer.analyzer());
        let reader = index.reader().map_err(|e| CorpusError::index(dir, e))?;
        Ok(CorpusIndex {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
            info,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn info(&self) -> &IndexInfo {
        &self.info
    }
    /// Number of documents in the index.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

pub(super) fn display_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
