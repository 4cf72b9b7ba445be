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
