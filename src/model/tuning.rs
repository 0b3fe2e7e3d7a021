//! Which weights train: full, freeze (the last N layers and/or named modules), or LoRA adapters;
//! PEFT adapter folders in and out; merging an adapter into its base; writing a full HF folder.

use super::config::Head;
use super::decoder::{Decoder, Linear};
use super::lora::{LoraWeights, Rng};
use crate::lang::value::Tuning;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

type Result<T> = crate::error::Result<T>;

/// The linear layers PEFT's "all-linear" means for these models (every projection, not lm_head).
/// Where a PEFT adapter keeps a fully trained score head (its `modules_to_save`).
pub const SCORE_ADAPTER_KEY: &str = "base_model.model.score.weight";

pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Decoder {
    /// Every projection with its module path (`model.layers.0.self_attn.q_proj`) and short name.
    pub fn linears_mut(&mut self) -> Vec<(String, &'static str, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            for (group, name, lin) in [
                ("self_attn", "q_proj", &mut l.q),
                ("self_attn", "k_proj", &mut l.k),
                ("self_attn", "v_proj", &mut l.v),
                ("self_attn", "o_proj", &mut l.o),
                ("mlp", "gate_proj", &mut l.gate),
                ("mlp", "up_proj", &mut l.up),
                ("mlp", "down_proj", &mut l.down),
            ] {
                out.push((format!("{p}.{group}.{name}"), name, lin));
            }
        }
        out
    }

    /// Sets up `tuning`; returns the trainable variables by name. Frozen weights stay plain tensors:
    /// they hold no gradient and no optimizer state.
    pub fn apply_tuning(&mut self, tuning: &Tuning, seed: u64) -> Result<Vec<(String, Var)>> {
        let mut vars = self.tuned_weights(tuning, seed)?;
        // A reward model's score head always trains in full (PEFT's `modules_to_save`).
        if !matches!(tuning, Tuning::Full) {
            if let Some(score) = &mut self.score {
                let var = Var::from_tensor(score)?;
                *score = var.as_tensor().clone();
                vars.push((SCORE_ADAPTER_KEY.into(), var));
            }
        }
        Ok(vars)
    }

    fn tuned_weights(&mut self, tuning: &Tuning, seed: u64) -> Result<Vec<(String, Var)>> {
        match tuning {
            Tuning::Full => self.make_trainable(),
            Tuning::Freeze { layers, modules } => {
                let n = self.layers.len();
                let first = layers.map_or(n, |k| n.saturating_sub(k as usize));
                let mut vars = Vec::new();
                for (name, t) in self.params_mut() {
                    let layer = name
                        .strip_prefix("model.layers.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|i| i.parse::<usize>().ok());
                    let in_last = layer.is_some_and(|i| i >= first);
                    let named = modules.iter().any(|m| {
                        name.split('.').any(|part| part == m) || name.starts_with(m.as_str())
                    });
                    if in_last || named {
                        let var = Var::from_tensor(t)?;
                        *t = var.as_tensor().clone();
                        vars.push((name, var));
                    }
                }
                if vars.is_empty() && self.score.is_none() {
                    return Err("freeze(...) selects no weights to train".into());
                }
                Ok(vars)
            }
            Tuning::Qlora { lora, double_quant } => {
                let vars = self.add_lora(lora, seed)?;
                self.quantize_base(*double_quant)?;
                Ok(vars)
            }
            Tuning::Lora(l) => self.add_lora(l, seed),
        }
    }

    /// QLoRA's frozen base: every projection's weight to NF4 (as bitsandbytes' 4-bit loading
    /// quantizes every linear layer but the output head); the f32 weight is let go. Adapters
    /// already loaded stay as they are.
    pub fn quantize_base(&mut self, double_quant: bool) -> Result<()> {
        for (_, _, lin) in self.linears_mut() {
            let (out, inp) = lin.weight.dims2()?;
            let values: Vec<f32> = lin.weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let q = super::nf4::Nf4::quantize_with(&values, (out, inp), double_quant);
            lin.nf4 = Some(std::sync::Arc::new(q));
            lin.weight = Tensor::zeros(0, lin.weight.dtype(), lin.weight.device())?;
        }
        Ok(())
    }

    /// LoRA adapters on the targeted projections; their variables by PEFT name.
    fn add_lora(&mut self, l: &crate::lang::value::Lora, seed: u64) -> Result<Vec<(String, Var)>> {
        let targets: Vec<String> = if l.targets.iter().any(|t| t == "all-linear") {
            LINEAR_MODULES.iter().map(|s| s.to_string()).collect()
        } else {
            l.targets.clone()
        };
        for t in &targets {
            if !LINEAR_MODULES.contains(&t.as_str()) {
                return Err(format!(
                    "LoRA target `{t}` is not a linear module of this model ({})",
                    LINEAR_MODULES.join(", ")
                )
                .into());
            }
        }
        let training = self.training.clone();
        let mut rng = Rng::new(seed);
        // Dropout masks draw from their own stream, so they do not shift initialization.
        self.set_dropout_state(Rng::new(seed ^ 0x000D_4090_u64).state());
        let dropout_rng = self.dropout_rng.clone();
        let mut vars = Vec::new();
        for (path, short, lin) in self.linears_mut() {
            if !targets.iter().any(|t| t == short) {
                continue;
            }
            let w = LoraWeights::new(
                &lin.weight,
                l,
                &mut rng,
                training.clone(),
                dropout_rng.clone(),
            )?;
            vars.push((
                format!("base_model.model.{path}.lora_A.weight"),
                w.a.clone(),
            ));
            vars.push((
                format!("base_model.model.{path}.lora_B.weight"),
                w.b.clone(),
            ));
            lin.lora = Some(w);
        }
        Ok(vars)
    }

    /// Writes a PEFT adapter folder: adapter_config.json and adapter_model.safetensors.
    pub fn save_adapter(&mut self, dir: &Path, tuning: &Tuning, base: &str) -> Result<()> {
        let Some(l) = tuning.lora() else {
            return Err("only LoRA tuning has an adapter to save".into());
        };
        std::fs::create_dir_all(dir)?;
        let targets: Vec<String> = if l.targets.iter().any(|t| t == "all-linear") {
            LINEAR_MODULES.iter().map(|s| s.to_string()).collect()
        } else {
            l.targets.clone()
        };
        let reward = self.score.is_some();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": if reward { "SEQ_CLS" } else { "CAUSAL_LM" },
            "modules_to_save": if reward { serde_json::json!(["score"]) } else { serde_json::Value::Null },
            "r": l.rank,
            "lora_alpha": l.alpha,
            "lora_dropout": l.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": l.rslora,
            "inference_mode": true,
            "base_model_name_or_path": base,
        });
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        let mut tensors = HashMap::new();
        for (path, _, lin) in self.linears_mut() {
            if let Some(w) = &lin.lora {
                tensors.insert(
                    format!("base_model.model.{path}.lora_A.weight"),
                    w.a.as_tensor().clone(),
                );
                tensors.insert(
                    format!("base_model.model.{path}.lora_B.weight"),
                    w.b.as_tensor().clone(),
                );
            }
        }
        if let Some(score) = &self.score {
            tensors.insert(SCORE_ADAPTER_KEY.into(), score.detach());
        }
        write_safetensors(&tensors, &dir.join("adapter_model.safetensors"))
    }

    /// Loads a PEFT LoRA adapter folder onto this model; an adapter made for another base (its A and B
    /// do not fit a module's weight) is [`crate::error::Error::AdapterShape`].
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let cfg_path = dir.join("adapter_config.json");
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&cfg_path)
                .map_err(|e| format!("cannot read {}: {e}", cfg_path.display()))?,
        )
        .map_err(|e| format!("{}: not valid JSON: {e}", cfg_path.display()))?;
        if cfg["peft_type"].as_str() != Some("LORA") {
            return Err(format!("{}: only LoRA adapters are supported", cfg_path.display()).into());
        }
        let r = cfg["r"]
            .as_f64()
            .ok_or("adapter_config.json: `r` is missing")?;
        let alpha = cfg["lora_alpha"].as_f64().unwrap_or(r);
        let scaling = if cfg["use_rslora"].as_bool() == Some(true) {
            alpha / r.sqrt()
        } else {
            alpha / r
        };
        let file = dir.join("adapter_model.safetensors");
        let mut tensors = candle_core::safetensors::load(&file, &self.device)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let training = self.training.clone();
        let dropout_rng = self.dropout_rng.clone();
        let mut found = 0;
        for (path, _, lin) in self.linears_mut() {
            let (ka, kb) = (
                format!("base_model.model.{path}.lora_A.weight"),
                format!("base_model.model.{path}.lora_B.weight"),
            );
            if let (Some(a), Some(b)) = (tensors.remove(&ka), tensors.remove(&kb)) {
                let (out, inp) = lin.weight.dims2()?;
                let rank = a.dims().first().copied().unwrap_or(0);
                for (name, t, expected) in [(&ka, &a, [rank, inp]), (&kb, &b, [out, rank])] {
                    if t.dims() != expected {
                        return Err(crate::error::Error::AdapterShape {
                            dir: dir.to_path_buf(),
                            tensor: name.clone(),
                            found: t.dims().to_vec(),
                            expected: expected.to_vec(),
                        });
                    }
                }
                let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                lin.lora = Some(LoraWeights {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                    scaling,
                    dropout: 0.0,
                    training: training.clone(),
                    rng: dropout_rng.clone(),
                });
                found += 1;
            }
        }
        if let Some(score) = tensors.remove(SCORE_ADAPTER_KEY) {
            let expected = [1, self.cfg.hidden_size];
            if self.score.is_none() || score.dims() != expected {
                return Err(crate::error::Error::AdapterShape {
                    dir: dir.to_path_buf(),
                    tensor: SCORE_ADAPTER_KEY.into(),
                    found: score.dims().to_vec(),
                    expected: expected.to_vec(),
                });
            }
            self.score = Some(score.to_dtype(DType::F32)?);
        }
        if found == 0 {
            return Err(format!(
                "{}: no LoRA weights match this model's modules",
                file.display()
            )
            .into());
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(format!(
                "{}: tensor `{extra}` matches no module of this model",
                file.display()
            )
            .into());
        }
        Ok(())
    }

    /// Folds every adapter into its weight: W' = W + scaling · B A.
    pub fn merge_adapters(&mut self) -> Result<()> {
        for (path, _, lin) in self.linears_mut() {
            if lin.nf4.is_some() {
                return Err(crate::error::Error::Internal(format!(
                    "{path} is NF4: a QLoRA adapter merges into the unquantized base, not into its 4-bit copy"
                )));
            }
            if let Some(w) = lin.lora.take() {
                lin.weight = (&lin.weight + w.delta()?)?.detach();
            }
        }
        Ok(())
    }

    /// Writes a full HF folder: the source folder's config and tokenizer files, and every weight
    /// (adapters merged first) as f32 safetensors, sharded above `shard_bytes`.
    pub fn save_hf(&mut self, source: &Path, out: &Path, shard_bytes: usize) -> Result<()> {
        self.save_hf_as(source, out, shard_bytes, DType::F32)
    }

    /// [`Decoder::save_hf`] with the weights written in `dtype` (f32, bf16 or f16).
    pub fn save_hf_as(
        &mut self,
        source: &Path,
        out: &Path,
        shard_bytes: usize,
        dtype: DType,
    ) -> Result<()> {
        std::fs::create_dir_all(out)?;
        copy_hf_files(source, out)?;
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(source.join("config.json"))?)?;
        let torch_name = torch_dtype_name(dtype)?;
        config["dtype"] = serde_json::json!(torch_name);
        if self.cfg.head == Head::Score {
            // What transformers' AutoModelForSequenceClassification needs to load one reward.
            config["architectures"] = serde_json::json!([format!(
                "{}ForSequenceClassification",
                self.cfg.arch.class_prefix()
            )]);
            config["id2label"] = serde_json::json!({"0": "LABEL_0"});
            config["label2id"] = serde_json::json!({"LABEL_0": 0});
            config["pad_token_id"] = serde_json::json!(self.cfg.pad_token_id);
        }
        if config.get("torch_dtype").is_some() {
            config["torch_dtype"] = serde_json::json!(torch_name);
        }
        std::fs::write(
            out.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        self.save_weights_as(out, shard_bytes, dtype)
    }

    /// Writes every weight (adapters merged first) into `out` as f32 safetensors, sharded above
    /// `shard_bytes` (with the index transformers reads).
    pub fn save_weights(&mut self, out: &Path, shard_bytes: usize) -> Result<()> {
        self.save_weights_as(out, shard_bytes, DType::F32)
    }

    /// [`Decoder::save_weights`] in `dtype`.
    pub fn save_weights_as(&mut self, out: &Path, shard_bytes: usize, dtype: DType) -> Result<()> {
        let width = dtype.size_in_bytes();
        self.merge_adapters()?;
        let params: Vec<(String, Tensor)> = self
            .params_mut()
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect();
        let total: usize = params.iter().map(|(_, t)| t.elem_count() * width).sum();
        if total <= shard_bytes {
            return write_safetensors_as(
                &params.into_iter().collect(),
                &out.join("model.safetensors"),
                dtype,
            );
        }
        let mut shards: Vec<HashMap<String, Tensor>> = vec![HashMap::new()];
        let mut size = 0;
        for (n, t) in params {
            let bytes = t.elem_count() * width;
            if size > 0 && size + bytes > shard_bytes {
                shards.push(HashMap::new());
                size = 0;
            }
            size += bytes;
            shards.last_mut().expect("a shard").insert(n, t);
        }
        let count = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
            for name in shard.keys() {
                weight_map.insert(name.clone(), serde_json::json!(file));
            }
            write_safetensors_as(shard, &out.join(&file), dtype)?;
        }
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(
            out.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?,
        )?;
        Ok(())
    }
}

/// Copies the tokenizer and generation files an HF model folder carries from `source` to `out`.
pub fn copy_hf_files(source: &Path, out: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        if source.join(name).is_file() {
            std::fs::copy(source.join(name), out.join(name))?;
        }
    }
    Ok(())
}

/// The name transformers writes in config.json for `dtype`.
pub fn torch_dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::BF16 => Ok("bfloat16"),
        DType::F16 => Ok("float16"),
        other => Err(format!("weights are written in f32, bf16 or f16, not {other:?}").into()),
    }
}

/// safetensors with `{"format": "pt"}` metadata, as transformers and PEFT write them, in f32.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_safetensors_as(tensors, path, DType::F32)
}

/// [`write_safetensors`] with every tensor in `dtype` (f32, bf16 or f16).
pub fn write_safetensors_as(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    dtype: DType,
) -> Result<()> {
    let st = match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
        other => return Err(format!("cannot write {other:?} weights").into()),
    };
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = tensors[name].to_dtype(dtype)?.flatten_all()?;
        let bytes: Vec<u8> = match dtype {
            DType::BF16 => t
                .to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DType::F16 => t
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => t
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        data.push((name.clone(), bytes, tensors[name].dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(st, s.clone(), b)
                    .map_err(|e| crate::error::Error::Internal(e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}
