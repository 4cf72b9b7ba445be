//! The context path's layer attribution is the first-order term ∂log p/∂o_l · o_l of each residual
//! write o_l: checked against a central finite difference of log p when o_l is scaled by 1 ± ε
//! (scaling the output projection's weight and bias scales its output exactly).

use std::path::PathBuf;

use burn::module::AutodiffModule;
use tda_context::ablation::teacher_forced;
use tda_explain::layers::residual_write_shares;
use tda_model::device::{Cpu, CpuAutodiff};
use tda_model::Transformer;

#[test]
fn residual_write_scores_equal_finite_differences() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/rag");
    let m = tda_model::load_folder::<CpuAutodiff>(&dir, &Default::default()).unwrap();
    let enc = |s: &str| m.tokenizer.encode(s, false).unwrap().get_ids().to_vec();
    let prompt =
        enc("Question: Where was Zek Bo born?\n\nDocument [1]: Zek Bo was born in Tarn.\nAnswer:");
    let answer = enc(" Zek Bo was born in Tarn.");
    let targets = [0usize, 5, answer.len() - 2];
    let shares = residual_write_shares(&m.model, &prompt, &answer, &targets, 2).unwrap();
    let inner: Transformer<Cpu> = m.model.valid();
    let weights = inner.to_weights();
    let eps = 1e-2f32;
    for (layer, module) in [
        ("block 0 attention", "model.layers.0.self_attn.o_proj"),
        ("block 2 MLP", "model.layers.2.mlp.down_proj"),
    ] {
        let lp_at = |scale: f32| {
            let mut w = weights.clone();
            for suffix in ["weight", "bias"] {
                if let Some(t) = w.get_mut(&format!("{module}.{suffix}")) {
                    t.data.iter_mut().for_each(|x| *x *= scale);
                }
            }
            let model =
                Transformer::<Cpu>::from_weights(&inner.config, &w, &Default::default()).unwrap();
            teacher_forced(&model, std::slice::from_ref(&prompt), &answer, 1)
                .unwrap()
                .remove(0)
        };
        let (up, down) = (lp_at(1.0 + eps), lp_at(1.0 - eps));
        for (r, &t) in targets.iter().enumerate() {
            let fd = f64::from((up[t] - down[t]) / (2.0 * eps));
            let got = shares[r].iter().find(|s| s.layer == layer).unwrap().score;
            assert!(
                (fd - got).abs() <= 2e-2 * fd.abs().max(got.abs()) + 2e-3,
                "{layer}, token {t}: finite difference {fd} vs {got}"
            );
        }
    }
    for s in &shares {
        assert_eq!(s.len(), 6, "attention and MLP of 3 blocks");
        assert!((s.iter().map(|x| x.share).sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
