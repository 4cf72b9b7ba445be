//! Factor file round trip and failure modes (errors, never panics; messages name the file).

mod common;
use common::*;
use std::path::PathBuf;
use tda_curvature::storage::{load, load_for, save};
use tda_curvature::*;

fn specs() -> Vec<LayerSpec> {
    vec![
        LayerSpec::new("model.layers.0.mlp.gate_proj", 11, 9, false),
        LayerSpec::new("model.layers.0.mlp.down_proj", 9, 11, true),
    ]
}

fn taps(rng: &mut Rng, b: usize, t: usize) -> Vec<Taps> {
    specs()
        .iter()
        .map(|s| {
            let mut x = Taps::new(b, t, s.d_in, s.d_out);
            x.mask
                .iter_mut()
                .enumerate()
                .for_each(|(i, m)| *m = i % t < t - (i / t) % 2);
            for r in 0..b * t {
                if x.mask[r] {
                    x.a[r * s.d_in..(r + 1) * s.d_in]
                        .iter_mut()
                        .for_each(|v| *v = rng.normal() as f32);
                    x.g[r * s.d_out..(r + 1) * s.d_out]
                        .iter_mut()
                        .for_each(|v| *v = rng.normal() as f32);
                }
            }
            x
        })
        .collect()
}

fn fitted(cfg: FitConfig) -> Factors {
    let mut rng = Rng::new(3);
    let data: Vec<Vec<Taps>> = (0..2).map(|_| taps(&mut rng, 6, 4)).collect();
    let mut f = FactorFitter::new(specs(), cfg).unwrap();
    while f.pass().is_some() {
        for d in &data {
            f.add(&views(d)).unwrap();
        }
        f.end_pass().unwrap();
    }
    f.finish("gpt2-small@abc123").unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tda-curvature-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn round_trip_all_strategies() {
    let dir = tmpdir("roundtrip");
    let mut rng = Rng::new(9);
    let (q, c) = (taps(&mut rng, 3, 4), taps(&mut rng, 4, 4));
    for cfg in [
        FitConfig::new(Strategy::Identity),
        FitConfig::new(Strategy::Diagonal),
        FitConfig::new(Strategy::Kfac),
        FitConfig::new(Strategy::Ekfac),
        FitConfig::new(Strategy::Ekfac).with_max_block(4),
    ] {
        let mut f = fitted(cfg);
        // Recorded loss targets round-trip too (absent = None, as in older files).
        if cfg.max_block.is_some() {
            f.loss_targets = Some(41);
        }
        let path = dir.join(format!("{}-{:?}.safetensors", cfg.strategy, cfg.max_block));
        save(&f, &path).unwrap();
        let g = load_for(&path, "gpt2-small@abc123", &specs()).unwrap();
        assert_eq!(f, g, "{cfg:?}: factors differ after round trip");
        // Scores identical bit for bit.
        let score = |fac: &Factors| {
            let qg = query_gradients(&specs(), &views(&q)).unwrap();
            let pq = precondition(fac, Damping::default(), &qg, Rank::Truncated(3)).unwrap();
            score_candidates(&QueryBatch::new(&specs(), &pq).unwrap(), &views(&c)).unwrap()
        };
        assert_eq!(score(&f), score(&g));
    }
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_truncated_and_mismatched_files_are_errors() {
    let dir = tmpdir("corrupt");
    let f = fitted(FitConfig::new(Strategy::Ekfac));
    let path = dir.join("f.safetensors");
    save(&f, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let one_line = |e: CurvatureError, p: &PathBuf| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "multi-line error: {s}");
        assert!(
            s.contains(&p.display().to_string()),
            "error does not name the file: {s}"
        );
        s
    };

    // Fingerprint mismatch.
    let e = load(&path, Some("llama-3-8b@def")).unwrap_err();
    assert!(matches!(e, CurvatureError::Fingerprint { .. }));
    one_line(e, &path);
    // Wrong layers.
    let mut other = specs();
    other[1].d_out = 12;
    let e = load_for(&path, "gpt2-small@abc123", &other).unwrap_err();
    let s = one_line(e, &path);
    assert!(s.contains("layer mismatch"), "{s}");

    // Truncated at several points, including inside the header.
    for cut in [0, 5, 8, 40, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.join(format!("trunc{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = load(&p, None).unwrap_err();
        one_line(e, &p);
    }
    // Garbage, and a flipped byte in the JSON header.
    let p = dir.join("garbage.safetensors");
    std::fs::write(&p, b"definitely not safetensors at all, just text").unwrap();
    one_line(load(&p, None).unwrap_err(), &p);
    let mut flipped = bytes.clone();
    flipped[12] ^= 0x55;
    let p = dir.join("flipped.safetensors");
    std::fs::write(&p, &flipped).unwrap();
    one_line(load(&p, None).unwrap_err(), &p);
    // A NaN written into Λ's data is caught (data region: patch the last 4 bytes of the file,
    // which belong to some tensor, with a NaN).
    let mut nan = bytes.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = dir.join("nan.safetensors");
    std::fs::write(&p, &nan).unwrap();
    let s = one_line(load(&p, None).unwrap_err(), &p);
    assert!(s.contains("NaN"), "{s}");
    // Missing file → I/O error naming the file.
    let p = dir.join("missing.safetensors");
    one_line(load(&p, None).unwrap_err(), &p);
    // A valid safetensors file from elsewhere (no metadata) is rejected.
    let p = dir.join("foreign.safetensors");
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    safetensors::serialize_to_file(vec![("w", view)], None, &p).unwrap();
    one_line(load(&p, None).unwrap_err(), &p);
    std::fs::remove_dir_all(&dir).unwrap();
}
