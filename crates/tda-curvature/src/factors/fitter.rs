//! The streaming fitter: covariance pass, eigendecomposition, Λ pass, then [`Factors`].

use super::accumulate::{accumulate_covariance, accumulate_lambda, mirror_lower, LayerAcc};
use super::fitted::{kron_lambda, Eigenbasis, Factors, FitConfig, LayerFactors, Strategy};
use crate::error::{non_finite, CurvatureError, Result};
use crate::linalg::{partition, sym_eigen};
use crate::taps::{validate_batches, LayerBatch, LayerSpec};
use rayon::prelude::*;

/// A diagonal block `(offset, width)` of a factor.
pub type Block = (usize, usize);

/// Which pass the fitter expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Token-level covariances A and S.
    Covariance,
    /// Sequence-level Λ (after the eigendecomposition for `ekfac`).
    Lambda,
}

/// The sums of one pass over a slice of the data (a shard of a sharded fit): what a merge adds
/// up. Sums, not means: adding the sums of disjoint slices gives the sums of their union (exactly
/// up to f64 summation order).
#[derive(Clone, Debug, PartialEq)]
pub struct PassSums {
    pub pass: Pass,
    /// Real tokens (covariance pass; 0 in a Λ pass).
    pub tokens: u64,
    /// Sequences with at least one real token.
    pub sequences: u64,
    /// Per layer: the covariance pass's `Σ a aᵀ` blocks then `Σ g gᵀ` blocks (`[s_k, s_k]` each, in
    /// partition order), or the Λ pass's one `[d_out, d_a]` sum.
    pub layers: Vec<Vec<Vec<f64>>>,
}

/// Streaming fitter: run [`FactorFitter::add`] over the corpus for each pass reported by
/// [`FactorFitter::pass`], calling [`FactorFitter::end_pass`] after each, then [`FactorFitter::finish`].
///
/// ```ignore
/// let mut fit = FactorFitter::new(specs, FitConfig::new(Strategy::Ekfac))?;
/// while fit.pass().is_some() {
///     for batch in corpus { fit.add(&taps_of(batch))?; }
///     fit.end_pass()?;
/// }
/// let factors = fit.finish("model-fingerprint")?;
/// ```
pub struct FactorFitter {
    specs: Vec<LayerSpec>,
    config: FitConfig,
    pass: Option<Pass>,
    acc: Vec<LayerAcc>,
    tokens: u64,
    cov_sequences: u64,
    lambda_sequences: u64,
}

impl FactorFitter {
    pub fn new(specs: Vec<LayerSpec>, config: FitConfig) -> Result<Self> {
        Self::build(specs, config, config.strategy.needs_covariance())
    }

    /// The fitter at its first pass; the covariance accumulators only with `covariance`.
    fn build(specs: Vec<LayerSpec>, config: FitConfig, covariance: bool) -> Result<Self> {
        if specs.is_empty() {
            return Err(CurvatureError::Usage("no layers to fit".into()));
        }
        let mut names = std::collections::HashSet::new();
        for s in &specs {
            if s.d_out == 0 || s.d_a() == 0 {
                return Err(crate::error::shape_err(&s.name, "zero-sized layer"));
            }
            if !names.insert(s.name.clone()) {
                return Err(CurvatureError::Usage(format!(
                    "duplicate layer name {}",
                    s.name
                )));
            }
        }
        let st = config.strategy;
        let acc = specs
            .iter()
            .map(|s| {
                let a_blocks = partition(s.d_a(), config.max_block);
                let s_blocks = partition(s.d_out, config.max_block);
                LayerAcc {
                    cov_a: if covariance {
                        a_blocks.iter().map(|&(_, k)| vec![0.0; k * k]).collect()
                    } else {
                        vec![]
                    },
                    cov_s: if covariance {
                        s_blocks.iter().map(|&(_, k)| vec![0.0; k * k]).collect()
                    } else {
                        vec![]
                    },
                    a_blocks,
                    s_blocks,
                    a_basis: None,
                    s_basis: None,
                    lambda: vec![],
                }
            })
            .collect();
        let pass = if st.needs_covariance() {
            Some(Pass::Covariance)
        } else if st.needs_lambda() {
            Some(Pass::Lambda)
        } else {
            None
        };
        let mut f = Self {
            specs,
            config,
            pass,
            acc,
            tokens: 0,
            cov_sequences: 0,
            lambda_sequences: 0,
        };
        if pass == Some(Pass::Lambda) {
            f.alloc_lambda();
        }
        Ok(f)
    }

    /// A fitter at the start of the Λ pass, from the eigenbases (`(A, S)` per spec) and the counts
    /// of a covariance pass done elsewhere (the merged shards of a sharded fit, read back from a
    /// K-FAC factor file): continues exactly as the fitter that did the covariance pass would.
    pub fn resume_lambda(
        specs: Vec<LayerSpec>,
        config: FitConfig,
        bases: Vec<(Eigenbasis, Eigenbasis)>,
        tokens: u64,
        covariance_sequences: u64,
    ) -> Result<Self> {
        if config.strategy != Strategy::Ekfac {
            return Err(CurvatureError::Usage(format!(
                "only ekfac has a Λ pass after its eigenbases ({} does not)",
                config.strategy
            )));
        }
        if bases.len() != specs.len() {
            return Err(CurvatureError::Usage(format!(
                "{} eigenbases for {} layers",
                bases.len(),
                specs.len()
            )));
        }
        // No covariance accumulators: that pass was done elsewhere.
        let mut f = Self::build(specs, config, false)?;
        for ((acc, spec), (a, s)) in f.acc.iter_mut().zip(&f.specs).zip(bases) {
            if a.dim != spec.d_a()
                || s.dim != spec.d_out
                || a.blocks != acc.a_blocks
                || s.blocks != acc.s_blocks
            {
                return Err(crate::error::shape_err(
                    &spec.name,
                    "eigenbases do not match the layer or the block partition",
                ));
            }
            acc.a_basis = Some(a);
            acc.s_basis = Some(s);
        }
        f.tokens = tokens;
        f.cov_sequences = covariance_sequences;
        f.pass = Some(Pass::Lambda);
        f.alloc_lambda();
        Ok(f)
    }

    /// The sums of the current pass so far (call before [`FactorFitter::end_pass`]).
    pub fn sums(&self) -> Result<PassSums> {
        let pass = self
            .pass
            .ok_or_else(|| CurvatureError::Usage("all passes are done: no sums".into()))?;
        let layers = self
            .acc
            .iter()
            .map(|a| match pass {
                Pass::Covariance => {
                    let (mut ca, mut cs) = (a.cov_a.clone(), a.cov_s.clone());
                    mirror_lower(&mut ca, &a.a_blocks);
                    mirror_lower(&mut cs, &a.s_blocks);
                    ca.into_iter().chain(cs).collect()
                }
                Pass::Lambda => vec![a.lambda.clone()],
            })
            .collect();
        Ok(match pass {
            Pass::Covariance => PassSums {
                pass,
                tokens: self.tokens,
                sequences: self.cov_sequences,
                layers,
            },
            Pass::Lambda => PassSums {
                pass,
                tokens: 0,
                sequences: self.lambda_sequences,
                layers,
            },
        })
    }

    /// Adds the sums of a pass over another slice of the data (same pass, same layers and blocks).
    pub fn add_sums(&mut self, sums: &PassSums) -> Result<()> {
        if sums.layers.len() != self.acc.len() {
            return Err(CurvatureError::Usage(format!(
                "sums of {} layers for {} layers",
                sums.layers.len(),
                self.acc.len()
            )));
        }
        self.add_layer_sums(0, sums)
    }

    /// Adds the sums of the layers `first .. first + sums.layers.len()` (one batch's, made on the
    /// model's device, or a layer group's). Its tokens and sequences are counted only with the
    /// group that starts at layer 0, as in [`FactorFitter::add_layers`].
    pub fn add_layer_sums(&mut self, first: usize, sums: &PassSums) -> Result<()> {
        if self.pass != Some(sums.pass) {
            return Err(CurvatureError::Usage(format!(
                "sums of the {:?} pass given during the {:?} pass",
                sums.pass, self.pass
            )));
        }
        let end = first + sums.layers.len();
        if sums.layers.is_empty() || end > self.acc.len() {
            return Err(CurvatureError::Usage(format!(
                "sums for layers {first}..{end} of {} tracked layers",
                self.acc.len()
            )));
        }
        let layers = self.acc[first..end].iter_mut().zip(&self.specs[first..end]);
        for ((acc, spec), parts) in layers.zip(&sums.layers) {
            let mut targets: Vec<&mut Vec<f64>> = match sums.pass {
                Pass::Covariance => acc.cov_a.iter_mut().chain(acc.cov_s.iter_mut()).collect(),
                Pass::Lambda => vec![&mut acc.lambda],
            };
            if targets.len() != parts.len()
                || targets.iter().zip(parts).any(|(t, p)| t.len() != p.len())
            {
                return Err(crate::error::shape_err(
                    &spec.name,
                    "sums do not match the layer or the block partition",
                ));
            }
            for (t, p) in targets.iter_mut().zip(parts) {
                t.iter_mut().zip(p).for_each(|(x, y)| *x += y);
            }
        }
        if first == 0 {
            match sums.pass {
                Pass::Covariance => {
                    self.tokens += sums.tokens;
                    self.cov_sequences += sums.sequences;
                }
                Pass::Lambda => self.lambda_sequences += sums.sequences,
            }
        }
        Ok(())
    }

    /// The diagonal blocks `(offset, width)` of layer `layer`'s A side and S side.
    pub fn blocks(&self, layer: usize) -> (&[Block], &[Block]) {
        let acc = &self.acc[layer];
        (&acc.a_blocks, &acc.s_blocks)
    }

    /// The eigenbases `(Q_A, Q_S)` of layer `layer`, once the covariance pass has ended (`kfac`,
    /// `ekfac`; `None` before, and for strategies without them).
    pub fn eigenbases(&self, layer: usize) -> Option<(&Eigenbasis, &Eigenbasis)> {
        let acc = &self.acc[layer];
        acc.a_basis.as_ref().zip(acc.s_basis.as_ref())
    }

    /// The pass expected next (`None`: call [`FactorFitter::finish`]).
    pub fn pass(&self) -> Option<Pass> {
        self.pass
    }

    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }

    fn alloc_lambda(&mut self) {
        for (a, s) in self.acc.iter_mut().zip(&self.specs) {
            a.lambda = vec![0.0; s.n_params()];
        }
    }

    /// Feeds one batch of taps (one [`LayerBatch`] per spec, same order) to the current pass.
    pub fn add(&mut self, batches: &[LayerBatch<'_>]) -> Result<()> {
        if batches.len() != self.specs.len() {
            return validate_batches(&self.specs, batches);
        }
        self.add_layers(0, batches)
    }

    /// Feeds the taps of the layers `first .. first + batches.len()` of one batch (a layer group,
    /// when a batch's taps are made group by group within a memory budget). The batch's tokens
    /// and sequences are counted with the group that starts at layer 0, so every group of a batch
    /// must be added exactly once.
    pub fn add_layers(&mut self, first: usize, batches: &[LayerBatch<'_>]) -> Result<()> {
        let end = first + batches.len();
        if batches.is_empty() || end > self.specs.len() {
            return Err(CurvatureError::Usage(format!(
                "taps for layers {first}..{end} of {} tracked layers",
                self.specs.len()
            )));
        }
        let specs = &self.specs[first..end];
        validate_batches(specs, batches)?;
        let lead = &batches[0];
        let n_seq = (0..lead.batch)
            .filter(|&b| lead.real_rows(b).next().is_some())
            .count() as u64;
        let counted = first == 0;
        let acc = &mut self.acc[first..end];
        match self.pass {
            None => Err(CurvatureError::Usage(
                "all passes are done; call finish()".into(),
            )),
            Some(Pass::Covariance) => {
                specs
                    .par_iter()
                    .zip(acc.par_iter_mut())
                    .zip(batches.par_iter())
                    .for_each(|((spec, acc), lb)| accumulate_covariance(spec, acc, lb));
                if counted {
                    self.tokens += lead.mask.iter().filter(|&&m| m).count() as u64;
                    self.cov_sequences += n_seq;
                }
                Ok(())
            }
            Some(Pass::Lambda) => {
                let ekfac = self.config.strategy == Strategy::Ekfac;
                specs
                    .par_iter()
                    .zip(acc.par_iter_mut())
                    .zip(batches.par_iter())
                    .for_each(|((spec, acc), lb)| accumulate_lambda(spec, acc, lb, ekfac));
                if counted {
                    self.lambda_sequences += n_seq;
                }
                Ok(())
            }
        }
    }

    /// Ends the current pass: after the covariance pass, eigendecomposes A and S (all layers and
    /// blocks in parallel) and moves to the Λ pass if the strategy needs one.
    pub fn end_pass(&mut self) -> Result<()> {
        match self.pass {
            None => Err(CurvatureError::Usage("no pass in progress".into())),
            Some(Pass::Covariance) => {
                if self.tokens == 0 {
                    return Err(CurvatureError::Usage(
                        "covariance pass saw no real tokens".into(),
                    ));
                }
                let count = self.tokens as f64;
                for acc in &mut self.acc {
                    mirror_lower(&mut acc.cov_a, &acc.a_blocks);
                    mirror_lower(&mut acc.cov_s, &acc.s_blocks);
                }
                // Jobs: (layer, side A=0/S=1, block).
                let mut jobs = vec![];
                for (l, acc) in self.acc.iter().enumerate() {
                    for k in 0..acc.cov_a.len() {
                        jobs.push((l, 0usize, k));
                    }
                    for k in 0..acc.cov_s.len() {
                        jobs.push((l, 1usize, k));
                    }
                }
                let results: Vec<Result<(Vec<f64>, Vec<f64>)>> = jobs
                    .par_iter()
                    .map(|&(l, side, k)| {
                        let acc = &self.acc[l];
                        let name = &self.specs[l].name;
                        let (cov, blocks, what) = if side == 0 {
                            (&acc.cov_a[k], &acc.a_blocks, "A")
                        } else {
                            (&acc.cov_s[k], &acc.s_blocks, "S")
                        };
                        let s = blocks[k].1;
                        if !cov.iter().all(|x| x.is_finite()) {
                            return Err(non_finite(name, format!("covariance {what}")));
                        }
                        let m: Vec<f64> = cov.iter().map(|x| x / count).collect();
                        let (mut vals, vecs) =
                            sym_eigen(&m, s).map_err(|msg| CurvatureError::Numerical {
                                layer: name.clone(),
                                msg: format!("{what}: {msg}"),
                            })?;
                        if !vals.iter().all(|x| x.is_finite())
                            || !vecs.iter().all(|x| x.is_finite())
                        {
                            return Err(non_finite(name, format!("eigendecomposition of {what}")));
                        }
                        vals.iter_mut().for_each(|v| *v = v.max(0.0));
                        Ok((vals, vecs))
                    })
                    .collect();
                let mut results = results.into_iter();
                for acc in self.acc.iter_mut() {
                    let mut take = |blocks: &[(usize, usize)]| -> Result<Eigenbasis> {
                        let dim = blocks.iter().map(|b| b.1).sum();
                        let mut vals = Vec::with_capacity(dim);
                        let mut vecs = Vec::with_capacity(blocks.len());
                        for _ in blocks {
                            let (v, q) = results.next().expect("one result per job")?;
                            vals.extend(v.iter().map(|&x| x as f32));
                            vecs.push(q.iter().map(|&x| x as f32).collect());
                        }
                        Ok(Eigenbasis {
                            dim,
                            blocks: blocks.to_vec(),
                            vecs,
                            vals,
                        })
                    };
                    acc.a_basis = Some(take(&acc.a_blocks)?);
                    acc.s_basis = Some(take(&acc.s_blocks)?);
                    acc.cov_a = vec![];
                    acc.cov_s = vec![];
                }
                if self.config.strategy.needs_lambda() {
                    self.pass = Some(Pass::Lambda);
                    self.alloc_lambda();
                } else {
                    self.pass = None;
                }
                Ok(())
            }
            Some(Pass::Lambda) => {
                if self.lambda_sequences == 0 {
                    return Err(CurvatureError::Usage("lambda pass saw no sequences".into()));
                }
                self.pass = None;
                Ok(())
            }
        }
    }

    /// Builds the factors (only once all passes are done).
    pub fn finish(self, fingerprint: &str) -> Result<Factors> {
        if let Some(p) = self.pass {
            return Err(CurvatureError::Usage(format!(
                "finish() called during the {p:?} pass"
            )));
        }
        let st = self.config.strategy;
        let tbar = if self.cov_sequences > 0 {
            self.tokens as f64 / self.cov_sequences as f64
        } else {
            1.0
        };
        let mut layers = Vec::with_capacity(self.specs.len());
        for (spec, acc) in self.specs.into_iter().zip(self.acc) {
            let lambda = match st {
                Strategy::Identity => None,
                Strategy::Kfac => {
                    let (s, a) = (acc.s_basis.as_ref().unwrap(), acc.a_basis.as_ref().unwrap());
                    Some(kron_lambda(&s.vals, &a.vals, tbar))
                }
                Strategy::Diagonal | Strategy::Ekfac => {
                    let n = self.lambda_sequences as f64;
                    let l: Vec<f32> = acc.lambda.iter().map(|&x| (x / n) as f32).collect();
                    if !l.iter().all(|x| x.is_finite()) {
                        return Err(non_finite(&spec.name, "lambda"));
                    }
                    Some(l)
                }
            };
            layers.push(LayerFactors {
                spec,
                a_basis: acc.a_basis,
                s_basis: acc.s_basis,
                lambda,
            });
        }
        Ok(Factors {
            fingerprint: fingerprint.to_string(),
            strategy: st,
            max_block: self.config.max_block,
            tokens: self.tokens,
            covariance_sequences: self.cov_sequences,
            lambda_sequences: self.lambda_sequences,
            loss_targets: None,
            layers,
        })
    }
}
