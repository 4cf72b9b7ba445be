//! Prints the attribution of a few planted-truth examples (selected tokens, their top document,
//! the citations vs the planted document), and writes the HTML report of the first one:
//!
//! ```sh
//! cargo run --release -p tda-eval --example cite_planted -- tests/fixtures/rag 3 /tmp/cite.html
//! ```

use tda_context::{attribute, Options, Request};
use tda_eval::rag::{rag_set, template};
use tda_model::device::CpuAutodiff;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).map_or("tests/fixtures/rag", String::as_str));
    let n: usize = args.get(2).map_or(3, |s| s.parse().expect("count"));
    let m = tda_model::load_folder::<CpuAutodiff>(&dir, &Default::default()).expect("model");
    let opts = Options {
        template: template(),
        ..Options::default()
    };
    for (k, ex) in rag_set(n, 20_241_112).iter().enumerate() {
        let req = Request {
            question: &ex.question,
            docs: &ex.docs,
            answer: Some(&ex.answer),
        };
        let a = attribute(&m.model, &m.tokenizer, None, &req, &opts).expect("attribute");
        println!("Q: {}", ex.question);
        for (i, d) in ex.docs.iter().enumerate() {
            println!("  [{}] {}", i + 1, d.text);
        }
        println!("A: {}   (gold {:?})", a.answer_with_citations, ex.gold);
        for t in &a.tokens {
            println!(
                "    {:>3} {:<14} kl {:7.3} {} lp_ctx {:6.2} lp_noctx {:6.2} contrast {:<10} top {:?} {:?}",
                t.index,
                format!("{:?}", t.text),
                t.cti,
                if t.selected { "*" } else { " " },
                t.logprob_ctx,
                t.logprob_noctx,
                format!("{:?}", t.contrast),
                t.top_doc,
                t.doc_scores_unfiltered.as_ref().map(|v| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>())
            );
        }
        if k == 0 {
            if let Some(p) = args.get(3) {
                tda_io::write_file(std::path::Path::new(p), a.to_html().as_bytes()).expect("html");
            }
        }
    }
}
