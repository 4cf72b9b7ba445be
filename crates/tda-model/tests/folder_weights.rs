//! The lazy folder reader (`FolderWeights`, what `load_folder` uses so that loading holds the
//! model once) gives exactly the tensors of the eager reader (`read_folder_weights`), for a
//! sharded f16 folder and a single-file f32 one; an absent name is `None`.

use std::path::PathBuf;

use tda_model::hf::{read_folder_weights, FolderWeights};
use tda_model::WeightSource;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

#[test]
fn lazy_reader_equals_eager_reader() {
    for name in ["gpt2", "llama", "rag"] {
        let dir = fixture(name);
        let eager = read_folder_weights(&dir).unwrap();
        let lazy = FolderWeights::open(&dir).unwrap();
        assert!(!eager.is_empty());
        for (k, t) in &eager {
            let got = lazy
                .fetch(k)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {k} missing"));
            assert_eq!(&got, t, "{name}: {k}");
            // Taken twice (the file pages were released after the first): the same bytes.
            assert_eq!(&lazy.fetch(k).unwrap().unwrap(), t, "{name}: {k} again");
        }
        assert!(lazy.fetch("no.such.tensor").unwrap().is_none());
    }
}

/// `--dtype` with the stored type: a 16-bit tensor is taken as stored, bit for bit (no f32
/// round trip), and every parameter of the model built from it has that type, holding exactly
/// the stored values (linear weights transposed to `[d_in, d_out]`).
#[test]
fn half_weights_load_as_stored() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;
    use burn::tensor::DType;
    use tda_model::device::Cpu;
    use tda_model::{ModelConfig, ModelDtype, Transformer};

    struct Dtypes(Vec<DType>);
    impl ModuleVisitor<Cpu> for Dtypes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Cpu, D>>) {
            self.0.push(p.val().dtype());
        }
    }

    for (name, dtype, stored) in [
        ("qwen2", ModelDtype::Bf16, safetensors::Dtype::BF16),
        ("llama", ModelDtype::F16, safetensors::Dtype::F16),
    ] {
        let dir = fixture(name);
        let lazy = FolderWeights::open(&dir).unwrap();
        let embed = "model.embed_tokens.weight";
        let file_bytes = {
            let shard = if name == "llama" {
                "model-00001-of-00003.safetensors"
            } else {
                "model.safetensors"
            };
            let bytes = std::fs::read(dir.join(shard)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let v = st.tensor(embed).unwrap();
            assert_eq!(v.dtype(), stored);
            v.data().to_vec()
        };
        let got = lazy.fetch_as(embed, dtype.burn()).unwrap().unwrap();
        assert_eq!(got.dtype, dtype.burn(), "{name}");
        assert_eq!(
            got.as_bytes(),
            &file_bytes[..],
            "{name}: {embed} not as stored"
        );

        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let m =
            Transformer::<Cpu>::from_source_as(&config, &lazy, &Default::default(), dtype).unwrap();
        let mut seen = Dtypes(vec![]);
        m.visit(&mut seen);
        assert!(
            seen.0.len() > 10 && seen.0.iter().all(|&d| d == dtype.burn()),
            "{name}: {:?}",
            seen.0
        );
        // Values: the model's weights (read back as f32) are the stored ones converted exactly.
        for (k, t) in m.to_weights() {
            assert_eq!(t, lazy.fetch(&k).unwrap().unwrap(), "{name}: {k}");
        }
    }
}
