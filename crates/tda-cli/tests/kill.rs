//! Kill test of crash safety: `kill -9` at pseudo-random moments of `tda index`, `tda fit`,
//! `tda train` and `tda trace --top-k all --out`, half of them replacing a previous good artifact.
//!
//! After each kill the target must be absent, the previous artifact or the complete new one, as
//! read back by the tool (`search`, `trace`, `logprobs`, a parquet reader) and compared with the
//! reference bytes; no visible file other than the target; every checkpoint that exists loads.
//! An uninterrupted re-run to the same target must then give exactly the reference result and
//! leave no temporary behind.
//!
//! `TDA_KILL_RUNS` sets the kills per command (default 10, at least 2), `TDA_KILL_SEED` the seed
//! of the kill moments (default: from the clock; printed). `--nocapture` shows the counts.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The four commands under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cmd {
    Index,
    Fit,
    Train,
    Trace,
}

const CMDS: [Cmd; 4] = [Cmd::Index, Cmd::Fit, Cmd::Train, Cmd::Trace];

impl Cmd {
    /// File or folder name of the command's artifact.
    fn target_name(self) -> &'static str {
        match self {
            Cmd::Index => "index",
            Cmd::Fit => "factors",
            Cmd::Train => "model",
            Cmd::Trace => "scores.parquet",
        }
    }
}

/// A training run of about half a second with three checkpoints (steps 5, 10, 15 of 20).
const CONFIG: &str = r#"
model = { arch = "gpt2", hidden = 32, n_layers = 2, n_heads = 2, intermediate = 64, max_positions = 64, vocab_size = 512 }
train = { seq_len = 32, batch_size = 8, steps = 20, lr = 3e-3, warmup_steps = 2, min_lr_ratio = 0.1, weight_decay = 0.01, grad_clip = 1.0, seed = 0, checkpoint_every = 5 }
"#;

const QUERIES: &str = "{\"id\":\"a\",\"prompt\":\"The market opens\",\"completion\":\" early\"}\n\
{\"id\":\"b\",\"prompt\":\"In winter the lake\",\"completion\":\" freezes\"}\n";

const SEARCHES: [&str; 2] = ["potter born in Northmoor", "lake freezes in winter"];

const PROBE_TEXT: &str = "The market opens early on most days of the week.";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tda"))
}

/// Runs `tda args` to the end.
fn tda(args: &[String]) -> Output {
    bin().args(args).output().expect("spawn tda")
}

/// Runs `tda args`, fails the test unless it succeeds; returns stdout.
fn tda_ok(args: &[String]) -> String {
    let out = tda(args);
    assert!(
        out.status.success(),
        "tda {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// A command line split at spaces (the test's paths have none).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

fn p(path: &Path) -> String {
    let s = path.display().to_string();
    assert!(!s.contains(char::is_whitespace), "path with a space: {s}");
    s
}

/// splitmix64: a seeded, dependency-free source of kill moments.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Non-hidden entry names of `dir` (sorted; empty when `dir` is missing).
fn visible(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Hidden `tda-io` temporaries (`.x.tmp-<pid>-…`, `.x.old-<pid>-…`) in `run_dir` and in the
/// target's `checkpoints/`; only those of `pid` when given.
fn temporaries(run_dir: &Path, target: &Path, pid: Option<u32>) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [run_dir.to_path_buf(), target.join("checkpoints")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let ours = match pid {
                Some(pid) => [".tmp-", ".old-"]
                    .iter()
                    .any(|k| n.contains(&format!("{k}{pid}-"))),
                None => n.contains(".tmp-") || n.contains(".old-"),
            };
            if n.starts_with('.') && ours {
                found.push(dir.join(n).display().to_string());
            }
        }
    }
    found
}

/// Copies a file or a folder tree.
fn copy_all(from: &Path, to: &Path) {
    if from.is_file() {
        std::fs::copy(from, to).unwrap();
        return;
    }
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        copy_all(&e.path(), &to.join(e.file_name()));
    }
}

/// The ranked results of `tda trace --json` output: per query its value and (rank, doc, window,
/// score) rows; timings are left out.
fn trace_scores(stdout: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("trace --json output");
    let rows: Vec<serde_json::Value> = v["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|q| {
            let results: Vec<_> = q["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| [&r["rank"], &r["doc_id"], &r["window"], &r["score"]])
                .collect();
            serde_json::json!({"id": q["id"], "value": q["value"], "results": results})
        })
        .collect();
    serde_json::to_string(&rows).unwrap()
}

/// Reads a parquet file written by `tda trace --out` completely; returns (rows, scores as text).
fn read_parquet(path: &Path) -> Result<(usize, String), String> {
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let (mut rows, mut text) = (0, String::new());
    for batch in reader {
        let b = batch.map_err(|e| e.to_string())?;
        let col = |name: &str| b.column_by_name(name).ok_or(format!("no column {name}"));
        let doc = col("doc_id")?.as_string_opt::<i32>();
        let score = col("score")?.as_primitive_opt::<Float64Type>();
        let (doc, score) = doc.zip(score).ok_or("unexpected column types")?;
        for i in 0..b.num_rows() {
            text += &format!("{}={:e};", doc.value(i), score.value(i));
        }
        rows += score.len();
    }
    Ok((rows, text))
}

/// Inputs and reference outputs of the whole test, in one temporary folder.
struct Setup {
    root: PathBuf,
    corpus: PathBuf,
    prev_corpus: PathBuf,
    config: PathBuf,
    queries: PathBuf,
    /// Reference (uninterrupted) artifact per command, and the different "previous" one.
    reference: BTreeMap<Cmd, PathBuf>,
    previous: BTreeMap<Cmd, PathBuf>,
    /// Wall time d of a run per command.
    wall: BTreeMap<Cmd, Duration>,
    /// stdout of the reference `trace --json` run.
    trace_json: String,
    /// [`Setup::read_back`] of the reference and of the previous artifacts.
    reference_sig: BTreeMap<Cmd, Vec<u8>>,
    previous_sig: BTreeMap<Cmd, Vec<u8>>,
}

impl Setup {
    fn new(root: &Path) -> Setup {
        let at = |n: &str| root.join(n);
        let per_cmd = |dir: &str| CMDS.map(|c| (c, at(dir).join(c.target_name()))).into();
        let mut s = Setup {
            root: root.to_path_buf(),
            corpus: at("corpus.jsonl"),
            prev_corpus: at("corpus-prev.jsonl"),
            config: at("small.toml"),
            queries: at("queries.jsonl"),
            reference: per_cmd("ref"),
            previous: per_cmd("prev"),
            wall: BTreeMap::new(),
            trace_json: String::new(),
            reference_sig: BTreeMap::new(),
            previous_sig: BTreeMap::new(),
        };
        std::fs::write(&s.config, CONFIG).unwrap();
        std::fs::write(&s.queries, QUERIES).unwrap();
        for (out, docs, seed) in [(&s.corpus, "200", "0"), (&s.prev_corpus, "200", "1")] {
            let line = format!("synth-corpus --out {} --docs {docs} --seed {seed}", p(out));
            tda_ok(&words(&line));
        }
        // In dependency order: fit and trace read the reference model, trace its factors. The
        // run time d is the shorter of the two runs (the first one may start cold).
        for cmd in [Cmd::Train, Cmd::Index, Cmd::Fit, Cmd::Trace] {
            let t0 = Instant::now();
            let stdout = tda_ok(&s.args(cmd, &s.reference[&cmd], false));
            let t1 = Instant::now();
            tda_ok(&s.args(cmd, &s.previous[&cmd], true));
            s.wall.insert(cmd, (t1 - t0).min(t1.elapsed()));
            if cmd == Cmd::Trace {
                s.trace_json = stdout;
            }
        }
        for cmd in CMDS {
            let reference = s.read_back(cmd, &s.reference[&cmd]).expect("reference");
            let previous = s.read_back(cmd, &s.previous[&cmd]).expect("previous");
            assert_ne!(reference, previous, "{cmd:?}: artifacts must differ");
            s.reference_sig.insert(cmd, reference);
            s.previous_sig.insert(cmd, previous);
        }
        s
    }

    /// The command line of `cmd` writing to `target`; `previous` makes a different artifact.
    fn args(&self, cmd: Cmd, target: &Path, previous: bool) -> Vec<String> {
        let (t, seed) = (p(target), if previous { 1 } else { 0 });
        let (model, corpus) = (p(&self.reference[&Cmd::Train]), p(&self.corpus));
        let line = match cmd {
            Cmd::Index => {
                let c = p([&self.corpus, &self.prev_corpus][previous as usize]);
                format!("index --corpus {c} --index {t} --overwrite --quiet")
            }
            Cmd::Fit => format!(
                "fit --model {model} --corpus {corpus} --max-windows 100 --seed {seed} --out {t}"
            ),
            Cmd::Train => format!(
                "train --config {} --corpus {corpus} --seed {seed} --out {t}",
                p(&self.config)
            ),
            Cmd::Trace => format!(
                "trace --model {model} --factors {} --corpus {corpus} --queries {} \
                 --max-windows 150 --top-k {} --out {t} --json",
                p(&self.reference[&Cmd::Fit]),
                p(&self.queries),
                if previous { "5" } else { "all" }
            ),
        };
        words(&line)
    }

    /// What a reader finds at `target`: `None` when there is no artifact, else a signature of the
    /// bytes and of the content read back by the tool. A visible artifact that the tool cannot
    /// read, or a folder missing one of its files, fails the test.
    fn read_back(&self, cmd: Cmd, target: &Path) -> Option<Vec<u8>> {
        if !target.exists() {
            return None;
        }
        let t = p(target);
        let mut sig = Vec::new();
        match cmd {
            Cmd::Index => {
                for q in SEARCHES {
                    let mut args = words(&format!("search --index {t} --top-k 10 --json"));
                    args.extend(["--query".to_string(), q.to_string()]);
                    let out = tda_ok(&args);
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                    sig.extend(serde_json::to_vec(&[&v["hits"], &v["terms"]]).unwrap());
                }
            }
            Cmd::Fit => {
                let names = visible(target);
                assert_eq!(names, ["factors.safetensors", "fit.json"], "{t}");
                let report = std::fs::read_to_string(target.join("fit.json")).unwrap();
                serde_json::from_str::<serde_json::Value>(&report).expect("fit.json is JSON");
                sig.extend(std::fs::read(target.join("factors.safetensors")).unwrap());
                let out = tda_ok(&words(&format!(
                    "trace --model {} --factors {t} --corpus {} --queries {} --max-windows 20 \
                     --top-k 5 --json",
                    p(&self.reference[&Cmd::Train]),
                    p(&self.corpus),
                    p(&self.queries)
                )));
                sig.extend(trace_scores(&out).into_bytes());
            }
            Cmd::Train => {
                let names: Vec<String> = visible(target)
                    .into_iter()
                    .filter(|n| n != "checkpoints")
                    .collect();
                if names.is_empty() {
                    // Only checkpoints so far: not a model folder, and readers must say so.
                    let out = tda(&words(&format!("logprobs --model {t} --text x")));
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert_eq!(out.status.code(), Some(1), "clean refusal expected: {err}");
                    assert!(err.contains("config.json"), "{err}");
                    return None;
                }
                sig.extend(names.join(",").into_bytes());
                sig.extend(std::fs::read(target.join("model.safetensors")).unwrap());
                sig.extend(probe(target).into_bytes());
            }
            Cmd::Trace => {
                let (rows, text) = read_parquet(target).unwrap_or_else(|e| panic!("{t}: {e}"));
                assert!(rows > 0, "{t}: no rows");
                sig.extend(std::fs::read(target).unwrap());
                sig.extend(text.into_bytes());
            }
        }
        Some(sig)
    }
}

/// `tda logprobs --json` of the probe text on a model folder (fails the test if it cannot load).
fn probe(model: &Path) -> String {
    let mut args = words(&format!("logprobs --json --model {}", p(model)));
    args.extend(["--text".to_string(), PROBE_TEXT.to_string()]);
    tda_ok(&args)
}

/// Checks every `checkpoints/step-N/` under `model`: it loads, and its weights are those of the
/// same step of one of `allowed` model folders. Returns how many there are.
fn check_checkpoints(model: &Path, allowed: &[&Path]) -> usize {
    let dir = model.join("checkpoints");
    let steps = visible(&dir);
    for step in &steps {
        let ck = dir.join(step);
        assert!(step.starts_with("step-"), "stray entry {}", ck.display());
        probe(&ck);
        let bytes = std::fs::read(ck.join("model.safetensors")).unwrap();
        let known = allowed.iter().any(|m| {
            std::fs::read(m.join("checkpoints").join(step).join("model.safetensors")).ok()
                == Some(bytes.clone())
        });
        assert!(known, "{}: weights of neither run", ck.display());
    }
    steps.len()
}

/// When a kill lands: after a delay from the start, or that long after the process's first
/// temporary appears (its first write, polled every 0.2 ms).
#[derive(Clone, Copy, Debug)]
enum When {
    After(Duration),
    AfterFirstWrite(Duration),
}

/// Starts `args` writing `target` in `run_dir`, sends SIGKILL (`Child::kill`) at `when` and
/// reaps it. Returns the pid and whether the process had already exited on its own.
fn start_and_kill(args: &[String], when: When, run_dir: &Path, target: &Path) -> (u32, bool) {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tda");
    let pid = child.id();
    let delay = match when {
        When::After(d) => d,
        When::AfterFirstWrite(d) => {
            while temporaries(run_dir, target, Some(pid)).is_empty()
                && child.try_wait().expect("try_wait").is_none()
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            d
        }
    };
    std::thread::sleep(delay);
    let _ = child.kill(); // an already exited child is fine
    let status = child.wait().expect("wait");
    if status.signal() == Some(9) {
        return (pid, false);
    }
    assert!(status.success(), "tda {} failed: {status}", args.join(" "));
    (pid, true)
}

/// Counts per command.
#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    replacing: usize,
    /// Kills timed from the first temporary ([`When::AfterFirstWrite`]).
    at_write: usize,
    /// When the kill landed: the process had finished / before the write / during / after it.
    exited: usize,
    before: usize,
    during: usize,
    after: usize,
    /// What the target held after the kill.
    absent: usize,
    old: usize,
    new: usize,
    /// `train` only: the model folder held nothing but checkpoints (refused cleanly by readers).
    checkpoints_only: usize,
    checkpoints_loaded: usize,
    reruns_equal: usize,
}

/// What the target holds after a kill.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Found {
    Absent,
    Old,
    New,
}

/// One kill of `cmd` at `when`, then the checks and the re-run; updates `tally`.
fn kill_once(s: &Setup, cmd: Cmd, i: usize, replacing: bool, when: When, tally: &mut Tally) {
    let run_dir = s.root.join("kills").join(format!("{cmd:?}-{i}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let target = run_dir.join(cmd.target_name());
    let (reference, previous) = (&s.reference[&cmd], &s.previous[&cmd]);
    if replacing {
        copy_all(previous, &target);
    }
    let args = s.args(cmd, &target, false);
    let (pid, exited) = start_and_kill(&args, when, &run_dir, &target);
    let what = format!("{cmd:?} kill {i} at {when:?} (pid {pid})");

    // After the kill: nothing visible but the target, which is none, the old or the new artifact.
    let names = visible(&run_dir);
    assert!(
        names.is_empty() || names == [cmd.target_name()],
        "{what}: visible entries {names:?}"
    );
    let sig = s.read_back(cmd, &target);
    let found = match &sig {
        None => Found::Absent,
        Some(x) if *x == s.reference_sig[&cmd] => Found::New,
        Some(x) if replacing && *x == s.previous_sig[&cmd] => Found::Old,
        Some(_) => panic!("{what}: the target is neither the previous nor the reference artifact"),
    };
    let ours = temporaries(&run_dir, &target, Some(pid));
    let whole = ours.is_empty() && found == Found::New;
    assert!(!exited || whole, "{what}: finished: {found:?}, {ours:?}");
    tally.kills += 1;
    tally.replacing += replacing as usize;
    tally.at_write += matches!(when, When::AfterFirstWrite(_)) as usize;
    match (exited, ours.is_empty(), found) {
        (true, _, _) => tally.exited += 1,
        (false, false, _) => tally.during += 1,
        (false, true, Found::New) => tally.after += 1,
        (false, true, _) => tally.before += 1,
    }
    match found {
        Found::Absent => tally.absent += 1,
        Found::Old => tally.old += 1,
        Found::New => tally.new += 1,
    }
    if cmd == Cmd::Train {
        let only = target.join("checkpoints").exists() && found == Found::Absent;
        tally.checkpoints_only += only as usize;
        tally.checkpoints_loaded += check_checkpoints(&target, &[reference, previous]);
    }

    // An uninterrupted re-run to the same target gives exactly the reference result.
    let stdout = tda_ok(&args);
    let left = temporaries(&run_dir, &target, None);
    assert!(left.is_empty(), "{what}: re-run left {left:?}");
    assert_eq!(visible(&run_dir), [cmd.target_name()], "{what}");
    let same_file = |name: &str| {
        let (a, b) = (target.join(name), reference.join(name));
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap()
    };
    let equal = match cmd {
        Cmd::Index => s.read_back(cmd, &target).as_ref() == Some(&s.reference_sig[&cmd]),
        Cmd::Fit => same_file("factors.safetensors"),
        Cmd::Train => {
            let steps = visible(&target.join("checkpoints"));
            let want = visible(&reference.join("checkpoints"));
            same_file("model.safetensors")
                && steps == want
                && steps
                    .iter()
                    .all(|st| same_file(&format!("checkpoints/{st}/model.safetensors")))
        }
        Cmd::Trace => {
            trace_scores(&stdout) == trace_scores(&s.trace_json)
                && std::fs::read(&target).unwrap() == std::fs::read(reference).unwrap()
        }
    };
    assert!(equal, "{what}: the re-run differs from the reference run");
    tally.reruns_equal += 1;
    let _ = std::fs::remove_dir_all(&run_dir);
}

/// Kills per command from `TDA_KILL_RUNS` (default 10, at least 2).
fn runs_per_command() -> usize {
    std::env::var("TDA_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(2)
}

/// The seed from `TDA_KILL_SEED`, else from the clock.
fn seed() -> u64 {
    std::env::var("TDA_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[test]
fn kill_nine_at_random_moments_leaves_old_none_or_new_and_reruns_reproduce() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let s = Setup::new(tmp.path());
    let (n, seed) = (runs_per_command(), seed());
    eprintln!(
        "kill test: seed {seed} (TDA_KILL_SEED), {n} kills per command (TDA_KILL_RUNS); setup {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    for (cmd, d) in &s.wall {
        eprintln!("  reference {cmd:?}: {:.2}s", d.as_secs_f64());
    }
    let mut rng = Rng(seed);
    let mut tallies: BTreeMap<Cmd, Tally> = BTreeMap::new();
    for i in 0..n {
        for cmd in CMDS {
            // Very early moments first (at the start, then 1% in), then uniform in [0, 1.1 d] or,
            // every other draw on average, in [0.8 d, 1.1 d], where the writes happen; every
            // fifth kill 0-2 ms after the first temporary appears.
            let (u, last_part) = (rng.uniform(), rng.uniform() < 0.5);
            let u = match i {
                0 => 0.0,
                1 => 0.01,
                _ if last_part => 0.8 + 0.3 * u,
                _ => 1.1 * u,
            };
            let when = match i % 5 {
                4 => When::AfterFirstWrite(Duration::from_secs_f64(0.002 * rng.uniform())),
                _ => When::After(s.wall[&cmd].mul_f64(u)),
            };
            let tally = tallies.entry(cmd).or_default();
            kill_once(&s, cmd, i, i % 2 == 1, when, tally);
        }
    }
    eprintln!("command   kills replace at-write | exited before during  after | absent    old    new | ckpt-only ckpts-loaded | reruns-equal");
    for (cmd, t) in &tallies {
        let col = |ns: &[usize]| ns.iter().map(|n| format!("{n:>6}")).collect::<String>();
        eprintln!(
            "{:<8}{}   | {} | {} |    {:>6}       {:>6} |       {:>6}",
            format!("{cmd:?}"),
            col(&[t.kills, t.replacing, t.at_write]),
            col(&[t.exited, t.before, t.during, t.after]),
            col(&[t.absent, t.old, t.new]),
            t.checkpoints_only,
            t.checkpoints_loaded,
            t.reruns_equal
        );
        assert_eq!(t.reruns_equal, t.kills);
    }
    let total: usize = tallies.values().map(|t| t.kills).sum();
    eprintln!(
        "{total} kills, all re-runs equal to the reference; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
