//! One module per subcommand.

pub mod cite;
pub mod demo;
pub mod fit;
pub mod index;
pub mod infer;
pub mod search;
pub mod self_influence;
pub mod trace;
pub mod train;

use tda_model::device::{check_cuda, DeviceKind};

/// How the corpus is cut into model-length windows (shared by fit, trace and self-influence).
#[derive(clap::Args, Clone, Debug)]
pub struct WindowArgs {
    /// Tokens per window (0 = the model's max_positions).
    #[arg(long, default_value_t = 0)]
    pub max_len: usize,
    /// Windows per model batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Use at most this many windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
}

impl WindowArgs {
    pub fn options(&self) -> tda_trace::WindowOptions {
        tda_trace::WindowOptions {
            max_len: self.max_len,
            batch_size: self.batch_size,
            max_windows: self.max_windows,
        }
    }
}

/// Fails with a clear message when `kind` cannot run here (CUDA requested without driver or feature).
pub fn check_device(kind: DeviceKind) -> anyhow::Result<()> {
    if kind == DeviceKind::Cuda {
        check_cuda().map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Runs `$body` with `B` bound to the inference backend and `AD` to its autodiff backend and
/// `device` to the device, for the device kind `$kind`.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $AD:ident, $device:ident| $body:block) => {{
        $crate::cmd::check_device($kind)?;
        match $kind {
            tda_model::device::DeviceKind::Cpu => {
                #[allow(dead_code)]
                type $B = tda_model::device::Cpu;
                #[allow(dead_code)]
                type $AD = tda_model::device::CpuAutodiff;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            tda_model::device::DeviceKind::Cuda => {
                #[allow(dead_code)]
                type $B = tda_model::device::Gpu;
                #[allow(dead_code)]
                type $AD = tda_model::device::GpuAutodiff;
                let $device = Default::default();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            tda_model::device::DeviceKind::Cuda => {
                unreachable!("check_device rejects cuda without the feature")
            }
        }
    }};
}
