//! Self-influence `∇L(z)ᵀ (G + λI)⁻¹ ∇L(z)` of candidate windows (outliers, mislabeled or
//! memorised examples first).

use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use tda_curvature::{Damping, Factors};
use tda_model::{frozen, Tokenizer, Transformer};

use crate::candidates::{for_each_batch, DocSource, PassStats, WindowOptions};
use crate::error::Result;
use crate::host::{host_taps, Labels, Scalar};
use crate::keep::{to_row, DocSums, Keeper, Kept};
use crate::output::Granularity;
use crate::output::ResultRow;

/// Self-influence `∇L(z)ᵀ (G + λI)⁻¹ ∇L(z)` of every candidate window; returns the `top_k`
/// largest (outliers / hard examples first), or all when `top_k` is `None`, and what the pass read.
/// With [`Granularity::Document`] a document is ranked by its most self-influential window (the
/// self-influence of a whole document is not the sum over its windows: it has cross terms), and
/// its row says how many windows it has.
#[allow(clippy::too_many_arguments)]
pub fn self_influence<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    source: &DocSource,
    damping: Damping,
    top_k: Option<usize>,
    windows: &WindowOptions,
    granularity: Granularity,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<(Vec<ResultRow>, PassStats)> {
    let fz = frozen(model);
    let specs = factors.specs();
    let pad = model.config.eos_token_id.unwrap_or(0);
    let mut keeper = Keeper::new(1, top_k, false);
    let mut docs = (granularity == Granularity::Document).then(|| DocSums::best_window(1));
    let mut done = 0;
    let pass = for_each_batch(source, tokenizer, &model.config, windows, |cands, bytes| {
        let batch = crate::candidates::candidate_batch(cands, pad)?;
        let taps = host_taps(&fz, &specs, &batch, Scalar::Loss(Labels::Data))?;
        let si = tda_curvature::self_influence(factors, damping, &taps.layer_batches())?;
        for (c, s) in cands.iter().zip(si) {
            let k = Kept {
                cand: Arc::new(c.clone()),
                per_token: None,
                per_layer: None,
                doc: None,
            };
            match &mut docs {
                Some(d) => d.push(&mut keeper, 0, s, k),
                None => keeper.push(0, s, k),
            }
        }
        done += cands.len();
        progress(done, bytes);
        Ok(())
    })?;
    if let Some(d) = &mut docs {
        d.flush(&mut keeper);
    }
    let rows = keeper
        .finish()?
        .pop()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(r, (s, k))| to_row(r, s, &k, tokenizer, &specs))
        .collect();
    Ok((rows, pass))
}
