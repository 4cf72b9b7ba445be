//! Curation by self-influence: does `tda self-influence` put planted corrupted documents at the
//! top of its ranking?
//!
//! Corpus: generated biographies (one person per document) with 10 % corrupted documents planted:
//! half are **shuffled** (the words of a biography in random order), half are **wrong-fact swaps**
//! (a copy of a biography whose birthplace is replaced by another city: it contradicts the
//! original, which stays in the corpus). A tiny GPT-2 is trained on the whole corpus, EK-FAC is
//! fitted on it, and every document is ranked by its most self-influential window. Reported:
//! recall of the corrupted documents in the top 10 % (Kronfluence finds 80 % of CIFAR mislabels
//! there), per kind, against the baselines: self-influence with the identity (the squared
//! gradient norm), the mean token loss of the document, and chance (10 %).
//! Run: `cargo bench -p tda-benches --bench curation` (`TDA_CUR_SEEDS`, default 2).

use tda_benches::{planted_params, tiny_gpt2, train_in_order};
use tda_eval::curation_eval::{corrupted_world, rankings, rows};
use tda_model::device::CpuAutodiff;
use tda_model::Transformer;
use tda_train::{pack, train_bpe};

type AD = CpuAutodiff;

const PEOPLE: usize = 90;

fn main() {
    let seeds: u64 = std::env::var("TDA_CUR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worlds = Vec::new();
    for seed in 0..seeds {
        let w = corrupted_world(PEOPLE, seed);
        let corpus = dir.path().join(format!("corpus-{seed}.jsonl"));
        std::fs::write(&corpus, w.corpus_jsonl()).unwrap();
        let tok = train_bpe(w.items.iter().map(|(_, t)| t.clone()), 512).unwrap();
        let eot = tok.token_to_id(tda_train::END_OF_TEXT).unwrap();
        let encode = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
        let seqs = pack(
            &w.items.iter().map(|(_, t)| encode(t)).collect::<Vec<_>>(),
            eot,
            64,
        );
        let t0 = std::time::Instant::now();
        let (model, loss) = train_in_order(
            Transformer::<AD>::init(&tiny_gpt2(512, eot), seed, &Default::default()),
            &seqs,
            &planted_params(400, 3e-3, 0.0, seed),
        );
        eprintln!(
            "seed {seed}: {} documents ({} shuffled, {} swapped), trained in {:.0}s (loss {loss:.3})",
            w.items.len(),
            w.shuffled.len(),
            w.swapped.len(),
            t0.elapsed().as_secs_f64()
        );
        let r = rankings(&model, &tok, &corpus, "cur").unwrap();
        worlds.push((w, r));
    }
    println!(
        "curation by self-influence: {PEOPLE} biographies + 10 % corrupted, recall of the corrupted documents in the top 10 % of the ranking, {seeds} seed(s) (chance 0.10)"
    );
    println!("| method | all | shuffled | wrong-fact swaps |");
    println!("|---|---|---|---|");
    for r in rows(&worlds) {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            r.method, r.all, r.shuffled, r.swapped
        );
    }
}
