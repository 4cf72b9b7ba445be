//! Gradient taps against autodiff: Σ_t g_t a_tᵀ equals the weight gradient (and Σ_t g_t the bias
//! gradient) of every linear layer of every architecture; per-sequence taps in a padded batch
//! equal those computed one sequence at a time; the input-embedding gradient scatters to the
//! embedding-weight gradient; with tied embeddings, the `lm_head` tap plus that scatter is the tied
//! weight's gradient.
//!
//! Tolerance: f32 throughout; the two sides sum the same products in different orders, so we
//! allow 1e-5 relative to the largest entry (observed ~1e-7).

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use tda_model::device::CpuAutodiff;
use tda_model::{summed_nll, tap_with_gradients, Arch, ModelConfig, TokenBatch, Transformer};

type AD = CpuAutodiff;

fn tiny(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 53,
        hidden: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: if arch == Arch::Gpt2 { 4 } else { 2 },
        head_dim: 4,
        intermediate: 24,
        max_positions: 32,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_embeddings: arch != Arch::Llama,
        qkv_bias: arch != Arch::Llama,
        o_bias: arch == Arch::Gpt2,
        mlp_bias: arch == Arch::Gpt2,
        bos_token_id: Some(0),
        eos_token_id: Some(0),
        sliding_window: None,
    }
}

/// A model with weights large enough that gradients are not tiny.
fn model(arch: Arch) -> Transformer<AD> {
    let cfg = tiny(arch);
    let mut w = tda_model::model::init_weights(&cfg, 7);
    for t in w.values_mut() {
        if t.shape.len() == 2 {
            t.data.iter_mut().for_each(|x| *x *= 10.0);
        }
    }
    Transformer::from_weights(&cfg, &w, &Default::default()).unwrap()
}

fn vec2(t: Tensor<<AD as AutodiffBackend>::InnerBackend, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        scale > 1e-6,
        "{name}: gradient is zero, the test would be vacuous"
    );
    assert!(
        err <= 1e-5 * scale,
        "{name}: max |diff| {err} vs scale {scale}"
    );
}

fn seqs() -> Vec<Vec<u32>> {
    vec![vec![0, 5, 9, 12, 3, 44, 7, 8, 21], vec![0, 17, 2, 33, 50]]
}

#[test]
fn taps_reconstruct_weight_and_bias_gradients() {
    for arch in [Arch::Gpt2, Arch::Llama, Arch::Qwen2] {
        let m = model(arch);
        let batch = TokenBatch::new(&seqs(), 0).unwrap();
        let ids = batch.to_tensor::<AD>(&Default::default());
        let (taps, grads) = tap_with_gradients(&m, ids, &|_: &str| true, false, |logits| {
            summed_nll(logits, &batch)
        });
        let mut linears: Vec<_> = m.blocks.iter().flat_map(|b| b.linears()).collect();
        linears.extend(m.lm_head.iter());
        assert_eq!(
            taps.layers.len(),
            linears.len() + usize::from(m.lm_head.is_none()),
            "{arch:?}"
        );
        for lin in linears {
            let tap = taps
                .layers
                .iter()
                .find(|t| t.name == lin.name)
                .expect("tap for every layer");
            let [b, t, din] = tap.a.dims();
            let dout = tap.g.dims()[2];
            let a = tap.a.clone().reshape([b * t, din]);
            let g = tap.g.clone().reshape([b * t, dout]);
            let dw = a.transpose().matmul(g.clone());
            let want = lin.weight.val().grad(&grads).expect("weight grad");
            assert_close(
                &format!("{arch:?} {}.weight", lin.name),
                &vec2(dw),
                &vec2(want),
            );
            if let Some(bias) = &lin.bias {
                let db = g.sum_dim(0);
                let want = bias.val().grad(&grads).expect("bias grad");
                assert_close(
                    &format!("{arch:?} {}.bias", lin.name),
                    &vec2(db),
                    &want.into_data().convert::<f32>().to_vec().unwrap(),
                );
            }
            assert_eq!(tap.has_bias, lin.bias.is_some());
        }
    }
}

#[test]
fn batched_taps_equal_one_by_one() {
    for arch in [Arch::Gpt2, Arch::Llama, Arch::Qwen2] {
        let m = tda_model::frozen(&model(arch));
        let all = seqs();
        let batch = TokenBatch::new(&all, 0).unwrap();
        let run = |b: &TokenBatch| {
            let ids = b.to_tensor::<AD>(&Default::default());
            tda_model::tap(&m, ids, &|_: &str| true, true, |logits| {
                summed_nll(logits, b)
            })
        };
        let joint = run(&batch);
        for (i, s) in all.iter().enumerate() {
            let single = run(&TokenBatch::new(std::slice::from_ref(s), 0).unwrap());
            let n = s.len();
            for (lj, ls) in joint.layers.iter().zip(&single.layers) {
                for (name, x, y) in [("a", &lj.a, &ls.a), ("g", &lj.g, &ls.g)] {
                    let d = x.dims()[2];
                    let xi = x.clone().narrow(0, i, 1).narrow(1, 0, n).reshape([n, d]);
                    let yi = y.clone().reshape([n, d]);
                    assert_close(
                        &format!("{arch:?} seq {i} {} {name}", lj.name),
                        &vec2(xi),
                        &vec2(yi),
                    );
                }
            }
            let d = joint.input_grad.as_ref().unwrap().dims()[2];
            let xi = joint
                .input_grad
                .clone()
                .unwrap()
                .narrow(0, i, 1)
                .narrow(1, 0, n)
                .reshape([n, d]);
            let yi = single.input_grad.clone().unwrap().reshape([n, d]);
            assert_close(
                &format!("{arch:?} seq {i} input grad"),
                &vec2(xi),
                &vec2(yi),
            );
        }
        // Padding rows get no gradient.
        let g = &joint.layers[0].g;
        let pad = g
            .clone()
            .narrow(0, 1, 1)
            .narrow(1, all[1].len(), all[0].len() - all[1].len());
        assert_eq!(
            pad.abs().max().into_scalar(),
            0.0,
            "{arch:?}: gradient on padding"
        );
    }
}

#[test]
fn input_gradient_scatters_to_embedding_gradient() {
    // Llama here is untied, so the embedding weight gradient comes from the lookup alone.
    let m = model(Arch::Llama);
    let batch = TokenBatch::new(&seqs(), 0).unwrap();
    let ids = batch.to_tensor::<AD>(&Default::default());
    // Asking for the input gradient cuts the graph at the embeddings, so the embedding-weight
    // gradient comes from a second, plain backward.
    let (taps, _) = tap_with_gradients(&m, ids.clone(), &|_: &str| false, true, |logits| {
        summed_nll(logits, &batch)
    });
    let (_, grads) = tap_with_gradients(&m, ids, &|_: &str| false, false, |logits| {
        summed_nll(logits, &batch)
    });
    let eg = taps.input_grad.expect("input grad");
    let [_, t, d] = eg.dims();
    let eg = vec2(eg.reshape([batch.batch * t, d]));
    let mut scattered = vec![0f32; m.config.vocab_size * d];
    for (row, &id) in batch.ids.iter().enumerate() {
        for k in 0..d {
            scattered[id as usize * d + k] += eg[row * d + k];
        }
    }
    let want = vec2(m.embed.val().grad(&grads).unwrap());
    assert_close("embedding scatter", &scattered, &want);
}

/// Tied embeddings (GPT-2 here): the `lm_head` tap is the output-projection use of the embedding
/// matrix only, so the tied weight's full gradient is that tap's `(aᵀg)ᵀ` plus the lookup's
/// scatter of the input gradient — what `tda fit --modules all` tracks for a tied model is the
/// first term alone (Kronfluence's convention for a tied `nn.Linear`).
#[test]
fn tied_lm_head_tap_is_the_output_projection_part() {
    let m = model(Arch::Gpt2);
    assert!(m.config.tie_embeddings && m.lm_head.is_none());
    let batch = TokenBatch::new(&seqs(), 0).unwrap();
    let ids = batch.to_tensor::<AD>(&Default::default());
    let head = |n: &str| n == "lm_head";
    let (taps, _) = tap_with_gradients(&m, ids.clone(), &head, true, |logits| {
        summed_nll(logits, &batch)
    });
    let (_, grads) = tap_with_gradients(&m, ids, &|_: &str| false, false, |logits| {
        summed_nll(logits, &batch)
    });
    let (v, d) = (m.config.vocab_size, m.config.hidden);
    let tap = &taps.layers[0];
    assert_eq!(tap.name, "lm_head");
    let rows = batch.batch * batch.seq_len;
    let a = tap.a.clone().reshape([rows, d]);
    let g = tap.g.clone().reshape([rows, v]);
    let projection = vec2(g.transpose().matmul(a)); // [V, d], the embedding's layout
    let eg = vec2(taps.input_grad.expect("input grad").reshape([rows, d]));
    let mut lookup = vec![0f32; v * d];
    for (row, &id) in batch.ids.iter().enumerate() {
        for k in 0..d {
            lookup[id as usize * d + k] += eg[row * d + k];
        }
    }
    let full = vec2(m.embed.val().grad(&grads).unwrap());
    let sum: Vec<f32> = projection.iter().zip(&lookup).map(|(p, l)| p + l).collect();
    assert_close("tied embedding = projection + lookup", &sum, &full);
    // Neither part alone is the full gradient (the test would be vacuous otherwise).
    let off = |x: &[f32]| {
        x.iter()
            .zip(&full)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    };
    let scale = full.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(off(&projection) > 1e-3 * scale && off(&lookup) > 1e-3 * scale);
}

/// `tap_positions` (the unembedding on the selected positions only) gives the same input gradient
/// and the same taps of the blocks as `tap` with the positions selected from the full logits, for
/// every architecture.
#[test]
fn tap_positions_equals_selecting_from_all_logits() {
    for arch in [Arch::Gpt2, Arch::Llama, Arch::Qwen2] {
        let m = tda_model::frozen(&model(arch));
        let batch = TokenBatch::new(&seqs(), 0).unwrap();
        let device = Default::default();
        let ids = batch.to_tensor::<AD>(&device);
        let len = batch.seq_len;
        // Row 0 position 6, row 1 position 3 (flat r·len + i), against targets 9 and 40.
        let pos = [6, len + 3];
        let int1 = |x: &[usize]| {
            Tensor::<AD, 1, Int>::from_data(
                TensorData::new(x.iter().map(|&v| v as i32).collect(), [x.len()]),
                &device,
            )
        };
        let measure = |rows: Tensor<AD, 2>| {
            let lp = burn::tensor::activation::log_softmax(rows, 1);
            lp.gather(1, int1(&[9, 40]).reshape([2, 1])).sum()
        };
        let blocks = |name: &str| name != "lm_head";
        let want = tda_model::tap(&m, ids.clone(), &blocks, true, |logits: Tensor<AD, 3>| {
            let v = logits.dims()[2];
            measure(logits.reshape([2 * len, v]).select(0, int1(&pos)))
        });
        let got = tda_model::tap_positions(&m, ids, int1(&pos), &blocks, true, measure);
        assert!((got.value - want.value).abs() <= 1e-5 * want.value.abs().max(1.0));
        let flat = |t: Tensor<<AD as AutodiffBackend>::InnerBackend, 3>| {
            let [b, t_, d] = t.dims();
            vec2(t.reshape([b * t_, d]))
        };
        assert_close(
            "input gradient",
            &flat(got.input_grad.unwrap()),
            &flat(want.input_grad.unwrap()),
        );
        assert_eq!(got.layers.len(), want.layers.len());
        for (g, w) in got.layers.iter().zip(&want.layers) {
            assert_close(&g.name, &flat(g.g.clone()), &flat(w.g.clone()));
        }
    }
}
