//! Influence computed where the model runs: burn tensor operations on the model's device, so the
//! same code runs on flex (tests, CI) and on burn-cuda. A batch's taps never leave the device;
//! only small results cross to the host:
//! - [`sums`]: `tda fit`'s per-batch sums of A, S and Λ (added to the fitter's f64 sums);
//! - [`score`]: `tda trace`'s per-batch scores of every query (per token, per layer).
//!
//! The host path (taps copied, faer kernels) stays for the CPU, where it is faster, and as the
//! reference the device path is tested against (`tests/device_path.rs`).

use burn::prelude::*;

pub mod score;
pub mod sums;

pub use score::{score_on_device, DeviceQueries};

pub use sums::{batch_sums, DeviceBases};

/// Where a batch's influence math runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeOn {
    /// Taps copied to the host; faer GEMMs (f32, reduced in f64). The faster choice on a CPU,
    /// where the device is the host.
    #[default]
    Host,
    /// Tensor operations on the model's device; only sums and scores are copied.
    Device,
}

impl std::str::FromStr for ComputeOn {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "host" => Ok(Self::Host),
            "device" => Ok(Self::Device),
            _ => Err(format!("unknown place {s:?} (host or device)")),
        }
    }
}

/// The precision of the device path's candidate contraction (`tda trace`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 GEMMs.
    #[default]
    F32,
    /// Mixed: the candidates' taps and the query factors are cast to bf16 for the contraction's
    /// GEMMs; the per-query reduction and everything after run in f32 / f64. Covariances, Λ and
    /// preconditioning stay f32, as Kronfluence's "smart low precision" keeps Λ and
    /// preconditioning in f32 (bf16 Gram matrices give broken eigenvectors: bergson PR #239).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision {s:?} (f32 or bf16)")),
        }
    }
}

/// `x` in the contraction's precision.
pub(crate) fn in_precision<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    p: Precision,
) -> Tensor<B, D> {
    match p {
        Precision::F32 => x,
        Precision::Bf16 => x.cast(burn::tensor::FloatDType::BF16),
    }
}

/// `x` back in f32.
pub(crate) fn in_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(burn::tensor::FloatDType::F32)
}

/// A tensor's values on the host, upcast to f64.
pub(crate) fn to_f64<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f64> {
    x.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data")
        .into_iter()
        .map(f64::from)
        .collect()
}
