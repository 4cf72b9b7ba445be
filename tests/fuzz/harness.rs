//! The fuzz loop: seeds and a pool of interesting inputs, mutation, execution on a worker thread
//! under `catch_unwind` with a time limit, crash files, and the per-target report.
//!
//! Environment: `TDA_FUZZ_SECS` (seconds per target, default 2), `TDA_FUZZ_SEED` (RNG seed, a
//! number or `time`; default fixed), `TDA_FUZZ_HANG_SECS` (per-input limit, default 10),
//! `TDA_FUZZ_VERBOSE` (print every new kind of outcome).

use std::collections::HashSet;
use std::io::{Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::mutate::{mutate, Kind, Rng};

/// What a target does with one input: `slot` names the file the bytes become (its extension
/// selects the format), `Err` is the loader's error (fine), a panic is a crash.
pub type RunFn = Arc<dyn Fn(&str, &[u8]) -> Result<(), String> + Send + Sync>;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// `(slot, bytes)`: the inputs mutation starts from.
    pub seeds: Vec<(String, Vec<u8>)>,
    /// Snippets that string mutations insert (type names, template syntax, ...).
    pub dict: &'static [&'static str],
    pub run: RunFn,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fuzz/<what>/<target>` (seeds, regressions).
pub fn fuzz_dir(what: &str, target: &str) -> PathBuf {
    root().join("fuzz").join(what).join(target)
}

/// Every file under `dir` (sorted) as `(path relative to dir, bytes)`; README files excluded.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(base, &p, out);
            } else if !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("README")
            {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if v == "time" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// FNV-1a, 64 bits: names crash files and derives per-target seeds.
pub fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

thread_local! {
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static WORKER_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}
/// The last panic message of a thread that is not a worker (e.g. one a loader started).
static OTHER_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// A panic hook that records a worker's panic message (with its location) instead of printing
/// it; other threads' panics are recorded too and print as usual.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_WORKER.get() {
                WORKER_PANIC.set(Some(info.to_string()));
                return;
            }
            *OTHER_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
            default(info)
        }));
    });
}

fn last_panic() -> Option<String> {
    WORKER_PANIC
        .take()
        .or_else(|| OTHER_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take())
}

type Job = (String, Vec<u8>);

/// A thread that runs inputs one at a time; abandoned (and replaced) when an input hangs.
struct Worker {
    jobs: Sender<Job>,
    results: Receiver<Result<Result<(), String>, String>>,
}

impl Worker {
    fn start(run: RunFn) -> Self {
        let (jobs, job_rx) = channel::<Job>();
        let (res_tx, results) = channel();
        std::thread::Builder::new()
            .name("fuzz-worker".into())
            .spawn(move || {
                IN_WORKER.set(true);
                for (slot, bytes) in job_rx {
                    // A panic the loader caught itself must not be blamed on a later input.
                    WORKER_PANIC.take();
                    let r = catch_unwind(AssertUnwindSafe(|| run(&slot, &bytes)))
                        .map_err(|p| last_panic().unwrap_or_else(|| payload_text(&p)));
                    if res_tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .unwrap();
        Self { jobs, results }
    }
}

fn payload_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

/// The result of one input.
pub enum Outcome {
    Ok,
    Err(String),
    Crash(String),
}

/// An error message reduced to its words (no path, numbers, quoted content or echoed file
/// content): inputs with a new signature join the pool.
fn signature(r: &Result<(), String>) -> String {
    let Err(e) = r else {
        return "ok".into();
    };
    let line = e.lines().next().unwrap_or("");
    let line = line.split("Content:").next().unwrap();
    let line = match line.split_once(": ") {
        Some((path, rest)) if path.starts_with('/') => rest,
        _ => line,
    };
    line.split(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
        .filter(|w| !w.is_empty())
        .take(16)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where crash inputs are written: `target/fuzz-crashes/` of the workspace.
pub fn crash_dir() -> PathBuf {
    root().parent().unwrap().join("target").join("fuzz-crashes")
}

/// The file a crashing input is saved to: `<target>-<hash>-<slot, '/' as '+'>`.
fn save_crash(target: &str, slot: &str, bytes: &[u8]) -> PathBuf {
    let dir = crash_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!(
        "{target}-{:016x}-{}",
        hash(bytes),
        slot.replace('/', "+")
    ));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs one input on `worker` (replaced if the input hangs past `limit`).
fn execute(worker: &mut Worker, run: &RunFn, slot: &str, bytes: &[u8], limit: Duration) -> Outcome {
    worker
        .jobs
        .send((slot.to_string(), bytes.to_vec()))
        .unwrap();
    match worker.results.recv_timeout(limit) {
        Ok(Ok(Ok(()))) => Outcome::Ok,
        Ok(Ok(Err(e))) => Outcome::Err(e),
        Ok(Err(panic)) => Outcome::Crash(panic),
        Err(RecvTimeoutError::Timeout) => {
            *worker = Worker::start(run.clone());
            Outcome::Crash(format!("hang: no result after {limit:?}"))
        }
        Err(RecvTimeoutError::Disconnected) => Outcome::Crash("worker thread died".into()),
    }
}

/// Replays every file of `tests/fuzz/regressions/<target>/` (named `<hash>-<slot>`): each must
/// give `Ok` or `Err` now. Returns the number of files.
pub fn replay(t: &Target) -> usize {
    install_hook();
    let limit = Duration::from_secs(env_u64("TDA_FUZZ_HANG_SECS", 10));
    let mut worker = Worker::start(t.run.clone());
    let files = files_under(&fuzz_dir("regressions", t.name));
    let mut failed = Vec::new();
    for (name, bytes) in &files {
        let slot = name
            .split_once('-')
            .map_or(name.as_str(), |(_, s)| s)
            .replace('+', "/");
        if let Outcome::Crash(msg) = execute(&mut worker, &t.run, &slot, bytes, limit) {
            failed.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{}: regression inputs crash again:\n{}",
        t.name,
        failed.join("\n")
    );
    files.len()
}

/// Fuzzes `t` for `TDA_FUZZ_SECS` seconds: seeds first, then mutations of the pool (seeds plus
/// inputs that gave a new outcome). Panics listing the crash files if any input crashed.
pub fn fuzz(t: &Target) {
    install_hook();
    assert!(!t.seeds.is_empty(), "{}: no seeds", t.name);
    let secs = env_u64("TDA_FUZZ_SECS", 2);
    let seed = env_u64("TDA_FUZZ_SEED", 0x7da_f022) ^ hash(t.name.as_bytes());
    let limit = Duration::from_secs(env_u64("TDA_FUZZ_HANG_SECS", 10));
    let verbose = std::env::var_os("TDA_FUZZ_VERBOSE").is_some();
    let mut rng = Rng::new(seed);
    let mut worker = Worker::start(t.run.clone());
    let mut pool: Vec<(String, Vec<u8>)> = t.seeds.clone();
    let mut seen = HashSet::new();
    let mut crashes: Vec<String> = Vec::new();
    let mut crash_kinds = HashSet::new();
    let (mut execs, mut oks, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let start = Instant::now();
    std::fs::create_dir_all(crash_dir()).unwrap();
    let running_path = crash_dir().join(format!("{}-running", t.name));
    // Kept open and rewritten in place: a truncate-and-close per input makes ext4 flush each time.
    let mut running = std::fs::File::create(&running_path).unwrap();
    while execs < t.seeds.len() as u64 || start.elapsed().as_secs_f64() < secs as f64 {
        let (slot, input) = if (execs as usize) < t.seeds.len() {
            t.seeds[execs as usize].clone()
        } else {
            // A third of the time from a seed, so a broken input does not take over the pool.
            let from = if rng.one_in(3) { &t.seeds } else { &pool };
            let (slot, base) = rng.pick(from).clone();
            let other = &rng.pick(&pool).1;
            (
                slot.clone(),
                mutate(&mut rng, Kind::of(&slot), &base, other, t.dict),
            )
        };
        // If the process dies (out of memory, abort), this file holds the input that did it.
        running.seek(SeekFrom::Start(0)).unwrap();
        running.write_all(&input).unwrap();
        running.set_len(input.len() as u64).unwrap();
        let t0 = Instant::now();
        let outcome = execute(&mut worker, &t.run, &slot, &input, limit);
        slowest = slowest.max(t0.elapsed());
        execs += 1;
        let result = match outcome {
            Outcome::Ok => Ok(()),
            Outcome::Err(e) => Err(e),
            Outcome::Crash(msg) => {
                let kind: String = msg.lines().next().unwrap_or("").chars().take(160).collect();
                if crash_kinds.insert(kind) && crashes.len() < 20 {
                    let p = save_crash(t.name, &slot, &input);
                    crashes.push(format!("{} ({slot}): {msg}", p.display()));
                }
                continue;
            }
        };
        oks += u64::from(result.is_ok());
        let sig = signature(&result);
        if verbose && !seen.contains(&sig) {
            println!(
                "  new outcome ({slot}): {}",
                result.as_ref().err().map_or("ok", |e| e)
            );
        }
        if seen.insert(sig) && input.len() < 4 << 20 {
            if pool.len() >= 256 {
                let i = t.seeds.len() + rng.below(pool.len() - t.seeds.len());
                pool[i] = (slot, input);
            } else {
                pool.push((slot, input));
            }
        }
    }
    drop(running);
    let _ = std::fs::remove_file(&running_path);
    let el = start.elapsed().as_secs_f64();
    println!(
        "fuzz {}: {execs} inputs ({} seeds, {oks} ok), {:.0} exec/s, {} distinct outcomes, \
         slowest {:.0} ms, {} crashes, seed {seed:#x}, {el:.1} s",
        t.name,
        t.seeds.len(),
        execs as f64 / el,
        seen.len(),
        slowest.as_secs_f64() * 1e3,
        crashes.len(),
    );
    assert!(
        crashes.is_empty(),
        "{}: {} crashing inputs (saved; move each to tests/fuzz/regressions/{}/ once fixed):\n{}",
        t.name,
        crashes.len(),
        t.name,
        crashes.join("\n")
    );
}
