//! Memory budget of one model batch: how many windows go through one forward + backward, and
//! whether the tracked layers' taps are made layer group by layer group (one forward + backward
//! per group) so that a batch never holds more than the budget.
//!
//! Estimated bytes of one window of `t` tokens (f32 everywhere):
//! - logits `[t, V]` three times (logits, log-softmax, their gradient), four with sampled labels
//!   (the sampler's transients, bounded by 256 positions at a time: at most one more copy);
//! - the autodiff graph: every linear layer's input `[t, d_in]` (kept whether tracked or not) and
//!   attention scores and probabilities `[h, t, t]` per block;
//! - per tracked layer, its taps `a [t, d_in]`, `g [t, d_out]` twice (on the device and the
//!   host copy).
//!
//! The estimate is what the buffers need, not the allocator's peak; the default budget
//! ([`MemoryBudget::auto`]) is a quarter of this machine's memory, which leaves room for the model,
//! the factors and the allocator. Windows per forward and layer groups only change how taps are
//! made: every consumer sums per sequence and per layer, so scores and factors do not depend on
//! them (to f32 rounding of the covariance sums' order).

use std::ops::Range;
use std::str::FromStr;

use tda_curvature::LayerSpec;
use tda_model::ModelConfig;

use crate::error::{Result, TraceError};

/// Bytes one batch's taps, logits and graph may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget(pub u64);

impl MemoryBudget {
    /// A quarter of this machine's memory (the cgroup limit when there is one), at least 1 GiB.
    pub fn auto() -> Self {
        let total = system_memory().unwrap_or(16 << 30);
        Self((total / 4).max(1 << 30))
    }
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / (1u64 << 30) as f64)
    }
}

/// `8GiB`, `512MiB`, `2G`, `1.5GB`, `300M`, or a number of bytes; K/M/G/T are binary (×1024).
impl FromStr for MemoryBudget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let x: f64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected a size such as 8GiB, 512MiB or 2G"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            u => return Err(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB)")),
        };
        let bytes = x * mult as f64;
        if !(1.0..1e18).contains(&bytes) {
            return Err(format!("{s:?}: the budget must be at least 1 byte"));
        }
        Ok(Self(bytes as u64))
    }
}

/// Physical memory, or the cgroup v2 limit when it is lower.
fn system_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = kib * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// How one batch of `batch` windows of at most `seq_len` tokens is tapped: `rows` windows per
/// forward + backward, and per forward the layer groups (ranges of the specs, in order; one
/// group = all layers at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapPlan {
    pub rows: usize,
    pub groups: Vec<Range<usize>>,
}

impl TapPlan {
    /// The plan for `specs` of a model `cfg` within `budget`: the whole batch in one forward when
    /// it fits; else fewer windows per forward; else (one window with every layer's taps is over
    /// the budget) one window per forward and the layers in groups. Errors when one window with
    /// one layer's taps is over the budget (naming the flag to raise or lower).
    pub fn new(
        specs: &[LayerSpec],
        cfg: &ModelConfig,
        batch: usize,
        seq_len: usize,
        sampled: bool,
        budget: MemoryBudget,
    ) -> Result<Self> {
        let t = seq_len as u64;
        let f4 = 4u64;
        let logits = (if sampled { 4 } else { 3 }) * t * cfg.vocab_size as u64 * f4;
        let linear_inputs: u64 = linear_inputs(cfg);
        let attention = 2 * cfg.n_layers as u64 * cfg.n_heads as u64 * t * t * f4;
        let fixed = logits + linear_inputs * t * f4 + attention;
        let tap = |s: &LayerSpec| 2 * t * (s.d_in + s.d_out) as u64 * f4;
        let all: u64 = specs.iter().map(tap).sum();
        let per_window = fixed + all;
        if per_window * batch as u64 <= budget.0 {
            return Ok(Self::whole(batch, specs.len()));
        }
        if per_window <= budget.0 {
            return Ok(Self {
                rows: ((budget.0 / per_window) as usize).clamp(1, batch),
                groups: std::iter::once(0..specs.len()).collect(),
            });
        }
        let mut groups: Vec<Range<usize>> = vec![];
        let mut used = fixed;
        for (i, s) in specs.iter().enumerate() {
            let c = tap(s);
            if fixed + c > budget.0 {
                return Err(TraceError::Usage(format!(
                    "--memory-budget {budget}: one window of {seq_len} tokens needs {} for its logits and graph and {} for the taps of layer {} — raise --memory-budget or lower --max-len",
                    MemoryBudget(fixed),
                    MemoryBudget(c),
                    s.name
                )));
            }
            match groups.last_mut() {
                Some(g) if used + c <= budget.0 => {
                    g.end = i + 1;
                    used += c;
                }
                _ => {
                    groups.push(i..i + 1);
                    used = fixed + c;
                }
            }
        }
        Ok(Self { rows: 1, groups })
    }

    /// The whole batch in one forward with every layer.
    pub fn whole(batch: usize, layers: usize) -> Self {
        Self {
            rows: batch.max(1),
            groups: std::iter::once(0..layers).collect(),
        }
    }

    /// The windows of a batch of `n`, `rows` at a time.
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..n)
            .step_by(self.rows)
            .map(move |s| s..(s + self.rows).min(n))
    }

    /// Forwards + backwards per window batch of `n` windows (1 when nothing is split).
    pub fn passes(&self, n: usize) -> usize {
        n.div_ceil(self.rows) * self.groups.len()
    }
}

/// Σ over every linear layer of the model (tracked or not) of its input width, per token.
fn linear_inputs(cfg: &ModelConfig) -> u64 {
    let (h, m) = (cfg.hidden as u64, cfg.intermediate as u64);
    let q = (cfg.n_heads * cfg.head_dim) as u64;
    // q, k, v (one fused or three: the same input), o, up (+ gate), down; then lm_head.
    let per_block = 3 * h + q + 2 * h + m;
    cfg.n_layers as u64 * per_block + h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: tda_model::Arch::Qwen2,
            vocab_size: 151_936,
            hidden: 896,
            n_layers: 2,
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            intermediate: 4864,
            max_positions: 32_768,
            norm_eps: 1e-6,
            rope_theta: 1e6,
            tie_embeddings: true,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: Some(0),
            sliding_window: None,
        }
    }

    fn specs() -> Vec<LayerSpec> {
        (0..2)
            .flat_map(|b| {
                [("q", 896, 896), ("up", 896, 4864), ("down", 4864, 896)]
                    .map(|(n, i, o)| LayerSpec::new(format!("{b}.{n}"), i, o, false))
            })
            .collect()
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("8GiB".parse::<MemoryBudget>().unwrap().0, 8 << 30);
        assert_eq!("512 MiB".parse::<MemoryBudget>().unwrap().0, 512 << 20);
        assert_eq!("1.5G".parse::<MemoryBudget>().unwrap().0, 3 << 29);
        assert_eq!("4096".parse::<MemoryBudget>().unwrap().0, 4096);
        assert!("8 parsecs".parse::<MemoryBudget>().is_err());
        assert!("0".parse::<MemoryBudget>().is_err());
        assert!("lots".parse::<MemoryBudget>().is_err());
        assert!(MemoryBudget::auto().0 >= 1 << 30);
    }

    /// Whole batch when it fits; fewer windows per forward; then layer groups that each fit,
    /// covering every layer once, in order; an error when one layer cannot fit.
    #[test]
    fn plans_fit_the_budget() {
        let (c, s) = (cfg(), specs());
        let big = TapPlan::new(&s, &c, 8, 256, false, MemoryBudget(64 << 30)).unwrap();
        assert_eq!(big, TapPlan::whole(8, s.len()));
        let mid = TapPlan::new(&s, &c, 8, 2048, false, MemoryBudget(8 << 30)).unwrap();
        assert!(
            mid.rows >= 1 && mid.rows < 8 && mid.groups.len() == 1 && mid.groups[0] == (0..s.len())
        );
        assert_eq!(mid.chunks(8).map(|r| r.len()).sum::<usize>(), 8);
        // 2048 tokens, sampled labels: logits ≈ 4.6 GiB, graph ≈ 1.0 GiB, taps ≈ 0.4 GiB in all.
        let small = TapPlan::new(&s, &c, 8, 2048, true, MemoryBudget(6 << 30)).unwrap();
        assert_eq!(small.rows, 1);
        assert!(small.groups.len() > 1);
        let covered: Vec<usize> = small.groups.iter().flat_map(|g| g.clone()).collect();
        assert_eq!(covered, (0..s.len()).collect::<Vec<_>>());
        assert_eq!(small.passes(8), 8 * small.groups.len());
        let err = TapPlan::new(&s, &c, 8, 2048, true, MemoryBudget(1 << 30)).unwrap_err();
        assert!(err.to_string().contains("--memory-budget"), "{err}");
    }
}
