//! How a model maps onto one of llama.cpp's architectures: the architecture's name, the
//! hyper-parameters it reads, its tensor names and the weight conventions it expects (Llama's rotary
//! row order, Gemma's norms stored as 1 + w), and what llama.cpp fixes in code that a model must agree
//! with to be exported at all (Gemma's layer pattern, local rope base and query scale).

use super::{from_values, tensor, Kv, Quant, TensorOut};
use crate::model::config::{Arch, ModelConfig};
use crate::model::decoder::Decoder;
use candle_core::DType;

type Result<T> = crate::error::Result<T>;

/// A llama.cpp architecture ptl writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
}

impl Target {
    /// The architecture `cfg` is written as, or why llama.cpp cannot run it with this model's
    /// numbers.
    pub fn of(cfg: &ModelConfig) -> Result<Target> {
        let target = match cfg.arch {
            Arch::Qwen3 => Target::Qwen3,
            Arch::Qwen2 => Target::Qwen2,
            Arch::Llama | Arch::Mistral if cfg.sliding_window.is_some() => return Err(
                "a sliding-window attention has no GGUF mapping in llama.cpp's llama architecture: this model cannot be exported to GGUF"
                    .into(),
            ),
            Arch::Llama | Arch::Mistral if cfg.o_bias || cfg.mlp_bias => {
                return Err("Llama with attention or MLP biases has no GGUF mapping here".into())
            }
            Arch::Llama | Arch::Mistral => Target::Llama,
            Arch::Gemma2 => Target::Gemma2,
            Arch::Gemma3 => Target::Gemma3,
        };
        if target.is_gemma() {
            gemma_fits(cfg, target).map_err(|why| {
                format!("this Gemma model cannot be exported to GGUF: {why} (format = \"hf\" keeps every setting)")
            })?;
        }
        Ok(target)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Llama => "llama",
            Target::Qwen2 => "qwen2",
            Target::Qwen3 => "qwen3",
            Target::Gemma2 => "gemma2",
            Target::Gemma3 => "gemma3",
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Target::Gemma2 | Target::Gemma3)
    }
}

/// What llama.cpp's gemma2 and gemma3 take from code rather than from the file, checked against the
/// model: a mismatch would run with other numbers than transformers', so it is refused.
fn gemma_fits(cfg: &ModelConfig, target: Target) -> std::result::Result<(), String> {
    let name = target.name();
    if cfg.qkv_bias || cfg.o_bias || cfg.mlp_bias {
        return Err(format!("llama.cpp's {name} has no projection biases"));
    }
    if cfg.rope_scaling.is_some() {
        return Err(format!("llama.cpp's {name} has no llama3 rope scaling"));
    }
    // Queries are scaled by 1/√head_dim, except in the 27B models (1/√(hidden / heads)), whatever
    // query_pre_attn_scalar says (llama.cpp picks the model size from the layer count).
    let big = matches!(
        (target, cfg.num_layers),
        (Target::Gemma2, 46) | (Target::Gemma3, 62)
    );
    let scale_dim = if big {
        cfg.hidden_size / cfg.num_heads.max(1)
    } else {
        cfg.head_dim
    };
    if cfg.attn_scale_dim != scale_dim as f64 {
        return Err(format!(
            "query_pre_attn_scalar is {} but llama.cpp's {name} scales this model's queries by 1/√{scale_dim}",
            cfg.attn_scale_dim
        ));
    }
    if cfg.sliding_window.is_none() {
        return Err(format!("llama.cpp's {name} needs a sliding_window"));
    }
    // Layer i attends within the window when i mod P < P − 1 (P = 2 for gemma2, 6 for gemma3).
    let period = if target == Target::Gemma2 { 2 } else { 6 };
    if (0..cfg.num_layers).any(|i| cfg.is_sliding(i) != (i % period < period - 1)) {
        return Err(format!(
            "llama.cpp's {name} makes layer i a sliding-window layer exactly when i mod {period} < {}; this model's layer_types differ",
            period - 1
        ));
    }
    let local_base = cfg.rope_theta_local.unwrap_or(cfg.rope_theta);
    match target {
        Target::Gemma2 => {
            if cfg.attn_logit_softcapping.is_none() || cfg.final_logit_softcapping.is_none() {
                return Err(
                    "llama.cpp's gemma2 always soft-caps attention scores and logits; this model caps neither or one"
                        .into(),
                );
            }
            if cfg.rope_linear_factor.is_some() || local_base != cfg.rope_theta {
                return Err("llama.cpp's gemma2 has one rope base and no rope scaling".into());
            }
            if !cfg.tie_word_embeddings {
                return Err(
                    "llama.cpp's gemma2 reads the output head from the embeddings; this model's lm_head is its own"
                        .into(),
                );
            }
        }
        _ => {
            if cfg.attn_logit_softcapping.is_some() || cfg.final_logit_softcapping.is_some() {
                return Err("llama.cpp's gemma3 does not soft-cap".into());
            }
            if local_base != 10_000.0 {
                return Err(format!(
                    "the sliding layers' rope base is {local_base}; llama.cpp's gemma3 uses 10000"
                ));
            }
        }
    }
    Ok(())
}

/// The hyper-parameters under the architecture's prefix.
pub fn hyper_parameters(cfg: &ModelConfig, target: Target) -> Vec<(String, Kv)> {
    let count = |v: usize| Kv::U32(v as u32);
    let mut params = vec![
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
    if let Some(f) = cfg.rope_linear_factor {
        // llama.cpp applies it to every layer but gemma3's sliding ones: where ptl applies it.
        params.push(("rope.scaling.type", Kv::Str("linear".into())));
        params.push(("rope.scaling.factor", Kv::F32(f as f32)));
    }
    if let (true, Some(w)) = (target.is_gemma(), cfg.sliding_window) {
        params.push(("attention.sliding_window", count(w)));
    }
    for (key, cap) in [
        ("attn_logit_softcapping", cfg.attn_logit_softcapping),
        ("final_logit_softcapping", cfg.final_logit_softcapping),
    ] {
        if let Some(c) = cap {
            params.push((key, Kv::F32(c as f32)));
        }
    }
    params
        .into_iter()
        .map(|(key, v)| (format!("{}.{key}", target.name()), v))
        .collect()
}

/// llama.cpp's name for a decoder layer's tensor (`rest` follows `model.layers.N.`).
fn layer_part(rest: &str, target: Target) -> Option<&'static str> {
    Some(match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        // Gemma's norm after attention is its own tensor; Llama's is the norm before the MLP.
        "post_attention_layernorm.weight" if target.is_gemma() => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
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
        _ => return None,
    })
}

/// llama.cpp's name for a checkpoint tensor.
fn gguf_name(name: &str, target: Target) -> Result<String> {
    Ok(match name {
        "model.embed_tokens.weight" => "token_embd.weight".to_string(),
        "model.norm.weight" => "output_norm.weight".to_string(),
        "lm_head.weight" => "output.weight".to_string(),
        "score.weight" => {
            return Err("a reward model (score head) has no GGUF mapping: export the policy".into())
        }
        other => {
            let rest = other.strip_prefix("model.layers.").ok_or_else(|| {
                crate::error::Error::Internal(format!("no GGUF name for `{other}`"))
            })?;
            let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let part = layer_part(rest, target).ok_or_else(|| {
                crate::error::Error::Internal(format!("no GGUF name for layer tensor `{rest}`"))
            })?;
            format!("blk.{layer}.{part}")
        }
    })
}

/// llama.cpp's rotary layout for the llama architecture pairs dimension i with i + 1, transformers'
/// pairs i with i + d/2: q and k rows are permuted per head to match (llama.cpp's converter).
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
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

/// The tensors under llama.cpp's names, in its conventions.
pub fn tensors(model: &mut Decoder, target: Target, quant: Quant) -> Result<Vec<TensorOut>> {
    let cfg = model.cfg.clone();
    let mut out = Vec::new();
    for (name, t) in model.params_mut() {
        let t = t.detach();
        let gguf = gguf_name(&name, target)?;
        let heads = if name.ends_with("q_proj.weight") {
            Some(cfg.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(cfg.num_kv_heads)
        } else {
            None
        };
        match heads {
            Some(h) if target == Target::Llama => {
                let (rows, cols) = t.dims2()?;
                let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let p = permute_rows(&values, rows, cols, h);
                out.push(from_values(gguf, vec![cols as u64, rows as u64], &p, quant));
            }
            // Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by its weight, so it stores 1 + w
            // (llama.cpp's converter adds 1 to every Gemma norm, q/k norms included).
            _ if target.is_gemma() && name.ends_with("norm.weight") => {
                out.push(tensor(gguf, &(t.to_dtype(DType::F32)? + 1.0)?, quant)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gemma(arch: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Result<Target> {
        let mut c = json!({
            "architectures": [arch], "vocab_size": 32, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8,
            "tie_word_embeddings": true, "hidden_activation": "gelu_pytorch_tanh",
        });
        if arch.starts_with("Gemma2") {
            c["num_hidden_layers"] = json!(4);
            c["attn_logit_softcapping"] = json!(50.0);
            c["final_logit_softcapping"] = json!(30.0);
        }
        edit(&mut c);
        Target::of(&ModelConfig::from_json(&c).unwrap())
    }

    fn refusal(r: Result<Target>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn gemma_exports_only_what_llama_cpp_computes_the_same_way() {
        assert_eq!(gemma("Gemma3ForCausalLM", |_| ()).unwrap(), Target::Gemma3);
        assert_eq!(gemma("Gemma2ForCausalLM", |_| ()).unwrap(), Target::Gemma2);
        let e = refusal(gemma("Gemma3ForCausalLM", |c| {
            c["query_pre_attn_scalar"] = json!(24)
        }));
        assert!(
            e.contains("query_pre_attn_scalar is 24") && e.contains("1/√16"),
            "{e}"
        );
        let e = refusal(gemma("Gemma3ForCausalLM", |c| {
            c["layer_types"] = json!([
                "sliding_attention",
                "full_attention",
                "sliding_attention",
                "sliding_attention",
                "sliding_attention",
                "full_attention"
            ])
        }));
        assert!(e.contains("i mod 6 < 5"), "{e}");
        let e = refusal(gemma("Gemma3ForCausalLM", |c| {
            c["rope_local_base_freq"] = json!(1e6)
        }));
        assert!(e.contains("10000"), "{e}");
        let e = refusal(gemma("Gemma3ForCausalLM", |c| {
            c["final_logit_softcapping"] = json!(30.0)
        }));
        assert!(e.contains("soft-cap"), "{e}");
        let e = refusal(gemma("Gemma2ForCausalLM", |c| {
            c["final_logit_softcapping"] = json!(null)
        }));
        assert!(e.contains("always soft-caps"), "{e}");
        let e = refusal(gemma("Gemma2ForCausalLM", |c| {
            c["tie_word_embeddings"] = json!(false)
        }));
        assert!(e.contains("lm_head"), "{e}");
        let e = refusal(gemma("Gemma2ForCausalLM", |c| {
            c["sliding_window"] = json!(null)
        }));
        assert!(e.contains("sliding_window"), "{e}");
    }
}
