//! Building an index from a corpus (in a temporary folder swapped into place) and adding new
//! corpus files to an existing one (one commit, or a rollback).

use super::open::{display_paths, CorpusIndex};
use super::schema::AnalyzerSettings;
use super::schema::{
    schema, Fields, IndexInfo, IndexedFile, Passages, INDEX_FORMAT_VERSION, TOKENIZER,
};
use crate::error::{CorpusError, Result};
use crate::fingerprint::fingerprint_file;
use crate::read::{CorpusFile, CorpusReader, CorpusSpec, ReadOptions, SkipCounts};
use crate::window::passage_spans;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tantivy::indexer::IndexWriterOptions;
use tantivy::{Index, IndexWriter, TantivyDocument};

/// Options of [`CorpusIndex::build`].
#[derive(Clone, Debug)]
pub struct IndexOptions {
    pub analyzer: AnalyzerSettings,
    pub read: ReadOptions,
    /// Indexing threads (tantivy workers).
    pub threads: usize,
    /// Total indexing memory budget in bytes (split over threads, ≥ 15 MB each). Bounds RSS.
    pub memory_budget: usize,
    /// Merge all segments into one after the build (faster queries, slower build).
    pub merge: bool,
    /// Replace an existing index at the target folder.
    pub overwrite: bool,
    /// Split long documents into passages (`None`: one entry per document).
    pub passages: Option<Passages>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            analyzer: AnalyzerSettings::default(),
            read: ReadOptions::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            memory_budget: 256 << 20,
            merge: true,
            overwrite: false,
            passages: None,
        }
    }
}

/// Whether to draw a progress bar on stderr while indexing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Hidden,
    Bar,
}

/// What one build or add did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BuildSummary {
    pub files_indexed: usize,
    /// Files already in the index with the same fingerprint (add only).
    pub files_unchanged: usize,
    pub docs: u64,
    /// Index entries written (= docs unless passages are used).
    pub entries: u64,
    pub text_bytes: u64,
    pub file_bytes: u64,
    pub skipped: SkipCounts,
    pub seconds: f64,
}

impl BuildSummary {
    pub fn docs_per_s(&self) -> f64 {
        self.docs as f64 / self.seconds.max(1e-9)
    }
    /// Corpus file bytes read per second, in MB (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.file_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

impl std::fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "indexed {} docs ({:.1} MB of text) from {} files in {:.1} s: {:.0} docs/s, {:.1} MB/s; {}",
            self.docs,
            self.text_bytes as f64 / 1e6,
            self.files_indexed,
            self.seconds,
            self.docs_per_s(),
            self.mb_per_s(),
            self.skipped
        )?;
        if self.files_unchanged > 0 {
            write!(f, "; {} files already indexed", self.files_unchanged)?;
        }
        Ok(())
    }
}

impl CorpusIndex {
    /// Build a new index of the corpus at `corpus` (file or directory) into `dir`.
    pub fn build(
        corpus: &Path,
        dir: &Path,
        opts: &IndexOptions,
        progress: Progress,
    ) -> Result<(CorpusIndex, BuildSummary)> {
        Self::build_many(&[corpus.to_path_buf()], dir, opts, progress)
    }

    /// Build from several corpus paths (files or directories), concatenated.
    pub fn build_many(
        corpus: &[PathBuf],
        dir: &Path,
        opts: &IndexOptions,
        progress: Progress,
    ) -> Result<(CorpusIndex, BuildSummary)> {
        let spec = CorpusSpec::resolve_many(corpus)?;
        // First put back an index that a killed replacement left aside (`.old-`), so that
        // "already exists" below sees it.
        tda_io::remove_stale(dir);
        if dir.exists() && !opts.overwrite {
            return Err(CorpusError::index(
                dir,
                "already exists (rebuild with --overwrite, or --add new files)",
            ));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| CorpusError::io(&parent, e))?;
        if dir.file_name().is_none() {
            return Err(CorpusError::InvalidArgument(format!(
                "bad index folder {}",
                dir.display()
            )));
        }
        // A unique hidden sibling (`.<name>.tmp-…`), skipped by corpus walking and by tda-io.
        let tmp = tda_io::sibling(dir, "tmp");
        let guard = RemoveOnDrop(Some(tmp.clone()));
        std::fs::create_dir(&tmp).map_err(|e| CorpusError::io(&tmp, e))?;

        let (schema, fields) = schema();
        let index = Index::create_in_dir(&tmp, schema).map_err(|e| CorpusError::index(&tmp, e))?;
        index
            .tokenizers()
            .register(TOKENIZER, opts.analyzer.analyzer());
        let mut info = IndexInfo {
            format_version: INDEX_FORMAT_VERSION,
            analyzer: opts.analyzer.clone(),
            read: opts.read.clone(),
            files: Vec::new(),
            docs: 0,
            text_bytes: 0,
            skipped: SkipCounts::default(),
            passages: opts.passages,
            entries: 0,
        };
        let summary = ingest(&index, &tmp, fields, &mut info, spec.files, opts, progress)?;
        if info.docs == 0 {
            return Err(CorpusError::index(
                dir,
                format!(
                    "no documents to index in {}: {}",
                    display_paths(corpus),
                    crate::ReadStats {
                        skipped: info.skipped.clone(),
                        ..Default::default()
                    }
                    .why_no_documents(&opts.read)
                ),
            ));
        }
        drop(index);
        // fsync every file, then swap into place: the old index (if any) is moved aside and
        // removed only once the new one is there (put back if the second rename fails).
        tda_io::sync_tree(&tmp).map_err(CorpusError::Write)?;
        tda_io::replace_dir(&tmp, dir).map_err(CorpusError::Write)?;
        std::mem::forget(guard);
        Ok((CorpusIndex::open(dir)?, summary))
    }

    /// Add the files of `corpus` not yet in the index. A file already indexed (same absolute path)
    /// is skipped when its fingerprint is unchanged and is an error when it changed (rebuild).
    /// Read options and analyzer are those stored in the index.
    pub fn add(
        &mut self,
        corpus: &[PathBuf],
        progress: Progress,
        threads: usize,
        memory_budget: usize,
    ) -> Result<BuildSummary> {
        let spec = CorpusSpec::resolve_many(corpus)?;
        let known: HashMap<&Path, &IndexedFile> = self
            .info
            .files
            .iter()
            .map(|f| (f.path.as_path(), f))
            .collect();
        let mut new_files = Vec::new();
        let mut unchanged = 0;
        for f in spec.files {
            match known.get(f.path.as_path()) {
                Some(old) => {
                    let fp = fingerprint_file(&f.path)?;
                    if fp != old.fingerprint {
                        return Err(CorpusError::IndexMismatch {
                            index: self.dir.clone(),
                            corpus: f.path.clone(),
                            msg: "file changed since it was indexed; rebuild the index".into(),
                        });
                    }
                    unchanged += 1;
                }
                None => new_files.push(f),
            }
        }
        let opts = IndexOptions {
            analyzer: self.info.analyzer.clone(),
            read: self.info.read.clone(),
            threads,
            memory_budget,
            merge: false,
            overwrite: false,
            passages: self.info.passages,
        };
        let mut info = self.info.clone();
        let mut summary = if new_files.is_empty() {
            BuildSummary::default()
        } else {
            ingest(
                &self.index,
                &self.dir,
                self.fields,
                &mut info,
                new_files,
                &opts,
                progress,
            )?
        };
        summary.files_unchanged = unchanged;
        self.info = info;
        self.reader
            .reload()
            .map_err(|e| CorpusError::index(&self.dir, e))?;
        Ok(summary)
    }
}

struct RemoveOnDrop(Option<PathBuf>);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Stream `files` into the index and commit once, with `info` updated as the payload.
/// On any error the writer rolls back (nothing of this call is committed).
fn ingest(
    index: &Index,
    dir: &Path,
    fields: Fields,
    info: &mut IndexInfo,
    files: Vec<CorpusFile>,
    opts: &IndexOptions,
    progress: Progress,
) -> Result<BuildSummary> {
    let t0 = Instant::now();
    let threads = opts.threads.max(1);
    let per_thread = (opts.memory_budget / threads).clamp(15 << 20, 4000 << 20);
    let wopts = IndexWriterOptions::builder()
        .memory_budget_per_thread(per_thread)
        .num_worker_threads(threads)
        .num_merge_threads(threads)
        .build();
    let mut writer: IndexWriter = index
        .writer_with_options(wopts)
        .map_err(|e| CorpusError::index(dir, e))?;
    let first_file = info.files.len();
    let mut new_info = info.clone();
    for f in &files {
        new_info.files.push(IndexedFile {
            rel: f.rel.clone(),
            path: f.path.clone(),
            format: f.format,
            fingerprint: fingerprint_file(&f.path)?,
            docs: 0,
        });
    }
    let spec = CorpusSpec {
        files,
        ignored: Vec::new(),
    };
    let total_bytes = spec.total_bytes();
    let bar = match progress {
        Progress::Bar => {
            let b = indicatif::ProgressBar::new(total_bytes);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        }
        Progress::Hidden => indicatif::ProgressBar::hidden(),
    };
    let mut reader = CorpusReader::new(spec, opts.read.clone());
    let mut entries = 0u64;
    let result = (|| -> Result<()> {
        while let Some(doc) = reader.next() {
            let doc = doc?;
            let file_idx = first_file + reader.current_file();
            new_info.files[file_idx].docs += 1;
            let spans = match opts.passages {
                Some(p) => passage_spans(&doc.text, p.words, p.stride)?,
                None => vec![(0, doc.text.len())],
            };
            for (start, end) in spans {
                let mut d = TantivyDocument::default();
                d.add_text(fields.body, &doc.text[start..end]);
                d.add_text(fields.doc_id, &doc.id);
                d.add_u64(fields.file, file_idx as u64);
                d.add_u64(fields.row, doc.source.row);
                d.add_u64(fields.offset, doc.source.byte_offset);
                d.add_u64(fields.len, doc.source.byte_len);
                d.add_u64(fields.span_start, start as u64);
                d.add_u64(fields.span_end, end as u64);
                writer
                    .add_document(d)
                    .map_err(|e| CorpusError::index(dir, e))?;
                entries += 1;
            }
            let n = reader.stats().docs;
            if n.is_multiple_of(1024) {
                bar.set_position(reader.bytes_done());
                let secs = t0.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{n} docs, {:.0} docs/s", n as f64 / secs));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = writer.rollback();
        bar.abandon();
        return Err(e);
    }
    let stats = reader.stats().clone();
    new_info.docs += stats.docs;
    new_info.entries += entries;
    new_info.text_bytes += stats.text_bytes;
    new_info.skipped.add(&stats.skipped);
    let payload = serde_json::to_string(&new_info).map_err(|e| CorpusError::index(dir, e))?;
    let commit = (|| -> tantivy::Result<()> {
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        if opts.merge {
            let ids = index.searchable_segment_ids()?;
            if ids.len() > 1 {
                writer.merge(&ids).wait()?;
            }
        }
        writer.wait_merging_threads()
    })();
    bar.finish_and_clear();
    commit.map_err(|e| CorpusError::index(dir, e))?;
    let seconds = t0.elapsed().as_secs_f64();
    *info = new_info;
    Ok(BuildSummary {
        files_indexed: stats.files_done,
        files_unchanged: 0,
        docs: stats.docs,
        entries,
        text_bytes: stats.text_bytes,
        file_bytes: total_bytes,
        skipped: stats.skipped,
        seconds,
    })
}
