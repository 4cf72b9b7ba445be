//! Crash-safe writes: the one way every `tda` artifact reaches the disk.
//!
//! - [`write_file`] / [`write_file_with`]: a file appears at its path whole or not at all.
//! - [`write_dir`]: a multi-file artifact (model folder, factors + `fit.json`, index) appears
//!   as a whole folder or not at all.
//!
//! Invariants a caller can rely on:
//! - The temporary file or folder lives in the target's own folder (so `rename` is atomic) and has
//!   a unique hidden name `.<name>.tmp-<pid>-<n>` — two writers never share one, even in one process.
//! - File contents are `fsync`ed before the rename, and the parent folder after it, so after a
//!   power loss or `kill -9` a reader sees the old artifact, the new one, or nothing — never a prefix.
//! - On any error the temporary is removed and the target is left as it was.
//! - Replacing an existing folder is two renames (old → `.old`, new → target): between them the
//!   target is briefly absent (a reader gets "not found", never a mixture); the old copy is then
//!   removed. Leftover `.tmp-`/`.old-` entries from a killed writer are hidden and ignored by readers,
//!   and removed by the next write of the same target ([`remove_stale`]: only those of processes
//!   that no longer run).
//!
//! - [`sort_safetensors_header`]: the same tensors and metadata give the same file bytes (the
//!   `safetensors` crate writes its metadata from a `HashMap`, in a different order every run).
//!
//! Errors are [`std::io::Error`]s whose message names the path, so callers can wrap them in their
//! own error type without losing the file name.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique hidden sibling of `target`: `.<name>.<kind>-<pid>-<n>` in the same folder.
pub fn sibling(target: &Path, kind: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let file = format!(".{name}.{kind}-{}-{n}-{nanos}", std::process::id());
    match parent_of(target) {
        Some(p) => p.join(file),
        None => PathBuf::from(file),
    }
}

/// Removes the temporaries (`.<name>.tmp-<pid>-…`, `.<name>.old-<pid>-…`) that writers of `target`
/// left behind when they were killed: only those whose process no longer runs (checked in
/// `/proc`; where there is no `/proc`, nothing is removed). A writer killed between the two
/// renames of [`replace_dir`] leaves the target absent and the previous artifact as `.old-`: that
/// one is put back instead. Best effort: errors are ignored.
pub fn remove_stale(target: &Path) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let dir = parent_of(target).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, rest)) = ["tmp", "old"].iter().find_map(|kind| {
            entry_name
                .strip_prefix(&format!(".{name}.{kind}-"))
                .map(|rest| (*kind, rest))
        }) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        if kind == "old" && !target.exists() && std::fs::rename(&path, target).is_ok() {
            continue;
        }
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// True for names this crate gives its temporaries (`.x.tmp-…`, `.x.old-…`): readers skip them.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-"))
}

fn parent_of(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// An io error whose message starts with the path.
pub fn io_error(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `fsync` a folder so that a rename inside it survives a crash (best effort where folders cannot
/// be opened, e.g. some network file systems).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// What an output path will hold, for [`check_writable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    File,
    Folder,
}

/// Checks, before a long job starts, that its output can be written at `path`: not a folder where
/// a file goes (or the reverse), and the nearest existing ancestor is a folder in which a file can
/// be created (probed with a temporary that is removed). Creates nothing that stays.
pub fn check_writable(path: &Path, what: Output) -> std::io::Result<()> {
    let invalid = |p: &Path, msg: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {msg}", p.display()),
        )
    };
    match (what, path.exists()) {
        (Output::File, true) if path.is_dir() => {
            return Err(invalid(
                path,
                "is a folder; give a file path for this output",
            ))
        }
        (Output::Folder, true) if !path.is_dir() => {
            return Err(invalid(
                path,
                "is a file; give a folder path for this output",
            ))
        }
        _ => {}
    }
    let mut dir = parent_of(path).unwrap_or(Path::new("."));
    while !dir.exists() {
        dir = parent_of(dir).unwrap_or(Path::new("."));
    }
    if !dir.is_dir() {
        return Err(invalid(
            dir,
            "is a file, so nothing can be written below it",
        ));
    }
    // A probe left by a killed run is removed first (the kill test found one).
    let probe_name = dir.join("write-probe");
    remove_stale(&probe_name);
    let probe = sibling(&probe_name, "tmp");
    File::create(&probe).map_err(|e| io_error(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn ensure_parent(path: &Path) -> std::io::Result<()> {
    if let Some(p) = parent_of(path) {
        std::fs::create_dir_all(p).map_err(|e| io_error(p, e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (creates the parent folder).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file_with(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| io_error(tmp, e))?;
        f.write_all(bytes).map_err(|e| io_error(tmp, e))
    })
}

/// Atomic write through a callback that writes the whole file at the temporary path it is given
/// (any writer: `File`, safetensors' `serialize_to_file`, an arrow writer…). The callback's error
/// type only needs to absorb io errors. Creates the parent folder.
pub fn write_file_with<T, E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    ensure_parent(path)?;
    remove_stale(path);
    let tmp = sibling(path, "tmp");
    let result = (|| {
        let value = write(&tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        Ok(value)
    })();
    match result {
        Ok(v) => {
            if let Some(p) = parent_of(path) {
                sync_dir(p);
            } else {
                sync_dir(Path::new("."));
            }
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Builds a folder artifact atomically: `build` fills a fresh temporary folder beside `dir`; every
/// file in it is then `fsync`ed and the folder renamed to `dir`, replacing any previous `dir`
/// (see the crate doc for the replacement window). `build` may move entries of the old `dir` into
/// the new one (e.g. a model folder keeps its `checkpoints/`). On error nothing at `dir` changes.
pub fn write_dir<T, E: From<std::io::Error>>(
    dir: &Path,
    build: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    if dir.file_name().is_none() || is_current_dir(dir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: an artifact folder is replaced as a whole; give a dedicated folder, not the current one",
                dir.display()
            ),
        )
        .into());
    }
    ensure_parent(dir)?;
    remove_stale(dir);
    let tmp = sibling(dir, "tmp");
    std::fs::create_dir(&tmp).map_err(|e| io_error(&tmp, e))?;
    let result = (|| {
        let value = build(&tmp)?;
        sync_tree(&tmp)?;
        replace_dir(&tmp, dir)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn is_current_dir(dir: &Path) -> bool {
    match (std::fs::canonicalize(dir), std::env::current_dir()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Moves every entry of the folder `old` that `new` does not have into `new` (skipping this crate's
/// temporaries); for use inside a [`write_dir`] build, so that replacing an artifact folder keeps
/// what else the user keeps there (e.g. a model folder's `checkpoints/`). A missing `old` is fine.
pub fn carry_over(old: &Path, new: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(old) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(old, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(old, e))?;
        let name = entry.file_name();
        if is_temporary(&name.to_string_lossy()) {
            continue;
        }
        let target = new.join(&name);
        if !target.exists() {
            std::fs::rename(entry.path(), &target).map_err(|e| io_error(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Moves a finished folder `from` to `to`, replacing an existing `to`; fsyncs the parent.
pub fn replace_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        let old = sibling(to, "old");
        std::fs::rename(to, &old).map_err(|e| io_error(to, e))?;
        if let Err(e) = std::fs::rename(from, to) {
            let _ = std::fs::rename(&old, to); // put the old artifact back
            return Err(io_error(to, e));
        }
        std::fs::remove_dir_all(&old).map_err(|e| io_error(&old, e))?;
    } else {
        std::fs::rename(from, to).map_err(|e| io_error(to, e))?;
    }
    sync_dir(parent_of(to).unwrap_or(Path::new(".")));
    Ok(())
}

/// `fsync` every file below `dir`, then the folders themselves.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| io_error(&path, e))?;
        if ft.is_dir() {
            sync_tree(&path)?;
        } else if ft.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error(&path, e))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Rewrites the JSON header of the safetensors file at `path` with every object's keys sorted,
/// in place. `safetensors` serialises the `__metadata__` map from a `HashMap`, whose order changes
/// from process to process, so without this two writes of identical tensors differ in bytes (and
/// so in any fingerprint of the file). The header keeps its length (the same keys and values,
/// reordered; the alignment padding stays spaces) and the tensor data is not touched. Call it on
/// the temporary, inside [`write_file_with`], before the rename.
pub fn sort_safetensors_header(path: &Path) -> std::io::Result<()> {
    let invalid = |msg: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {msg}", path.display()),
        )
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| io_error(path, e))?;
    let n = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .filter(|&n| n <= 100 << 20)
        .ok_or_else(|| invalid("safetensors header length out of range".into()))?;
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).map_err(|e| io_error(path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| invalid(format!("safetensors header is not JSON: {e}")))?;
    let mut sorted = serde_json::to_vec(&sort_keys(value)).expect("a JSON value serialises");
    if sorted.len() > n {
        return Err(invalid("sorted safetensors header is longer".into()));
    }
    sorted.resize(n, b' ');
    if sorted != header {
        f.seek(SeekFrom::Start(8))
            .and_then(|_| f.write_all(&sorted))
            .map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// `value` with the keys of every object in sorted order (whatever serde_json's map type).
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_probe_left_by_a_killed_run_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // pid 4294967 is above Linux's pid_max: no such process.
        let left = tmp.path().join(".write-probe.tmp-4294967-0-1");
        std::fs::write(&left, b"").unwrap();
        check_writable(&tmp.path().join("out.json"), Output::File).unwrap();
        let rest: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("factors");
        // pid 4294967 is above Linux's pid_max: no such process.
        let dead_tmp = tmp.path().join(".factors.tmp-4294967-0-1");
        let live_tmp = tmp
            .path()
            .join(format!(".factors.tmp-{}-9-9", std::process::id()));
        let other = tmp.path().join(".model.tmp-4294967-0-1");
        let dead_old = tmp.path().join(".factors.old-4294967-0-2");
        for d in [&dead_tmp, &live_tmp, &other, &dead_old] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dead_old.join("fit.json"), "old").unwrap();
        remove_stale(&target);
        if Path::new("/proc/self").exists() {
            assert!(!dead_tmp.exists());
            // The killed replacement's previous artifact is back in place.
            assert_eq!(
                std::fs::read_to_string(target.join("fit.json")).unwrap(),
                "old"
            );
            assert!(!dead_old.exists());
        }
        assert!(live_tmp.exists(), "a running writer's temporary is kept");
        assert!(other.exists(), "another target's temporary is kept");
        // The next write removes the stale ones and lands whole.
        write_dir(&target, |d: &Path| write_file(&d.join("fit.json"), b"new")).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("fit.json")).unwrap(),
            "new"
        );
    }

    #[test]
    fn file_appears_whole_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/out.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary left behind");
    }

    #[test]
    fn failed_write_leaves_target_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        write_file(&p, b"old").unwrap();
        let r: std::io::Result<()> = write_file_with(&p, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(std::io::Error::other("writer failed"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dir_appears_whole_replaces_and_rolls_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("model");
        write_dir(&dir, |t| std::fs::write(t.join("a"), b"1")).unwrap();
        write_dir(&dir, |t| {
            std::fs::write(t.join("b"), b"2")?;
            carry_over(&dir, t) // keeps "a"
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"2");
        let r: std::io::Result<()> = write_dir(&dir, |t| {
            std::fs::write(t.join("c"), b"3")?;
            Err(std::io::Error::other("build failed"))
        });
        assert!(r.is_err());
        assert!(!dir.join("c").exists());
        assert!(dir.join("b").exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporaries"
        );
    }

    #[test]
    fn refuses_to_replace_the_current_folder() {
        let e = write_dir(Path::new("."), |_| Ok::<(), std::io::Error>(())).unwrap_err();
        assert!(e.to_string().contains("dedicated folder"), "{e}");
        let e = write_dir(Path::new(".."), |_| Ok::<(), std::io::Error>(())).unwrap_err();
        assert!(e.to_string().contains("dedicated folder"), "{e}");
    }

    #[test]
    fn unique_temporaries_and_hidden_names() {
        let a = sibling(Path::new("x/f.json"), "tmp");
        let b = sibling(Path::new("x/f.json"), "tmp");
        assert_ne!(a, b);
        assert!(is_temporary(&a.file_name().unwrap().to_string_lossy()));
        assert!(!is_temporary("f.json"));
    }

    #[test]
    fn errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let blocker = d.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let e = write_file(&blocker.join("child.json"), b"y").unwrap_err();
        assert!(e.to_string().contains("file"), "{e}");
    }

    #[test]
    fn safetensors_header_is_sorted_in_place() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.safetensors");
        let header = br#"{"__metadata__":{"z":"1","format":"pt"},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut padded = header.to_vec();
        padded.resize(header.len().div_ceil(8) * 8, b' ');
        let mut bytes = (padded.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&padded);
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        sort_safetensors_header(&p).unwrap();
        let out = std::fs::read(&p).unwrap();
        assert_eq!(out.len(), bytes.len());
        let text = std::str::from_utf8(&out[8..8 + padded.len()]).unwrap();
        assert!(
            text.starts_with(r#"{"__metadata__":{"format":"pt","z":"1"},"b":{"data_offsets":[0,4],"dtype":"F32","shape":[1]}}"#),
            "{text}"
        );
        assert_eq!(&out[out.len() - 4..], &1.5f32.to_le_bytes());
        // Idempotent, and a file that is not safetensors is an error naming it.
        sort_safetensors_header(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), out);
        std::fs::write(&p, b"\x05\0\0\0\0\0\0\0hello").unwrap();
        let e = sort_safetensors_header(&p).unwrap_err();
        assert!(e.to_string().contains("w.safetensors"), "{e}");
    }
}
