//! Hugging Face model folders: `config.json` + `model.safetensors` (or sharded with
//! `model.safetensors.index.json`) + `tokenizer.json`, read as `transformers`' `save_pretrained`
//! writes them, and written so that `AutoModelForCausalLM.from_pretrained` loads them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::prelude::Backend;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{HostTensor, ModelDtype, Transformer, Weights};
pub use crate::tokenizer::load_tokenizer;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Bytes of a tensor converted per step when a model folder is read lazily: each step's file
/// pages are released once converted, so loading holds the model plus one step, not the model
/// plus its largest tensor's pages. A multiple of 8, so that no element straddles two steps.
const STREAM_STEP: usize = 16 << 20;

/// Converts one stored tensor (f32, f16, bf16 or f64) to `E` through f32 (`encode` of each
/// value; exact for a 16-bit tensor asked for in its own type), `STREAM_STEP` bytes at a time,
/// handing each step's bytes to `done` once they are converted.
fn decode<E>(
    view: &TensorView<'_>,
    done: &dyn Fn(&[u8]),
    encode: fn(f32) -> E,
) -> std::result::Result<Vec<E>, String> {
    let (size, decode): (usize, fn(&[u8]) -> f32) = match view.dtype() {
        Dtype::F32 => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F16 => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => (2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::F64 => (8, |b| f64::from_le_bytes(b.try_into().unwrap()) as f32),
        other => return Err(format!("dtype {other:?} is not a float type")),
    };
    let mut out = Vec::with_capacity(view.data().len() / size);
    for step in view.data().chunks(STREAM_STEP) {
        out.extend(step.chunks_exact(size).map(|b| encode(decode(b))));
        done(step);
    }
    Ok(out)
}

/// One stored tensor as f32 (see [`decode`]).
fn to_f32(view: &TensorView<'_>, done: &dyn Fn(&[u8])) -> std::result::Result<Vec<f32>, String> {
    decode(view, done, |x| x)
}

/// Reads every floating-point tensor of one safetensors file as f32 (integer buffers are skipped).
/// A NaN or infinite weight is an error naming the tensor: every score computed from it would be
/// meaningless.
pub fn read_safetensors(path: &Path) -> Result<Weights> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file truncated
    // by another process while we read it is outside what we can defend against.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| ModelError::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = Weights::new();
    for (name, view) in st.iter() {
        if matches!(
            view.dtype(),
            Dtype::BOOL
                | Dtype::U8
                | Dtype::I8
                | Dtype::I16
                | Dtype::I32
                | Dtype::I64
                | Dtype::U16
                | Dtype::U32
                | Dtype::U64
        ) {
            continue;
        }
        let data = to_f32(&view, &|_| ())
            .map_err(|m| ModelError::invalid(path, format!("tensor \"{name}\": {m}")))?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::invalid(
                path,
                format!(
                    "tensor \"{name}\" has a non-finite value ({}) at element {i}",
                    data[i]
                ),
            ));
        }
        out.insert(
            name.to_string(),
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// The weights of a model folder read lazily ([`WeightSource`]): its safetensors files are
/// mapped, a tensor is converted to f32 only when the model takes it, and the file pages it was
/// read from are released right after — loading holds the model once (plus one tensor), never a
/// second f32 copy of all of it.
pub struct FolderWeights {
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → its shard.
    index: HashMap<String, usize>,
}

impl FolderWeights {
    /// Maps `model.safetensors`, or the shards listed in `model.safetensors.index.json` (every
    /// listed tensor must be in its shard); headers are checked here, tensors when taken.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(WEIGHTS_INDEX_FILE);
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_names(&index)?
                .into_iter()
                .map(|s| dir.join(s))
                .collect()
        } else {
            return Err(ModelError::invalid(
                dir,
                format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in the model folder"),
            ));
        };
        let mut out = Self {
            shards: vec![],
            index: HashMap::new(),
        };
        for path in files {
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the map is only read; a file truncated by another process while we read
            // it is outside what we can defend against (as in `read_safetensors`).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::invalid(&path, format!("not a valid safetensors file: {e}"))
            })?;
            for name in st.names() {
                out.index.insert(name.to_string(), out.shards.len());
            }
            drop(st);
            out.shards.push((path, map));
        }
        if index.exists() && !dir.join(WEIGHTS_FILE).exists() {
            for name in listed_tensors(&index)? {
                if !out.index.contains_key(&name) && !name.ends_with("inv_freq") {
                    return Err(ModelError::invalid(
                        &index,
                        format!("tensor \"{name}\" is listed but not found in its shard"),
                    ));
                }
            }
        }
        Ok(out)
    }
}

impl FolderWeights {
    /// Runs `take` on the stored view of `name` (None: no such tensor) with a `done` callback
    /// that gives the file pages of a part of the view back once `take` has read it: the
    /// converted or copied tensor is all the caller keeps (pages are re-read from the file if
    /// ever touched again). Errors are prefixed with the shard's name.
    fn with_view<T>(
        &self,
        name: &str,
        take: impl FnOnce(&TensorView<'_>, &dyn Fn(&[u8])) -> std::result::Result<T, String>,
    ) -> std::result::Result<Option<T>, String> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, map) = &self.shards[i];
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let st = SafeTensors::deserialize(map).map_err(|e| format!("{file}: {e}"))?;
        let view = st.tensor(name).map_err(|e| format!("{file}: {e}"))?;
        let done = |part: &[u8]| {
            let offset = part.as_ptr() as usize - map.as_ptr() as usize;
            // Best effort; a failure only costs memory.
            // SAFETY: a read-only private file mapping: DONTNEED drops clean pages, which read
            // back from the file unchanged if touched again (a page shared with the next part is
            // simply re-read); nothing borrowed from the range is used after this.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, part.len())
            };
        };
        take(&view, &done)
            .map(Some)
            .map_err(|m| format!("{file}: tensor \"{name}\": {m}"))
    }
}

impl crate::model::WeightSource for FolderWeights {
    fn fetch(&self, name: &str) -> std::result::Result<Option<HostTensor>, String> {
        self.with_view(name, |view, done| {
            Ok(HostTensor {
                shape: view.shape().to_vec(),
                data: to_f32(view, done)?,
            })
        })
    }

    /// Converted straight to `dtype`, one step at a time: a 16-bit tensor asked for in its
    /// stored type comes out as stored, and no f32 copy of a whole tensor is made for bf16/f16.
    fn fetch_as(
        &self,
        name: &str,
        dtype: burn::tensor::DType,
    ) -> std::result::Result<Option<burn::tensor::TensorData>, String> {
        use burn::tensor::{DType, TensorData};
        self.with_view(name, |view, done| {
            let shape = view.shape().to_vec();
            Ok(match dtype {
                DType::F32 => TensorData::new(to_f32(view, done)?, shape),
                DType::BF16 => TensorData::new(decode(view, done, half::bf16::from_f32)?, shape),
                DType::F16 => TensorData::new(decode(view, done, half::f16::from_f32)?, shape),
                other => return Err(format!("cannot load as {other:?}")),
            })
        })
    }
}

/// The shard files of a `model.safetensors.index.json` (plain file names, sorted, once each).
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let map = weight_map(index)?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    shards.sort_unstable();
    shards.dedup();
    if let Some(bad) = shards.iter().find(|s| s.contains('/') || s.contains('\\')) {
        return Err(ModelError::invalid(
            index,
            format!("shard name \"{bad}\" is not a plain file name"),
        ));
    }
    Ok(shards)
}

/// The tensor names an index lists.
fn listed_tensors(index: &Path) -> Result<Vec<String>> {
    Ok(weight_map(index)?.keys().cloned().collect())
}

fn weight_map(index: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::invalid(index, format!("not valid JSON: {e}")))?;
    value
        .get("weight_map")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ModelError::invalid(index, "missing \"weight_map\" object"))
}

/// Reads the weights of a folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_folder_weights(dir: &Path) -> Result<Weights> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if single.exists() {
        return read_safetensors(&single);
    }
    if !index.exists() {
        return Err(ModelError::invalid(
            dir,
            format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in the model folder"),
        ));
    }
    let mut out = Weights::new();
    for shard in shard_names(&index)? {
        out.extend(read_safetensors(&dir.join(shard))?);
    }
    for name in listed_tensors(&index)? {
        if !out.contains_key(&name) && !name.ends_with("inv_freq") {
            return Err(ModelError::invalid(
                &index,
                format!("tensor \"{name}\" is listed but not found in its shard"),
            ));
        }
    }
    Ok(out)
}

/// Writes weights as one f32 safetensors file, atomically (`tda_io::write_file_with`: a
/// reader sees the old file or the new one, never a prefix). `metadata` gets `format = pt`,
/// which `transformers` requires.
pub fn write_safetensors(
    path: &Path,
    weights: &Weights,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    tda_io::write_file_with(path, |tmp| {
        serialize_safetensors(tmp, path, weights, metadata)
    })
}

/// Serialises `weights` to `file` with a sorted header (not atomic; `path` names the artifact in
/// errors).
fn serialize_safetensors(
    file: &Path,
    path: &Path,
    weights: &Weights,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(&String, Vec<u8>)> = weights
        .iter()
        .map(|(k, t)| (k, t.data.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b)| {
            let shape = weights[*k].shape.clone();
            TensorView::new(Dtype::F32, shape, b).map(|v| (k.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ModelError::invalid(path, format!("cannot serialise: {e}")))?;
    let mut info: HashMap<String, String> = metadata.into_iter().collect();
    info.entry("format".into()).or_insert_with(|| "pt".into());
    safetensors::serialize_to_file(views, Some(info), file)
        .map_err(|e| ModelError::invalid(path, format!("cannot write: {e}")))?;
    // Same weights, same bytes (and so the same model fingerprint) from run to run.
    tda_io::sort_safetensors_header(file).map_err(ModelError::Write)
}

/// A model folder loaded into memory.
pub struct HfModel<B: Backend> {
    pub dir: PathBuf,
    pub model: Transformer<B>,
    pub tokenizer: Tokenizer,
}

/// Loads an HF model folder (config, weights converted to f32, tokenizer).
pub fn load_folder<B: Backend>(dir: &Path, device: &B::Device) -> Result<HfModel<B>> {
    load_folder_as(dir, device, ModelDtype::F32)
}

/// [`load_folder`] with parameters of `dtype`: bf16/f16 weights stored in that type are copied
/// to the device as stored, never widened to f32 on the host (see [`ModelDtype`]).
pub fn load_folder_as<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: ModelDtype,
) -> Result<HfModel<B>> {
    if !dir.is_dir() {
        return Err(ModelError::invalid(dir, "model folder not found"));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config = ModelConfig::from_file(&config_path)?;
    let weights = FolderWeights::open(dir)?;
    let weights_path = if dir.join(WEIGHTS_FILE).exists() {
        dir.join(WEIGHTS_FILE)
    } else {
        dir.join(WEIGHTS_INDEX_FILE)
    };
    let model = Transformer::from_source_as(&config, &weights, device, dtype)
        .map_err(|m| ModelError::invalid(&weights_path, m))?;
    let tokenizer = load_tokenizer(&dir.join(TOKENIZER_FILE), &config)?;
    Ok(HfModel {
        dir: dir.to_path_buf(),
        model,
        tokenizer,
    })
}

/// Writes a model folder that both `tda` and `transformers` load: config.json, model.safetensors
/// (f32), tokenizer.json, tokenizer_config.json, generation_config.json. The folder is built
/// beside `dir` and renamed into place (`tda_io::write_dir`), so `dir` is never half-written; in
/// an existing `dir` these files are replaced and everything else (e.g. `checkpoints/`) is moved
/// into the new folder, after every new file has been written.
pub fn save_folder<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<()> {
    save_folder_with(model, tokenizer, dir, &[])
}

/// [`save_folder`] plus `extra` files `(name, bytes)` written into the same atomic folder (e.g.
/// the training record of `tda train`).
pub fn save_folder_with<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    dir: &Path,
    extra: &[(&str, &[u8])],
) -> Result<()> {
    tda_io::write_dir(dir, |tmp| {
        write_folder_files(model, tokenizer, tmp)?;
        for (name, bytes) in extra {
            let p = tmp.join(name);
            std::fs::write(&p, bytes).map_err(|e| ModelError::io(&p, e))?;
        }
        if dir.is_dir() {
            tda_io::carry_over(dir, tmp)?;
        }
        Ok(())
    })
}

/// The files of a model folder, written into `out`.
fn write_folder_files<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    out: &Path,
) -> Result<()> {
    let write_json = |name: &str, v: &Value| {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap())
            .map_err(|e| ModelError::io(&p, e))
    };
    let cfg = &model.config;
    write_json(CONFIG_FILE, &cfg.to_hf_json())?;
    let mut meta = BTreeMap::new();
    meta.insert(
        "producer".to_string(),
        format!("tda {}", env!("CARGO_PKG_VERSION")),
    );
    let weights_path = out.join(WEIGHTS_FILE);
    serialize_safetensors(&weights_path, &weights_path, &model.to_weights(), meta)?;
    let tok_path = out.join(TOKENIZER_FILE);
    tokenizer
        .save(&tok_path, false)
        .map_err(|e| ModelError::invalid(&tok_path, format!("cannot write tokenizer: {e}")))?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut tcfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_positions,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = token(cfg.bos_token_id) {
        tcfg["bos_token"] = json!(t);
    }
    if let Some(t) = token(cfg.eos_token_id) {
        tcfg["eos_token"] = json!(t);
        tcfg["pad_token"] = json!(t);
    }
    write_json("tokenizer_config.json", &tcfg)?;
    let mut gen = json!({ "do_sample": false });
    if let Some(b) = cfg.bos_token_id {
        gen["bos_token_id"] = json!(b);
    }
    if let Some(e) = cfg.eos_token_id {
        gen["eos_token_id"] = json!(e);
    }
    write_json("generation_config.json", &gen)
}
