//! The opened index ([`CorpusIndex`]): open an existing folder, and its accessors. Building,
//! checking and searching are `impl CorpusIndex` blocks in the sibling modules.

use super::schema::{fields_of, Fields, IndexInfo, INDEX_FORMAT_VERSION, TOKENIZER};
use crate::error::{CorpusError, Result};
use std::collections::HashSet;
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
        check_field_names(dir)?;
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
        check_doc_counts(dir, &reader, &fields)?;
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

/// tantivy panics (instead of erroring) on a schema that names a field twice, even when the
/// JSON after it is broken: check that `meta.json` is JSON and has no such schema first.
/// Anything else wrong with the file is left to tantivy to report.
fn check_field_names(dir: &Path) -> Result<()> {
    let path = dir.join("meta.json");
    let text = std::fs::read(&path).map_err(|e| CorpusError::io(&path, e))?;
    let meta = serde_json::from_slice::<serde_json::Value>(&text)
        .map_err(|e| CorpusError::index(dir, format!("meta.json is not valid JSON: {e}")))?;
    let fields = meta.get("schema").and_then(|s| s.as_array());
    let mut seen = HashSet::new();
    for name in fields
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("name")?.as_str())
    {
        if !seen.insert(name) {
            return Err(CorpusError::index(
                dir,
                format!("meta.json: the schema has two fields named '{name}'"),
            ));
        }
    }
    Ok(())
}

/// Each segment's `max_doc` comes from `meta.json`, and tantivy trusts it (search allocates per
/// document): it must be the number of documents the segment's files hold (one field norm each).
fn check_doc_counts(dir: &Path, reader: &IndexReader, fields: &Fields) -> Result<()> {
    for (i, seg) in reader.searcher().segment_readers().iter().enumerate() {
        let norms = seg
            .get_fieldnorms_reader(fields.body)
            .map_err(|e| CorpusError::index(dir, e))?;
        if norms.num_docs() != seg.max_doc() {
            return Err(CorpusError::index(
                dir,
                format!(
                    "meta.json gives segment {i} {} documents but its files hold {}",
                    seg.max_doc(),
                    norms.num_docs()
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn display_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
