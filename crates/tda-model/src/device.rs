//! Compute backends. CPU: burn-flex (SIMD + rayon). GPU: burn-cuda behind the `cuda` feature.

use burn::backend::Autodiff;

/// The CPU backend.
pub type Cpu = burn::backend::Flex;
/// The CPU backend with autodiff (training, gradient taps).
pub type CpuAutodiff = Autodiff<Cpu>;

#[cfg(feature = "cuda")]
/// The CUDA backend.
pub type Gpu = burn::backend::Cuda;
#[cfg(feature = "cuda")]
/// The CUDA backend with autodiff.
pub type GpuAutodiff = Autodiff<Gpu>;

/// Which backend a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            _ => Err(format!("unknown device \"{s}\" (cpu or cuda)")),
        }
    }
}

/// Checks, without touching CUDA, that a CUDA run can start: this build has the `cuda` feature and
/// the driver (`libcuda.so.1`) and NVRTC libraries can be found. burn-cuda panics in a worker
/// thread when they are missing; this turns that into a clear error first.
pub fn check_cuda() -> Result<(), String> {
    if !cfg!(feature = "cuda") {
        return Err(
            "this tda was built without CUDA support: rebuild with `--features cuda`".into(),
        );
    }
    let mut dirs: Vec<std::path::PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(Into::into)
        .collect();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.into());
    }
    let find = |prefix: &str| {
        dirs.iter().any(|d| {
            std::fs::read_dir(d)
                .map(|it| {
                    it.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
                })
                .unwrap_or(false)
        })
    };
    if !find("libcuda.so") {
        return Err(
            "no CUDA driver found (libcuda.so.1 is not on the library path): use --device cpu"
                .into(),
        );
    }
    if !find("libnvrtc") {
        return Err("the CUDA runtime compiler libnvrtc was not found on the library path (install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and add it to LD_LIBRARY_PATH)".into());
    }
    Ok(())
}

/// The type a model's parameters and activations are held in (`--dtype`). f32 is the reference;
/// bf16/f16 halve the model's memory and, on a GPU, run its GEMMs on tensor cores. Whatever the
/// type, norms, attention softmax and logits are computed in f32 (as `transformers` does), and
/// taps reach the curvature code as f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl ModelDtype {
    /// The dtype of a model's parameters (`Transformer::dtype`), as a name (`f32`, `bf16`, `f16`,
    /// or burn's name for anything else).
    pub fn name_of(dtype: burn::tensor::DType) -> String {
        [Self::F32, Self::Bf16, Self::F16]
            .into_iter()
            .find(|d| d.burn() == dtype)
            .map_or_else(|| format!("{dtype:?}"), |d| d.to_string())
    }

    /// burn's dtype of the parameters.
    pub fn burn(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::Bf16 => burn::tensor::DType::BF16,
            Self::F16 => burn::tensor::DType::F16,
        }
    }
}

impl std::str::FromStr for ModelDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype \"{s}\" (f32, bf16 or f16)")),
        }
    }
}

impl std::fmt::Display for ModelDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}
