//! Which linear layers are tracked: the transformer blocks (default, as Grosse et al. 2023: no
//! unembedding), all of them (`lm_head` included), the MLPs only, or comma-separated name patterns
//! (`*` matches any run of characters; a pattern without `*` matches names containing it).
//!
//! Tied embeddings (`tie_word_embeddings`, GPT-2): `lm_head` is then the embedding matrix used as
//! the output projection. When it is tracked (`all`, or a pattern naming it), its taps are those of
//! that use only — `∂L/∂W = gᵀa` through the output projection, not the lookup's scatter
//! `Σ_t e_{id_t} ∂L/∂x_tᵀ` — which is Kronfluence's convention for a tied `nn.Linear` (a hooked
//! module sees its own inputs and output gradients). The tied parameter's full gradient is the sum
//! of both (`tda-model/tests/taps.rs` checks it); the default excludes `lm_head`.

use std::str::FromStr;

use tda_curvature::LayerSpec;
use tda_model::LinearInfo;

use crate::error::{Result, TraceError};

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ModuleSelection {
    /// Every linear layer, `lm_head` included.
    All,
    /// Every linear layer of the transformer blocks (no `lm_head`).
    #[default]
    Blocks,
    /// MLP layers only (`.mlp.` in the HF name).
    Mlp,
    /// Name patterns.
    Patterns(Vec<String>),
}

impl FromStr for ModuleSelection {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "blocks" => Ok(Self::Blocks),
            "mlp" => Ok(Self::Mlp),
            _ => {
                let p: Vec<String> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect();
                if p.is_empty() {
                    Err("empty module selection (all, blocks, mlp, or name patterns)".into())
                } else {
                    Ok(Self::Patterns(p))
                }
            }
        }
    }
}

/// Glob with `*` only; without `*`, substring match.
fn glob(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(part) {
                return false;
            }
            rest = &rest[part.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(at) = rest.find(part) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

impl ModuleSelection {
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Blocks => name != "lm_head",
            Self::Mlp => name.contains(".mlp."),
            Self::Patterns(p) => p.iter().any(|p| glob(p, name)),
        }
    }

    /// The tracked layers of a model, in forward order. Errors when nothing matches, or when a
    /// layer is too wide for full covariances and `max_block` is not set.
    pub fn specs(&self, layers: &[LinearInfo], max_block: Option<usize>) -> Result<Vec<LayerSpec>> {
        let specs: Vec<LayerSpec> = layers
            .iter()
            .filter(|l| self.wants(&l.name))
            .map(|l| LayerSpec::new(l.name.clone(), l.d_in, l.d_out, l.has_bias))
            .collect();
        if specs.is_empty() {
            return Err(TraceError::Usage(format!(
                "no linear layer matches the module selection {self:?} (first layers: {})",
                layers
                    .iter()
                    .take(4)
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        const MAX_FULL: usize = 16_384;
        if max_block.is_none() {
            if let Some(s) = specs.iter().find(|s| s.d_out.max(s.d_a()) > MAX_FULL) {
                return Err(TraceError::Usage(format!(
                    "layer {} is {}×{}: too wide for full covariances; use --max-block 4096 (block-diagonal A/S) or --modules blocks",
                    s.name,
                    s.d_out,
                    s.d_a()
                )));
            }
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_presets() {
        assert!(glob("*.mlp.*", "transformer.h.0.mlp.c_fc"));
        assert!(!glob("*.mlp.*", "transformer.h.0.attn.c_attn"));
        assert!(glob("transformer.h.1*", "transformer.h.1.attn.c_proj"));
        assert!(!glob("transformer.h.1*", "transformer.h.0.attn.c_proj"));
        assert!(glob("c_fc", "transformer.h.0.mlp.c_fc"));
        assert!(glob("*c_fc", "transformer.h.0.mlp.c_fc"));
        assert!(!glob("*c_f", "transformer.h.0.mlp.c_fc"));
        let sel: ModuleSelection = "h.0.,lm_head".parse().unwrap();
        assert!(sel.wants("transformer.h.0.mlp.c_fc") && sel.wants("lm_head"));
        assert!(!sel.wants("transformer.h.1.mlp.c_fc"));
        assert!(!ModuleSelection::Blocks.wants("lm_head"));
        assert!(ModuleSelection::Mlp.wants("model.layers.3.mlp.down_proj"));
        let layers = vec![
            LinearInfo {
                name: "x.mlp.up".into(),
                d_in: 4,
                d_out: 20_000,
                has_bias: false,
            },
            LinearInfo {
                name: "lm_head".into(),
                d_in: 4,
                d_out: 8,
                has_bias: false,
            },
        ];
        assert!(ModuleSelection::All.specs(&layers, None).is_err());
        assert_eq!(
            ModuleSelection::All
                .specs(&layers, Some(4096))
                .unwrap()
                .len(),
            2
        );
        assert!("nothing"
            .parse::<ModuleSelection>()
            .unwrap()
            .specs(&layers, None)
            .is_err());
    }
}
