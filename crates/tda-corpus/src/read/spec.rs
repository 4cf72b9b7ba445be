//! Resolving corpus paths (a file, a list, or directories of shards) into an ordered file list.

use crate::doc::Format;
use crate::error::{CorpusError, Result};
use std::path::{Path, PathBuf};

/// One file of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusFile {
    /// Absolute path.
    pub path: PathBuf,
    /// Path relative to the corpus root, `/`-separated (the file name for a single file).
    pub rel: String,
    pub format: Format,
    pub size: u64,
}

/// The resolved list of files making a corpus: a single file, a list of files, or directories
/// of shards (walked recursively, sorted; hidden entries — among them tda-io's temporaries —,
/// unknown extensions and tantivy index folders ignored).
#[derive(Clone, Debug, Default)]
pub struct CorpusSpec {
    pub files: Vec<CorpusFile>,
    /// Files in the given directories that were ignored (unknown extension).
    pub ignored: Vec<PathBuf>,
}

impl CorpusSpec {
    /// Resolve one path (file or directory).
    pub fn resolve(path: &Path) -> Result<CorpusSpec> {
        Self::resolve_many(std::slice::from_ref(&path.to_path_buf()))
    }

    /// Resolve several paths, concatenated in the order given.
    pub fn resolve_many(paths: &[PathBuf]) -> Result<CorpusSpec> {
        let mut spec = CorpusSpec::default();
        for p in paths {
            let meta = std::fs::metadata(p).map_err(|e| CorpusError::io(p, e))?;
            let abs = std::fs::canonicalize(p).map_err(|e| CorpusError::io(p, e))?;
            if meta.is_dir() {
                let mut found = Vec::new();
                walk(&abs, &abs, &mut found, &mut spec.ignored)?;
                found.sort_by(|a: &CorpusFile, b| a.rel.cmp(&b.rel));
                if found.is_empty() {
                    return Err(CorpusError::NoFiles { path: p.clone() });
                }
                spec.files.extend(found);
            } else {
                let format =
                    Format::from_path(p).ok_or(CorpusError::UnknownFormat { path: p.clone() })?;
                let rel = abs
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                spec.files.push(CorpusFile {
                    path: abs,
                    rel,
                    format,
                    size: meta.len(),
                });
            }
        }
        if spec.files.is_empty() {
            return Err(CorpusError::InvalidArgument("no corpus path given".into()));
        }
        Ok(spec)
    }

    /// Total size in bytes of the corpus files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<CorpusFile>,
    ignored: &mut Vec<PathBuf>,
) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| CorpusError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| CorpusError::io(dir, e))?;
        let path = entry.path();
        // Hidden entries are not corpus data; that includes tda-io's temporaries (`.x.tmp-…`,
        // `.x.old-…`: an index build or swap in progress, or left by a killed one).
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || tda_io::is_temporary(&name) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| CorpusError::io(&path, e))?;
        if meta.is_dir() {
            // A tantivy index folder (e.g. `indexes/` inside the corpus) is not corpus data.
            if path.join(".managed.json").exists() {
                ignored.push(path);
                continue;
            }
            walk(root, &path, out, ignored)?;
        } else if let Some(format) = Format::from_path(&path) {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(CorpusFile {
                path,
                rel,
                format,
                size: meta.len(),
            });
        } else {
            ignored.push(path);
        }
    }
    Ok(())
}
