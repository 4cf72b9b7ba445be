//! The two stages of multi-stage tracing: which preconditioners to apply ([`Hessians`]), the
//! fine-tuning damping `α` ([`FineTuneDamping`]), the fine-tuned side ([`FineTuned`]), what a
//! trace applied ([`StagesInfo`]) and the check that both models are of one family.

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::{proximal_in_fit_units, Damping, Factors};
use tda_model::{Tokenizer, Transformer};

use crate::error::{Result, TraceError};

/// Which preconditioners a multi-stage score applies (ablations of Bao et al. 2025).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hessians {
    /// `α(G_ft + αI)⁻¹` then `(G_pt + λI)⁻¹` (the multi-stage influence).
    #[default]
    Both,
    /// Only `α(G_ft + αI)⁻¹` (the reference code's benchmark variant).
    FineTune,
    /// Only `(G_pt + λI)⁻¹`, query gradient still at `θ_ft`.
    Pretrain,
    /// Neither: the gradient dot product across checkpoints.
    None,
}

impl Hessians {
    pub fn uses_fine_tune(self) -> bool {
        matches!(self, Self::Both | Self::FineTune)
    }
    pub fn uses_pretrain(self) -> bool {
        matches!(self, Self::Both | Self::Pretrain)
    }
}

impl std::str::FromStr for Hessians {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "both" => Ok(Self::Both),
            "fine-tune" => Ok(Self::FineTune),
            "pretrain" => Ok(Self::Pretrain),
            "none" => Ok(Self::None),
            _ => Err(format!("hessians {s:?}: both, fine-tune, pretrain or none")),
        }
    }
}

/// The fine-tuning damping `α` (the proximity of `θ_ft` to `θ_pt`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FineTuneDamping {
    /// The `--proximal` coefficient of the fine-tuning run (mean-token-loss units; converted to
    /// the factors' units as `α · T̄`).
    Proximal(f64),
    /// A damping in the factors' units, as `--damping` (`heuristic` = 0.1 × mean Λ_ft per layer).
    Damping(Damping),
}

impl FineTuneDamping {
    /// `α_l` per layer of `ft`, in `G_ft` units.
    pub fn per_layer(&self, ft: &Factors) -> Vec<f64> {
        match *self {
            Self::Proximal(a) => vec![proximal_in_fit_units(a, ft); ft.layers.len()],
            Self::Damping(d) => ft.layers.iter().map(|l| d.value(l)).collect(),
        }
    }
}

/// The fine-tuning side of a multi-stage trace.
pub struct FineTuned<'a, AD: AutodiffBackend> {
    /// `θ_ft`: the query gradients are taken here.
    pub model: &'a Transformer<AD>,
    /// `G_ft` (fitted at `θ_ft` on the fine-tuning data) and `α`; required by
    /// [`Hessians::Both`] and [`Hessians::FineTune`], unused otherwise.
    pub factors: Option<(&'a Factors, FineTuneDamping)>,
    pub hessians: Hessians,
}

/// The fine-tuned and the pretrained model must share the architecture (equal configs) and the
/// tokenizer (equal vocabularies); the error names both folders.
pub fn check_same_family(
    ft: (&std::path::Path, &tda_model::ModelConfig, &Tokenizer),
    pt: (&std::path::Path, &tda_model::ModelConfig, &Tokenizer),
) -> Result<()> {
    let names = format!(
        "--model {} and --pretrain-model {}",
        ft.0.display(),
        pt.0.display()
    );
    if ft.1 != pt.1 {
        return Err(TraceError::Usage(format!(
            "{names} have different architectures (their config.json differ: {:?} {} layers × {} vs {:?} {} layers × {})",
            ft.1.arch, ft.1.n_layers, ft.1.hidden, pt.1.arch, pt.1.n_layers, pt.1.hidden
        )));
    }
    if ft.2.get_vocab(true) != pt.2.get_vocab(true) {
        return Err(TraceError::Usage(format!(
            "{names} have different tokenizers (their vocabularies differ)"
        )));
    }
    Ok(())
}

/// What a multi-stage trace applied (in [`TraceOutput::stages`]).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StagesInfo {
    pub hessians: Hessians,
    /// How `α` was chosen, e.g. `proximal 0.01 × T̄ 63.0`.
    pub fine_tune_damping: Option<String>,
    /// Mean of `α_l` over layers (factor units).
    pub alpha_mean: Option<f64>,
}
