//! Prefilter benchmark: index build throughput and memory, query latency for top-10,000 with a
//! 100-token query, and what query-term pruning costs in ranking quality.
//!
//! Corpus: generated jsonl shards (100k docs each). Vocabulary of 200k pseudo-words with Zipfian
//! frequencies (s = 1.07, the 40 most frequent being real English stop-words); document lengths
//! log-normal (median 150 words, σ = 0.9, clamped to 5..20,000); each document has one of 2,000
//! topics and draws 30 % of its words from that topic's 300 words — so queries have relevant
//! documents to find.
//!
//! Env: `TDA_BENCH_DOCS` (default 1,000,000), `TDA_BENCH_QUERIES` (default 20),
//! `TDA_BENCH_K` (default 10,000), `TDA_BENCH_DIR` (work folder; default a temp dir, removed).
//! Run: `cargo bench -p tda-benches --bench corpus_index`
//!      `TDA_BENCH_DOCS=100000 cargo bench -p tda-benches --bench corpus_index`

use std::io::Write;
use std::path::Path;
use std::time::Instant;
use tda_corpus::{CorpusIndex, IndexOptions, Progress, QueryOptions, Ranking};

const STOP: [&str; 40] = [
    "the", "of", "and", "a", "to", "in", "is", "was", "it", "for", "on", "as", "with", "by", "he",
    "that", "at", "from", "his", "an", "are", "were", "this", "be", "which", "or", "not", "but",
    "they", "had", "have", "their", "its", "has", "there", "been", "if", "into", "no", "will",
];
const VOCAB: usize = 200_000;
const TOPICS: usize = 2_000;
const TOPIC_WORDS: usize = 300;
const SHARD_DOCS: usize = 100_000;

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

struct Language {
    words: Vec<String>,
    cdf: Vec<f64>,
    topics: Vec<Vec<u32>>,
}

impl Language {
    fn new(rng: &mut Rng) -> Self {
        const SYL: [&str; 24] = [
            "ka", "to", "ri", "ne", "sa", "mo", "lu", "vi", "de", "po", "ga", "fe", "shi", "ar",
            "en", "ol", "um", "tra", "bel", "cor", "dan", "ish", "qu", "ex",
        ];
        let mut words: Vec<String> = STOP.iter().map(|s| s.to_string()).collect();
        let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
        while words.len() < VOCAB {
            // Frequent words are short: 1-2 syllables at the top, up to 5 in the tail.
            let rank = words.len();
            let max_syl = 2 + (rank as f64).log10() as u64 / 2;
            let n = 1 + rng.next() % max_syl.min(5);
            let w: String = (0..n).map(|_| SYL[(rng.next() % 24) as usize]).collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let mut cdf = Vec::with_capacity(VOCAB);
        let mut acc = 0.0;
        for r in 0..VOCAB {
            acc += 1.0 / ((r + 1) as f64).powf(1.07);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        // Topic words: mid-frequency ranks (500..50,000).
        let topics = (0..TOPICS)
            .map(|_| {
                (0..TOPIC_WORDS)
                    .map(|_| 500 + (rng.next() % 49_500) as u32)
                    .collect()
            })
            .collect();
        Language { words, cdf, topics }
    }

    fn word(&self, rng: &mut Rng, topic: usize) -> &str {
        if rng.unit() < 0.3 {
            // Zipf-ish inside the topic too.
            let t = &self.topics[topic];
            let i = ((rng.unit().powi(2)) * t.len() as f64) as usize;
            &self.words[t[i.min(t.len() - 1)] as usize]
        } else {
            let u = rng.unit();
            let r = self.cdf.partition_point(|&c| c < u).min(VOCAB - 1);
            &self.words[r]
        }
    }

    fn text(&self, rng: &mut Rng, topic: usize, len: usize, out: &mut String) {
        out.clear();
        for i in 0..len {
            if i > 0 {
                out.push(if i % 17 == 0 { '.' } else { ' ' });
                if i % 17 == 0 {
                    out.push(' ');
                }
            }
            out.push_str(self.word(rng, topic));
        }
    }
}

fn generate(dir: &Path, n: usize, lang: &Language, rng: &mut Rng) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    let mut bytes = 0u64;
    let mut w: Option<std::io::BufWriter<std::fs::File>> = None;
    for i in 0..n {
        if i % SHARD_DOCS == 0 {
            if let Some(mut old) = w.take() {
                old.flush().unwrap();
            }
            let f = std::fs::File::create(dir.join(format!("shard-{:04}.jsonl", i / SHARD_DOCS)))
                .unwrap();
            w = Some(std::io::BufWriter::with_capacity(1 << 20, f));
        }
        let len = (150.0 * (0.9 * rng.normal()).exp()).clamp(5.0, 20_000.0) as usize;
        let topic = (rng.next() % TOPICS as u64) as usize;
        lang.text(rng, topic, len, &mut text);
        let line = format!("{{\"id\":\"doc{i}\",\"text\":\"{text}\"}}\n");
        bytes += line.len() as u64;
        w.as_mut().unwrap().write_all(line.as_bytes()).unwrap();
    }
    if let Some(mut old) = w.take() {
        old.flush().unwrap();
    }
    bytes
}

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reset the peak-RSS counter (VmHWM) of this process (Linux ≥ 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn env(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn overlap(a: &[tda_corpus::Hit], b: &[tda_corpus::Hit], k: usize) -> f64 {
    let k = k.min(a.len()).min(b.len());
    if k == 0 {
        return 1.0;
    }
    let set: std::collections::HashSet<&str> = b[..k].iter().map(|h| h.doc_id.as_str()).collect();
    a[..k]
        .iter()
        .filter(|h| set.contains(h.doc_id.as_str()))
        .count() as f64
        / k as f64
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n = env("TDA_BENCH_DOCS", 1_000_000);
    let nq = env("TDA_BENCH_QUERIES", 20);
    let k = env("TDA_BENCH_K", 10_000);
    let (_tmp, work) = match std::env::var("TDA_BENCH_DIR") {
        Ok(d) => (None, std::path::PathBuf::from(d)),
        Err(_) => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let corpus = work.join(format!("corpus-{n}"));
    let index_dir = work.join(format!("index-{n}"));
    let mut rng = Rng(42);
    let lang = Language::new(&mut rng);

    let t = Instant::now();
    let corpus_bytes = if corpus.exists() {
        dir_size(&corpus)
    } else {
        generate(&corpus, n, &lang, &mut rng)
    };
    println!(
        "corpus: {n} docs, {:.1} MB jsonl in {} shards (generated/found in {:.1} s)",
        corpus_bytes as f64 / 1e6,
        n.div_ceil(SHARD_DOCS),
        t.elapsed().as_secs_f64()
    );

    let rss_before = status_kib("VmRSS:");
    let reset = reset_peak_rss();
    let opts = IndexOptions {
        threads: 2,
        memory_budget: 256 << 20,
        merge: true,
        overwrite: true,
        ..Default::default()
    };
    // Sample anonymous (heap) and file-backed (mmap'd index pages, reclaimable) RSS separately:
    // VmHWM mixes both, and the file part grows with the index being merged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut anon, mut file) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                anon = anon.max(status_kib("RssAnon:"));
                file = file.max(status_kib("RssFile:"));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (anon, file)
        })
    };
    let (idx, summary) = CorpusIndex::build(&corpus, &index_dir, &opts, Progress::Bar).unwrap();
    let peak = status_kib("VmHWM:");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak_anon, peak_file) = sampler.join().unwrap();
    println!("build: {summary}");
    println!(
        "build: {:.0} docs/s, {:.1} MB/s (jsonl bytes), index {:.1} MB on disk, {} segment(s)",
        summary.docs_per_s(),
        summary.mb_per_s(),
        dir_size(&index_dir) as f64 / 1e6,
        std::fs::read_dir(&index_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().ends_with(".idx"))
                    .unwrap_or(false)
            })
            .count()
    );
    println!(
        "build: peak RSS {:.0} MiB (VmHWM{}; RSS before build {:.0} MiB; budget {} MiB)",
        peak as f64 / 1024.0,
        if reset {
            ", reset before build"
        } else {
            ", NOT reset: includes generation"
        },
        rss_before as f64 / 1024.0,
        opts.memory_budget >> 20
    );
    println!(
        "build: sampled peaks every 20 ms: RssAnon {:.0} MiB (heap), RssFile {:.0} MiB (mapped index files)",
        peak_anon as f64 / 1024.0,
        peak_file as f64 / 1024.0
    );

    // Queries: 100-word "completions" from random topics.
    let mut qtext = String::new();
    let queries: Vec<String> = (0..nq)
        .map(|_| {
            let topic = (rng.next() % TOPICS as u64) as usize;
            lang.text(&mut rng, topic, 100, &mut qtext);
            qtext.clone()
        })
        .collect();
    // Warm-up (page cache, lazily opened fast fields).
    for q in queries.iter().take(2) {
        idx.search(q, k, Ranking::Bm25).unwrap();
    }
    println!(
        "\nquery: {nq} queries of 100 words, top-{k}, on {} docs",
        idx.num_docs()
    );
    println!(
        "{:<13} {:<10} {:>8} {:>8} {:>8} {:>7} {:>12} {:>12}",
        "ranking", "max_terms", "p50 ms", "p90 ms", "max ms", "terms", "overlap@100", "overlap@k"
    );
    for (ranking, tantivy_engine) in [
        (Ranking::Bm25, false),
        (Ranking::TfIdf, false),
        (Ranking::Bm25, true),
    ] {
        let name = if tantivy_engine {
            "Bm25/tantivy".to_string()
        } else {
            format!("{ranking:?}")
        };
        let full_opts = QueryOptions {
            ranking,
            max_terms: None,
            max_doc_freq_ratio: None,
            tantivy_engine,
        };
        let mut full = Vec::new();
        let mut lat = Vec::new();
        let mut terms = 0usize;
        for q in &queries {
            let t = Instant::now();
            let r = idx.search_with(q, k, &full_opts).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            terms += r.terms.len();
            full.push(r.hits);
        }
        println!(
            "{:<13} {:<10} {:>8.1} {:>8.1} {:>8.1} {:>7.1} {:>12} {:>12}",
            name,
            "all",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.9),
            percentile(&mut lat, 1.0),
            terms as f64 / nq as f64,
            "1.000",
            "1.000"
        );
        for cap in [16usize, 32, 64, 128] {
            let o = QueryOptions {
                ranking,
                max_terms: Some(cap),
                max_doc_freq_ratio: None,
                tantivy_engine,
            };
            let mut lat = Vec::new();
            let (mut o100, mut ok) = (0.0, 0.0);
            let mut terms = 0usize;
            for (q, f) in queries.iter().zip(&full) {
                let t = Instant::now();
                let r = idx.search_with(q, k, &o).unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                terms += r.terms.len();
                o100 += overlap(&r.hits, f, 100);
                ok += overlap(&r.hits, f, k);
            }
            println!(
                "{:<13} {:<10} {:>8.1} {:>8.1} {:>8.1} {:>7.1} {:>12.3} {:>12.3}",
                name,
                cap,
                percentile(&mut lat, 0.5),
                percentile(&mut lat, 0.9),
                percentile(&mut lat, 1.0),
                terms as f64 / nq as f64,
                o100 / nq as f64,
                ok / nq as f64
            );
        }
    }
    // Fetching the candidates' text back from the corpus (what `tda trace` does next).
    let hits = idx.search(&queries[0], k, Ranking::Bm25).unwrap();
    let t = Instant::now();
    let docs = idx.fetch(&hits).unwrap();
    println!(
        "\nfetch: {} candidate texts read back from the corpus in {:.0} ms",
        docs.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    if std::env::var("TDA_BENCH_DIR").is_err() {
        drop(idx);
        let _ = std::fs::remove_dir_all(&work);
    }
}
