//! The fixed-data-order training of leave-some-out retrains (`train_subset`): keeping every
//! sequence is plain `train`, bit for bit; the content of a left-out sequence has no effect at all.

use burn::prelude::*;
use tda_model::device::CpuAutodiff;
use tda_model::{ModelConfig, Transformer};
use tda_train::{document_sequences, train, train_bpe, train_subset, TrainParams};

fn params() -> TrainParams {
    TrainParams {
        seq_len: 12,
        batch_size: 3,
        steps: 7,
        lr: 1e-2,
        warmup_steps: 1,
        min_lr_ratio: 0.1,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed: 5,
        checkpoint_every: 0,
        proximal: 0.0,
    }
}

fn seqs(salt: u32) -> Vec<Vec<u32>> {
    (0..8u32)
        .map(|i| {
            (0..12u32)
                .map(|t| (i * 7 + t * 3 + salt) % 40 + 1)
                .collect()
        })
        .collect()
}

/// The trained model's outputs on a probe batch (a fingerprint of its weights).
fn probe(m: &Transformer<CpuAutodiff>) -> Vec<f32> {
    let ids: Vec<i32> = (0..10).map(|t| t * 5 % 40 + 1).collect();
    let x = Tensor::<CpuAutodiff, 2, Int>::from_data(
        TensorData::new(ids, [1, 10]),
        &Default::default(),
    );
    m.forward(x).into_data().to_vec::<f32>().unwrap()
}

fn run(seqs: &[Vec<u32>], keep: Option<&[bool]>) -> Vec<f32> {
    let device = Default::default();
    let tok = train_bpe(["a b c d e f g h"].iter(), 260).unwrap();
    let model = Transformer::<CpuAutodiff>::init(&ModelConfig::gpt2(16, 1, 2, 64, 32), 1, &device);
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = match keep {
        None => train(model, &tok, seqs, &params(), dir.path(), &mut |_| {}),
        Some(k) => train_subset(
            model,
            &tok,
            seqs,
            Some(k),
            &params(),
            dir.path(),
            &mut |_| {},
        ),
    }
    .unwrap();
    probe(&m)
}

#[test]
fn document_sequences_follow_documents() {
    let docs = vec![vec![5, 6, 7], vec![], vec![8; 9]];
    let (s, owner) = document_sequences(&docs, 0, 4);
    let expected: Vec<Vec<u32>> = vec![
        vec![0, 5, 6, 7],
        vec![0, 0],
        vec![0, 8, 8, 8],
        vec![8, 8, 8, 8],
        vec![8, 8, 0],
    ];
    assert_eq!(s, expected);
    assert_eq!(owner, vec![0, 1, 2, 2, 2]);
}

#[test]
fn keeping_everything_is_train_and_left_out_content_has_no_effect() {
    let all = vec![true; 8];
    assert_eq!(
        run(&seqs(0), None),
        run(&seqs(0), Some(&all)),
        "keep all = train, bit for bit"
    );

    let mut keep = all.clone();
    keep[3] = false;
    let without = run(&seqs(0), Some(&keep));
    assert_ne!(
        without,
        run(&seqs(0), None),
        "leaving a sequence out changes the model"
    );
    // Replace the left-out sequence's content: nothing changes (it is never trained on, and the
    // others keep their order, steps and learning rates).
    let mut other = seqs(0);
    other[3] = seqs(17)[3].clone();
    assert_eq!(without, run(&other, Some(&keep)));
    // Whereas the same replacement in a kept sequence does change the model.
    let mut kept_changed = seqs(0);
    kept_changed[2] = seqs(17)[2].clone();
    assert_ne!(without, run(&kept_changed, Some(&keep)));
}
