//! Peak memory of loading a model folder, eager (every tensor read to f32 first, then the model
//! built from that copy: what `load_folder` did before `FolderWeights`) against lazy (`load_folder`:
//! one tensor at a time from the mapped files):
//!
//! ```sh
//! cargo run --release -p tda-model --example load_rss -- DIR eager
//! cargo run --release -p tda-model --example load_rss -- DIR lazy
//! cargo run --release -p tda-model --example load_rss -- DIR lazy bf16   # `--dtype bf16`
//! ```
//!
//! Prints the weights' f32 size and the process's peak resident memory (`VmHWM`), in MiB.

use tda_model::device::Cpu;
use tda_model::hf::read_folder_weights;
use tda_model::{load_folder_as, ModelConfig, ModelDtype, Transformer};

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .expect("VmHWM")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number");
    kib / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: load_rss DIR eager|lazy [f32|bf16|f16]"),
    );
    let dtype: ModelDtype = args
        .get(3)
        .map_or(Ok(ModelDtype::F32), |s| s.parse())
        .expect("dtype");
    let device = Default::default();
    let model = match args.get(2).map(String::as_str) {
        Some("eager") => {
            let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
            let w = read_folder_weights(&dir).expect("weights");
            Transformer::<Cpu>::from_weights(&cfg, &w, &device).expect("model")
        }
        Some("lazy") => {
            load_folder_as::<Cpu>(&dir, &device, dtype)
                .expect("model")
                .model
        }
        _ => panic!("mode: eager or lazy"),
    };
    // The peak first: `to_weights` below copies the model out.
    let peak = peak_mib();
    let params: usize = model.to_weights().values().map(|t| t.data.len()).sum();
    println!(
        "{{\"f32_mib\": {:.0}, \"peak_rss_mib\": {peak:.0}}}",
        params as f64 * 4.0 / (1 << 20) as f64
    );
}
