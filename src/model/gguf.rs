//! GGUF files for llama.cpp: a model's weights under llama.cpp's tensor names, its hyper-parameters
//! and its tokenizer (vocabulary, merges, token types, special ids, chat template) as metadata, in
//! f32, f16 or q8_0, for Llama, Mistral (without a sliding window), Qwen2 and Qwen3. Layout (GGUF
//! v3): header, key/values, tensor infos, then the data, every tensor aligned to 32 bytes; dims are
//! written fastest-first (ggml's order), so a [out, in] weight is [in, out].

use super::config::{Arch, ModelConfig};
use super::decoder::Decoder;
use candle_core::{DType, Tensor};
use serde_json::Value as Json;
use std::io::Write;
use std::path::Path;

type Result<T> = crate::error::Result<T>;

const ALIGNMENT: usize = 32;

/// How 2-D weights are stored (norms and other 1-D tensors stay f32, as llama.cpp's converter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    F32,
    F16,
    Q8_0,
}

impl Quant {
    /// `general.file_type`: all f32, mostly f16, mostly q8_0.
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
        }
    }
}

/// ggml tensor types.
#[derive(Clone, Copy)]
enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
}

enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

struct TensorOut {
    name: String,
    /// ggml order: fastest-varying first.
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// The llama.cpp architecture name, or why the model has none.
fn arch_name(cfg: &ModelConfig) -> Result<&'static str> {
    match cfg.arch {
        Arch::Qwen3 => Ok("qwen3"),
        Arch::Qwen2 => Ok("qwen2"),
        Arch::Llama | Arch::Mistral if cfg.sliding_window.is_some() => Err(
            "a sliding-window attention has no GGUF mapping in llama.cpp's llama architecture: this model cannot be exported to GGUF"
                .into(),
        ),
        Arch::Llama | Arch::Mistral if cfg.o_bias || cfg.mlp_bias => {
            Err("Llama with attention or MLP biases has no GGUF mapping here".into())
        }
        Arch::Llama | Arch::Mistral => Ok("llama"),
        Arch::Gemma2 | Arch::Gemma3 => Err(
            "Gemma has no GGUF mapping in ptl's writer yet (llama.cpp's gemma3 tensor names and norm conventions are not written): export it with format = \"hf\"".into(),
        ),
    }
}

/// llama.cpp's rotary layout for the llama architecture pairs dimension i with i + 1, transformers'
/// pairs i with i + d/2: q and k rows are permuted per head to match (llama.cpp's converter).
fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for (j, src) in [(2 * i, i), (2 * i + 1, half + i)] {
                let (to, from) = (h * per_head + j, h * per_head + src);
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// q8_0: blocks of 32 values, each an f16 scale d = max|x| / 127 and 32 int8s round(x / d) (half away
/// from zero), as ggml quantizes.
fn q8_0_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

fn tensor(name: String, t: &Tensor, quant: Quant) -> Result<TensorOut> {
    let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut dims: Vec<u64> = t.dims().iter().map(|d| *d as u64).collect();
    dims.reverse();
    Ok(from_values(name, dims, &values, quant))
}

fn from_values(name: String, dims: Vec<u64>, values: &[f32], quant: Quant) -> TensorOut {
    let matrix = dims.len() == 2;
    let (ty, data) = match quant {
        Quant::Q8_0 if matrix && dims[0].is_multiple_of(32) => (GgmlType::Q8_0, q8_0_bytes(values)),
        Quant::F16 | Quant::Q8_0 if matrix => (GgmlType::F16, f16_bytes(values)),
        _ => (
            GgmlType::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    TensorOut {
        name,
        dims,
        ty,
        data,
    }
}

/// The tensors under llama.cpp's names.
fn tensors(model: &mut Decoder, quant: Quant) -> Result<Vec<TensorOut>> {
    let cfg = model.cfg.clone();
    let permute = arch_name(&cfg)? == "llama";
    let mut out = Vec::new();
    for (name, t) in model.params_mut() {
        let t = t.detach();
        let gguf = match name.as_str() {
            "model.embed_tokens.weight" => "token_embd.weight".to_string(),
            "model.norm.weight" => "output_norm.weight".to_string(),
            "lm_head.weight" => "output.weight".to_string(),
            "score.weight" => {
                return Err(
                    "a reward model (score head) has no GGUF mapping: export the policy".into(),
                )
            }
            other => {
                let rest = other.strip_prefix("model.layers.").ok_or_else(|| {
                    crate::error::Error::Internal(format!("no GGUF name for `{other}`"))
                })?;
                let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
                let part = match rest {
                    "input_layernorm.weight" => "attn_norm.weight",
                    "post_attention_layernorm.weight" => "ffn_norm.weight",
                    "self_attn.q_proj.weight" => "attn_q.weight",
                    "self_attn.k_proj.weight" => "attn_k.weight",
                    "self_attn.v_proj.weight" => "attn_v.weight",
                    "self_attn.o_proj.weight" => "attn_output.weight",
                    "self_attn.q_proj.bias" => "attn_q.bias",
                    "self_attn.k_proj.bias" => "attn_k.bias",
                    "self_attn.v_proj.bias" => "attn_v.bias",
                    "self_attn.q_norm.weight" => "attn_q_norm.weight",
                    "self_attn.k_norm.weight" => "attn_k_norm.weight",
                    "mlp.gate_proj.weight" => "ffn_gate.weight",
                    "mlp.up_proj.weight" => "ffn_up.weight",
                    "mlp.down_proj.weight" => "ffn_down.weight",
                    other => {
                        return Err(crate::error::Error::Internal(format!(
                            "no GGUF name for layer tensor `{other}`"
                        )))
                    }
                };
                format!("blk.{layer}.{part}")
            }
        };
        let heads = if name.ends_with("q_proj.weight") {
            Some(cfg.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(cfg.num_kv_heads)
        } else {
            None
        };
        match heads {
            Some(h) if permute => {
                let (rows, cols) = t.dims2()?;
                let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let p = permute_rows(&values, rows, cols, h);
                out.push(from_values(gguf, vec![cols as u64, rows as u64], &p, quant));
            }
            _ => out.push(tensor(gguf, &t, quant)?),
        }
    }
    if let Some(s) = &cfg.rope_scaling {
        // Llama 3's frequency factors, one per rotary pair (llama.cpp's `rope_freqs`).
        let dim = cfg.head_dim as f64;
        let (low, high) = (
            s.original_max_position_embeddings / s.low_freq_factor,
            s.original_max_position_embeddings / s.high_freq_factor,
        );
        let factors: Vec<f32> = (0..cfg.head_dim / 2)
            .map(|i| {
                let freq = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / dim);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                (if wavelen < high {
                    1.0
                } else if wavelen > low {
                    s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    1.0 / ((1.0 - smooth) / s.factor + smooth)
                }) as f32
            })
            .collect();
        let n = factors.len() as u64;
        out.push(from_values(
            "rope_freqs.weight".into(),
            vec![n],
            &factors,
            Quant::F32,
        ));
    }
    Ok(out)
}

/// The tokenizer as llama.cpp's BPE (`gpt2`) vocabulary: tokens by id (padded to the model's
/// vocabulary size), their types, merges, special ids, the chat template.
fn tokenizer_kvs(dir: &Path, cfg: &ModelConfig, arch: &str) -> Result<Vec<(String, Kv)>> {
    let read = |f: &str| -> Result<Json> {
        Ok(serde_json::from_slice(
            &std::fs::read(dir.join(f)).map_err(|e| {
                format!(
                    "{}: {e} (a GGUF file carries the tokenizer)",
                    dir.join(f).display()
                )
            })?,
        )?)
    };
    let tok = read("tokenizer.json")?;
    let config = read("tokenizer_config.json").unwrap_or(Json::Null);
    if tok["model"]["type"] != "BPE" {
        return Err("only BPE tokenizers are exported to GGUF".into());
    }
    let n = cfg.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    for (text, id) in tok["model"]["vocab"].as_object().into_iter().flatten() {
        if let Some(i) = id.as_u64().map(|i| i as usize).filter(|i| *i < n) {
            tokens[i] = Some(text.clone());
        }
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(i), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) {
            if (i as usize) < n {
                tokens[i as usize] = Some(text.to_string());
                types[i as usize] = if added["special"] == true { 3 } else { 4 };
            }
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect();
    let id_of = |key: &str| -> Option<u32> {
        let text = match &config[key] {
            Json::String(s) => s.clone(),
            Json::Object(o) => o.get("content")?.as_str()?.to_string(),
            _ => return None,
        };
        tokens.iter().position(|t| *t == text).map(|i| i as u32)
    };
    let pre = match arch {
        "qwen2" | "qwen3" => "qwen2",
        _ if n == 128256 => "llama-bpe",
        _ => "default",
    };
    let mut kvs = vec![
        ("tokenizer.ggml.model".into(), Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Kv::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), Kv::Strs(tokens.clone())),
        ("tokenizer.ggml.token_type".into(), Kv::I32s(types)),
        ("tokenizer.ggml.merges".into(), Kv::Strs(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Kv::Bool(match &config["add_bos_token"] {
                Json::Bool(b) => *b,
                _ => template_starts_with_special(&tok["post_processor"]),
            }),
        ),
    ];
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
    ] {
        if let Some(id) = id_of(field) {
            kvs.push((key.into(), Kv::U32(id)));
        }
    }
    let template = config["chat_template"]
        .as_str()
        .map(str::to_string)
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    if let Some(t) = template {
        kvs.push(("tokenizer.chat_template".into(), Kv::Str(t)));
    }
    Ok(kvs)
}

/// Whether the tokenizer's post-processor puts a special token first (Llama 3's BOS): what llama.cpp's
/// converter reads when tokenizer_config.json says nothing of `add_bos_token`.
fn template_starts_with_special(p: &Json) -> bool {
    match p["type"].as_str() {
        Some("TemplateProcessing") => p["single"][0].get("SpecialToken").is_some(),
        Some("Sequence") => p["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(template_starts_with_special),
        _ => false,
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn kv(out: &mut Vec<u8>, key: &str, value: &Kv) {
    string(out, key);
    match value {
        Kv::U32(v) => {
            out.extend(4u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Kv::F32(v) => {
            out.extend(6u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Kv::Bool(v) => {
            out.extend(7u32.to_le_bytes());
            out.push(u8::from(*v));
        }
        Kv::Str(s) => {
            out.extend(8u32.to_le_bytes());
            string(out, s);
        }
        Kv::Strs(items) => {
            out.extend(9u32.to_le_bytes());
            out.extend(8u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for s in items {
                string(out, s);
            }
        }
        Kv::I32s(items) => {
            out.extend(9u32.to_le_bytes());
            out.extend(5u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for v in items {
                out.extend(v.to_le_bytes());
            }
        }
    }
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(ALIGNMENT) {
        out.push(0);
    }
}

/// Writes `model` (loaded from `dir`, whose tokenizer files it carries) as one GGUF file at `path`.
pub fn write(model: &mut Decoder, dir: &Path, path: &Path, quant: Quant, name: &str) -> Result<()> {
    model.merge_adapters()?;
    let cfg = model.cfg.clone();
    let arch = arch_name(&cfg)?;
    let mut kvs: Vec<(String, Kv)> = vec![
        ("general.architecture".into(), Kv::Str(arch.into())),
        ("general.name".into(), Kv::Str(name.into())),
        ("general.file_type".into(), Kv::U32(quant.file_type())),
        ("general.quantization_version".into(), Kv::U32(2)),
        ("general.alignment".into(), Kv::U32(ALIGNMENT as u32)),
    ];
    // The hyper-parameters, under the architecture's prefix.
    let count = |v: usize| Kv::U32(v as u32);
    let params = [
        ("context_length", count(cfg.max_position_embeddings)),
        ("embedding_length", count(cfg.hidden_size)),
        ("block_count", count(cfg.num_layers)),
        ("feed_forward_length", count(cfg.intermediate_size)),
        ("attention.head_count", count(cfg.num_heads)),
        ("attention.head_count_kv", count(cfg.num_kv_heads)),
        ("attention.key_length", count(cfg.head_dim)),
        ("attention.value_length", count(cfg.head_dim)),
        (
            "attention.layer_norm_rms_epsilon",
            Kv::F32(cfg.rms_norm_eps as f32),
        ),
        ("rope.freq_base", Kv::F32(cfg.rope_theta as f32)),
        ("rope.dimension_count", count(cfg.head_dim)),
        ("vocab_size", count(cfg.vocab_size)),
    ];
    kvs.extend(
        params
            .into_iter()
            .map(|(key, v)| (format!("{arch}.{key}"), v)),
    );
    kvs.extend(tokenizer_kvs(dir, &cfg, arch)?);
    let tensors = tensors(model, quant)?;
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in &kvs {
        kv(&mut head, k, v);
    }
    let mut offset = 0usize;
    for t in &tensors {
        string(&mut head, &t.name);
        head.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend(d.to_le_bytes());
        }
        head.extend((t.ty as u32).to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    pad(&mut head);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&head)?;
    for t in &tensors {
        f.write_all(&t.data)?;
        let padding = t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT - t.data.len();
        f.write_all(&vec![0u8; padding])?;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_are_a_scale_and_32_rounded_bytes() {
        let values: Vec<f32> = (0..32).map(|i| i as f32 - 12.7).collect();
        let bytes = q8_0_bytes(&values);
        assert_eq!(bytes.len(), 34);
        let d = half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        // max |x| is 31 − 12.7 = 18.3; the scale is stored in f16.
        assert!((d - 18.3 / 127.0).abs() < 1e-4, "{d}");
        assert_eq!(bytes[2 + 31] as i8, 127);
        assert_eq!(bytes[2] as i8, (-12.7f32 / (18.3 / 127.0)).round() as i8);
    }

    #[test]
    fn the_llama_permutation_interleaves_each_heads_halves() {
        // One head of 4 rows: transformers' [r0, r1 | r2, r3] pairs (r0, r2), (r1, r3).
        let w = [0.0f32, 1.0, 2.0, 3.0];
        assert_eq!(permute_rows(&w, 4, 1, 1), [0.0, 2.0, 1.0, 3.0]);
    }
}
