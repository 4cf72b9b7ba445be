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

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tda_benches::{docs_source, planted_params, tiny_gpt2, train_in_order};
use tda_curvature::{Damping, Factors};
use tda_eval::biographies;
use tda_model::device::CpuAutodiff;
use tda_model::Transformer;
use tda_trace::{fit, self_influence, FitOptions, Granularity, WindowOptions};
use tda_train::{pack, train_bpe};

type AD = CpuAutodiff;

const PEOPLE: usize = 90;

fn main() {
    let seeds: u64 = std::env::var("TDA_CUR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let methods = [
        "self-influence, EK-FAC",
        "self-influence, identity (‖∇L‖²)",
        "mean token loss",
    ];
    // recall[method][kind]: kinds = all, shuffled, swapped; one value per seed.
    let mut recall = vec![vec![vec![]; 3]; methods.len()];
    for seed in 0..seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + seed);
        let docs = biographies(PEOPLE, 500 + seed);
        let mut items: Vec<(String, String)> = docs
            .iter()
            .map(|d| (d.id.clone(), d.text.clone()))
            .collect();
        let n_bad = (PEOPLE + 5) / 10;
        let mut order: Vec<usize> = (0..PEOPLE).collect();
        order.shuffle(&mut rng);
        let (shuffled, swapped) = order[..n_bad].split_at(n_bad / 2 + n_bad % 2);
        let mut bad_shuffled = HashSet::new();
        for &i in shuffled {
            let mut words: Vec<&str> = docs[i].text.split(' ').collect();
            words.shuffle(&mut rng);
            items[i].1 = words.join(" ");
            bad_shuffled.insert(items[i].0.clone());
        }
        let mut bad_swapped = HashSet::new();
        for &i in swapped {
            let p = &docs[i].person;
            let other = loop {
                let c = &docs[rng.random_range(0..PEOPLE)].person.city;
                if *c != p.city {
                    break c.clone();
                }
            };
            let id = format!("{}-swap", docs[i].id);
            items.push((id.clone(), docs[i].text.replace(&p.city, &other)));
            bad_swapped.insert(id);
        }
        let n_docs = items.len();
        let tok = train_bpe(items.iter().map(|(_, t)| t.clone()), 512).unwrap();
        let eot = tok.token_to_id(tda_train::END_OF_TEXT).unwrap();
        let encode = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
        let seqs = pack(
            &items.iter().map(|(_, t)| encode(t)).collect::<Vec<_>>(),
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
            "seed {seed}: {n_docs} documents ({} shuffled, {} swapped), trained in {:.0}s (loss {loss:.3})",
            bad_shuffled.len(),
            bad_swapped.len(),
            t0.elapsed().as_secs_f64()
        );
        let windows = WindowOptions {
            max_len: 64,
            batch_size: 8,
            max_windows: None,
            ..Default::default()
        };
        let source = docs_source(&items);
        let (factors, _) = fit::fit(
            &model,
            &tok,
            &source,
            &FitOptions {
                windows,
                ..Default::default()
            },
            "cur",
            &mut |_| {},
        )
        .unwrap();
        let rank_by = |f: &Factors, d: Damping| -> Vec<String> {
            let (rows, _) = self_influence(
                &model,
                &tok,
                f,
                &source,
                d,
                None,
                &windows,
                Granularity::Document,
                &mut |_, _| {},
            )
            .unwrap();
            rows.into_iter().map(|r| r.doc_id).collect()
        };
        let identity = Factors::identity(factors.specs(), "identity");
        let mut by_loss: Vec<(f64, String)> = items
            .iter()
            .map(|(id, text)| {
                let lp = tda_model::infer::score_text(&model, &tok, text).unwrap();
                let n = lp.iter().filter(|t| t.logprob.is_some()).count().max(1);
                let nll = -lp.iter().filter_map(|t| t.logprob).sum::<f32>() as f64 / n as f64;
                (nll, id.clone())
            })
            .collect();
        by_loss.sort_by(|a, b| b.0.total_cmp(&a.0));
        let rankings = [
            rank_by(&factors, Damping::default()),
            rank_by(&identity, Damping::Absolute(0.0)),
            by_loss.into_iter().map(|(_, id)| id).collect(),
        ];
        let top = n_docs.div_ceil(10);
        for (m, ranked) in rankings.iter().enumerate() {
            let head: HashSet<&String> = ranked[..top].iter().collect();
            let hit = |set: &HashSet<String>| {
                set.iter().filter(|id| head.contains(id)).count() as f64 / set.len() as f64
            };
            let all: HashSet<String> = bad_shuffled.union(&bad_swapped).cloned().collect();
            recall[m][0].push(hit(&all));
            recall[m][1].push(hit(&bad_shuffled));
            recall[m][2].push(hit(&bad_swapped));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "curation by self-influence: {PEOPLE} biographies + 10 % corrupted, recall of the corrupted documents in the top 10 % of the ranking, {seeds} seed(s) (chance 0.10)"
    );
    println!("| method | all | shuffled | wrong-fact swaps |");
    println!("|---|---|---|---|");
    for (m, name) in methods.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            mean(&recall[m][0]),
            mean(&recall[m][1]),
            mean(&recall[m][2])
        );
    }
}
