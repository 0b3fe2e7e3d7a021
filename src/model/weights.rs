//! Reading a model's safetensors (single file or sharded with an index), stored as f32, bf16 or f16;
//! every tensor is brought to f32. Pickle checkpoints are never loaded.

use crate::error::{Error, TensorProblem};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Weights {
    dir: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn load(dir: &Path, device: &Device) -> Result<Weights, String> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let bytes = std::fs::read(&index)
                .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
            let j: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not valid JSON: {e}", index.display()))?;
            let mut files: Vec<PathBuf> = j["weight_map"]
                .as_object()
                .ok_or_else(|| format!("{}: no weight_map", index.display()))?
                .values()
                .filter_map(|v| v.as_str().map(|f| dir.join(f)))
                .collect();
            files.sort();
            files.dedup();
            files
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else if dir.join("pytorch_model.bin").exists() {
            return Err(format!(
                "{} holds only pytorch_model.bin: ptl loads safetensors only (pickle files can run code); convert it with `save_pretrained(..., safe_serialization=True)`",
                dir.display()
            ));
        } else {
            return Err(format!(
                "{} has no model.safetensors or model.safetensors.index.json",
                dir.display()
            ));
        };
        let mut tensors = HashMap::new();
        for f in files {
            let loaded = candle_core::safetensors::load(&f, device)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            for (name, t) in loaded {
                let t = if t.dtype() == DType::F32 {
                    t
                } else {
                    t.to_dtype(DType::F32).map_err(|e| e.to_string())?
                };
                tensors.insert(name, t);
            }
        }
        Ok(Weights {
            dir: dir.to_path_buf(),
            tensors,
        })
    }

    fn problem(&self, problem: TensorProblem) -> Error {
        Error::ModelTensors {
            dir: self.dir.clone(),
            problem,
        }
    }

    /// Takes the tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, Error> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| self.problem(TensorProblem::Missing(name.to_string())))?;
        if t.dims() != shape {
            return Err(self.problem(TensorProblem::Shape {
                tensor: name.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            }));
        }
        Ok(t)
    }

    /// After every weight was taken: tensors nothing took (buffers transformers recomputes, such as
    /// rotary `inv_freq`, are not weights and are let go).
    pub fn finish(self) -> Result<(), Error> {
        let mut extra: Vec<String> = self
            .tensors
            .into_keys()
            .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort();
        Err(Error::ModelTensors {
            dir: self.dir,
            problem: TensorProblem::Extra(extra),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
