//! The planted-truth RAG set and the model trained on it (`tests/fixtures/rag`, made by
//! `cargo run --release -p tda-context --example train_rag -- tests/fixtures/rag`).

use std::path::PathBuf;

use tda_context::cti::token_stats;
use tda_context::prompt::build_prompts;
use tda_context::{attribute, Method, Options, Request};
use tda_eval::{citation_prf, lexical, rag_set, template};
use tda_model::device::CpuAutodiff;

/// The committed planted-truth reader.
fn rag_model() -> tda_model::HfModel<CpuAutodiff> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/rag");
    tda_model::load_folder::<CpuAutodiff>(&dir, &Default::default()).unwrap()
}

/// The readers' training set: the planted facts are stated once, or not at all when their document
/// was ablated (gold 0, in about 0.3 × ½ of the facts); tie values are drawn at random.
#[test]
fn training_set_ablates_documents_and_draws_tie_values() {
    let (mut dropped, mut facts, mut same, mut ties) = (0, 0, 0, 0);
    for ex in tda_eval::rag_training_set(1000, 6) {
        for (s, &g) in ex.sentences.iter().zip(&ex.gold) {
            facts += 1;
            let stating = (0..ex.docs.len()).filter(|&i| ex.docs[i].text.contains(s.as_str()));
            let stating: Vec<usize> = stating.map(|i| i + 1).collect();
            if g == 0 {
                dropped += 1;
                assert!(stating.is_empty(), "{s:?} in {:?}", ex.docs);
            } else {
                assert_eq!(stating, vec![g]);
            }
            // The verb after the two-word name (was, works, has, likes) and the value's last word.
            let verb = s.split_whitespace().nth(2).unwrap();
            let value = s.rsplit(' ').next().unwrap().trim_end_matches('.');
            for d in ex
                .docs
                .iter()
                .filter(|d| d.text.contains(&format!("who {verb} ")))
            {
                ties += 1;
                let (clause, _) = d.text.split_once(", knows").unwrap();
                same += usize::from(clause.ends_with(value));
            }
        }
    }
    let share = dropped as f64 / facts as f64;
    assert!(
        (0.1..0.2).contains(&share),
        "{share} of the facts lost their document"
    );
    // Values are drawn among 8–10: about 1 tie in 8 repeats the asked person's value.
    let same = same as f64 / ties as f64;
    assert!(
        ties > 300 && (0.03..0.25).contains(&same),
        "{same} of {ties} ties"
    );
}

#[test]
fn each_fact_is_stated_in_exactly_one_document() {
    let set = rag_set(300, 5);
    let mut ties = 0;
    for ex in &set {
        assert_eq!(ex.sentences.len(), 2);
        assert_eq!(ex.answer, ex.sentences.join(" "));
        for (s, &g) in ex.sentences.iter().zip(&ex.gold) {
            let stating: Vec<usize> = (0..ex.docs.len())
                .filter(|&i| ex.docs[i].text.contains(s.as_str()))
                .map(|i| i + 1)
                .collect();
            assert_eq!(stating, vec![g], "{s:?} in {:?}", ex.docs);
            // A tie distractor shares every word of the sentence without stating it.
            let docs: Vec<&str> = ex.docs.iter().map(|d| d.text.as_str()).collect();
            let lex = lexical::cite(s, &docs, 3);
            assert!(lex.contains(&g), "the gold document has the top overlap");
            if lex.len() > 1 {
                ties += 1;
            }
        }
        assert!(ex.docs.len() >= 4 && ex.docs.len() <= 5);
    }
    // About half of the facts have a tie distractor.
    assert!((200..400).contains(&ties), "{ties} ties of 600 facts");
    assert_eq!(
        rag_set(3, 5)[2].answer,
        set[2].answer,
        "deterministic in the seed"
    );
}

#[test]
fn score_counts_precision_and_recall() {
    let p = citation_prf(&[vec![1, 2], vec![3], vec![]], &[1, 2, 3]);
    assert!((p.recall - 1.0 / 3.0).abs() < 1e-12);
    assert!((p.precision - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(p.citations, 3);
}

#[test]
fn trained_model_cites_the_planted_documents() {
    let m = rag_model();
    let opts = Options {
        template: template(),
        ..Options::default()
    };
    let set = rag_set(16, 777);
    let (mut ours, mut lex, mut gold) = (Vec::new(), Vec::new(), Vec::new());
    for ex in &set {
        let req = Request {
            question: &ex.question,
            docs: &ex.docs,
            answer: Some(&ex.answer),
        };
        let a = attribute(&m.model, &m.tokenizer, None, &req, &opts).unwrap();
        assert_eq!(a.passes.forwards, 2);
        let docs: Vec<&str> = ex.docs.iter().map(|d| d.text.as_str()).collect();
        for (s, &g) in a.sentences.iter().zip(&ex.gold) {
            ours.push(s.citations.clone());
            lex.push(lexical::cite(&s.text, &docs, 3));
            gold.push(g);
        }
    }
    let ours = citation_prf(&ours, &gold);
    let lex = citation_prf(&lex, &gold);
    eprintln!("planted truth, 16 examples: ours {ours:?}; lexical {lex:?}");
    assert!(
        ours.f1 >= F1_FLOOR,
        "citation F1 {} below {F1_FLOOR}",
        ours.f1
    );
    // Far better than citing a random document (precision 1 / #documents on average).
    let random: f64 = set.iter().map(|e| 1.0 / e.docs.len() as f64).sum::<f64>() / set.len() as f64;
    assert!(
        ours.precision > 1.3 * random,
        "precision {} vs random {random}",
        ours.precision
    );
}

/// Floor for MIRAGE's citation F1 on the committed reader, 16 examples: measured 1.000 (lexical
/// overlap, at most 3 citations: F1 0.821); see benches/results/cite.md. The floor leaves room
/// for 3 wrong citations of 32 (f32 kernels differ across machines).
const F1_FLOOR: f64 = 0.9;

/// Leave-one-out scores equal the drops computed independently: CTI's unbatched, unpadded
/// teacher-forced forward (`token_stats`) after the prompt rendered without document i, summed
/// over the sentence's tokens. Tolerance 1e-3 nats: f32 sums over ~12 tokens of batched, padded
/// vs single forwards (measured ≤ 2e-5).
#[test]
fn leave_one_out_equals_independent_log_probability_drops() {
    let m = rag_model();
    let inference = burn::module::AutodiffModule::valid(&m.model);
    let opts = Options {
        template: template(),
        method: Method::LeaveOneOut,
        ..Options::default()
    };
    for ex in rag_set(3, 4242) {
        let req = Request {
            question: &ex.question,
            docs: &ex.docs,
            answer: Some(&ex.answer),
        };
        let a = attribute(&m.model, &m.tokenizer, None, &req, &opts).unwrap();
        let n = ex.docs.len();
        assert_eq!(
            a.passes.forwards,
            2 + n,
            "CTI + one forward per removed document"
        );
        assert_eq!(a.passes.backwards, 0);
        let answer: Vec<u32> = a.tokens.iter().map(|t| t.id).collect();
        for i in 0..n {
            let kept: Vec<_> = (0..n)
                .filter(|&j| j != i)
                .map(|j| ex.docs[j].clone())
                .collect();
            let pair = build_prompts(
                &m.tokenizer,
                &m.model.config,
                &template(),
                &ex.question,
                &kept,
                None,
            )
            .unwrap();
            let s = token_stats(
                &inference,
                &pair.with_docs.ids,
                &pair.without_docs.ids,
                &answer,
            )
            .unwrap();
            for sent in &a.sentences {
                let drop: f32 = sent
                    .tokens
                    .iter()
                    .map(|&t| a.tokens[t].logprob_ctx - s.lp_ctx[t])
                    .sum();
                assert!(
                    (drop - sent.doc_scores[i]).abs() < 1e-3,
                    "document {i}: {drop} vs {}",
                    sent.doc_scores[i]
                );
            }
        }
    }
}

/// ContextCite and leave-one-out on the committed model: citation F1 floors (16 examples) and
/// the pass counts the methods promise.
#[test]
fn ablation_methods_cite_the_planted_documents() {
    let m = rag_model();
    let set = rag_set(16, 777);
    for (method, floor) in [
        (Method::context_cite(), CONTEXT_CITE_F1_FLOOR),
        (Method::LeaveOneOut, LOO_F1_FLOOR),
    ] {
        // As `tda cite` ships them: the method's default minimum share (0.2 for ablations).
        let opts = Options {
            template: template(),
            method,
            min_share: method.default_min_share(),
            ..Options::default()
        };
        let (mut cites, mut gold) = (Vec::new(), Vec::new());
        for ex in &set {
            let req = Request {
                question: &ex.question,
                docs: &ex.docs,
                answer: Some(&ex.answer),
            };
            let a = attribute(&m.model, &m.tokenizer, None, &req, &opts).unwrap();
            let expected = match method {
                Method::ContextCite { masks, .. } => masks + 2,
                _ => ex.docs.len() + 2,
            };
            assert_eq!(a.passes.forwards, expected);
            for (s, &g) in a.sentences.iter().zip(&ex.gold) {
                cites.push(s.citations.clone());
                gold.push(g);
            }
        }
        let p = citation_prf(&cites, &gold);
        eprintln!("{}: {p:?}", method.name());
        assert!(
            p.f1 >= floor,
            "{}: F1 {} below {floor}",
            method.name(),
            p.f1
        );
    }
}

/// Floors (16 examples of `rag_set(16, 777)`, at most 3 citations, minimum share 0.2): measured
/// F1 1.000 for both (without the minimum share 0.66: every positive score is cited); see
/// benches/results/cite.md.
const CONTEXT_CITE_F1_FLOOR: f64 = 0.9;
const LOO_F1_FLOOR: f64 = 0.9;
