//! A Hugging Face config.json for the decoder families ptl trains: Llama (3.x rope scaling),
//! Mistral (sliding window), Qwen2 (qkv bias), Qwen3 (q/k norm, explicit head_dim), Gemma 3 text
//! (scaled embeddings, (1 + w) norms around attention and MLP, GeGLU, sliding and full layers with
//! their own rope bases).

use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
}

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Llama 3 rope scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Attend to at most this many previous positions (Mistral).
    pub sliding_window: Option<usize>,
    /// Bias on q, k, v projections (Qwen2; Llama's `attention_bias` also puts one on o).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm on each head of q and k before rope (Qwen3).
    pub qk_norm: bool,
    /// What the last hidden state feeds: the vocabulary (`*ForCausalLM`) or one scalar
    /// (`*ForSequenceClassification` with one label: a reward model).
    pub head: Head,
    /// The padding token (`pad_token_id`): a scalar head reads the rightmost other token.
    pub pad_token_id: Option<u32>,
    /// The standard deviation transformers initializes new weights with (a new score head).
    pub initializer_range: f64,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    pub embed_scale: Option<f64>,
    /// Gemma's norms: RMSNorm times (1 + w), and norms after attention and around the MLP.
    pub gemma_norms: bool,
    pub activation: Activation,
    /// Attention scores are divided by √ this (Gemma's `query_pre_attn_scalar`; else head_dim).
    pub attn_scale_dim: f64,
    /// Which layers attend within `sliding_window` (the others see every earlier position).
    pub sliding_layers: Vec<bool>,
    /// The rope base of sliding layers when it differs from `rope_theta` (Gemma 3's local base).
    pub rope_theta_local: Option<f64>,
    /// Positions divided by this for the full layers' rope (Gemma 3's `linear` rope scaling).
    pub rope_linear_factor: Option<f64>,
    /// Gemma 2: logits over the vocabulary become c·tanh(logits / c).
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2: attention scores become c·tanh(scores / c) before the mask.
    pub attn_logit_softcapping: Option<f64>,
}

impl ModelConfig {
    /// Whether layer `i` attends within the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(i).copied().unwrap_or(true)
    }
}

/// The output head of a model folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `lm_head` (or the tied embedding) over the vocabulary.
    Lm,
    /// `score.weight` [1, hidden]: one reward per sequence.
    Score,
}

impl Arch {
    /// The transformers class prefix (`Qwen3` in `Qwen3ForCausalLM`).
    pub fn class_prefix(self) -> &'static str {
        match self {
            Arch::Llama => "Llama",
            Arch::Mistral => "Mistral",
            Arch::Qwen2 => "Qwen2",
            Arch::Qwen3 => "Qwen3",
            Arch::Gemma2 => "Gemma2",
            Arch::Gemma3 => "Gemma3",
        }
    }
}

/// What decides whether two models' weights line up one to one (a merge): the family and every
/// dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub arch: Arch,
    pub head: Head,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let class = match self.head {
            Head::Lm => "ForCausalLM",
            Head::Score => "ForSequenceClassification",
        };
        write!(
            f,
            "{}{class}: {} layers, hidden {}, MLP {}, {} heads of {} ({} key/value), vocabulary {}",
            self.arch.class_prefix(),
            self.num_layers,
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.head_dim,
            self.num_kv_heads,
            self.vocab_size
        )
    }
}

fn get_usize(c: &Value, key: &str) -> Result<usize, String> {
    c[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("config.json: `{key}` is missing or not a positive integer"))
}

impl ModelConfig {
    /// The family, head and dimensions (what must agree for weights to merge).
    pub fn shape(&self) -> Shape {
        Shape {
            arch: self.arch,
            head: self.head,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    pub fn load(dir: &Path) -> Result<ModelConfig, String> {
        let path = dir.join("config.json");
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let c: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        Self::from_json(&c).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_json(c: &Value) -> Result<ModelConfig, String> {
        let archs: Vec<&str> = c["architectures"]
            .as_array()
            .map_or(vec![], |a| a.iter().filter_map(Value::as_str).collect());
        let named = archs.first().copied().or(c["model_type"].as_str());
        let (family, head) = match named {
            Some(a) => match a.strip_suffix("ForSequenceClassification") {
                Some(f) => (f, Head::Score),
                None => (a.strip_suffix("ForCausalLM").unwrap_or(a), Head::Lm),
            },
            None => return Err("no `architectures` or `model_type`".into()),
        };
        let arch = match family {
            "Llama" | "llama" => Arch::Llama,
            "Mistral" | "mistral" => Arch::Mistral,
            "Qwen2" | "qwen2" => Arch::Qwen2,
            "Qwen3" | "qwen3" => Arch::Qwen3,
            "Gemma2" | "gemma2" => Arch::Gemma2,
            "Gemma3" | "gemma3_text" | "gemma3" => Arch::Gemma3,
            _ => {
                return Err(format!(
                    "architecture {} is not supported: ptl trains the ForCausalLM and ForSequenceClassification models of Llama, Mistral, Qwen2, Qwen3, Gemma 2 and Gemma 3 (text)",
                    named.unwrap_or_default()
                ))
            }
        };
        if head == Head::Score {
            let labels = c["id2label"].as_object().map_or(1, |m| m.len());
            let labels = c["num_labels"].as_u64().map_or(labels, |n| n as usize);
            if labels != 1 {
                return Err(format!(
                    "a sequence classifier with {labels} labels is not a reward model: ptl reads one scalar (num_labels 1)"
                ));
            }
        }
        let hidden_size = get_usize(c, "hidden_size")?;
        let num_heads = get_usize(c, "num_attention_heads")?;
        let num_kv_heads = c["num_key_value_heads"]
            .as_u64()
            .map_or(num_heads, |v| v as usize);
        let head_dim = match c["head_dim"].as_u64() {
            Some(h) => h as usize,
            None => hidden_size / num_heads.max(1),
        };
        // Zero widths would leave rows of no elements for the fused ops to split by.
        for (field, v) in [
            ("hidden_size", hidden_size),
            ("head_dim", head_dim),
            ("intermediate_size", get_usize(c, "intermediate_size")?),
            ("vocab_size", get_usize(c, "vocab_size")?),
        ] {
            if v == 0 {
                return Err(format!("{field} must be positive"));
            }
        }
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!("num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"));
        }
        // transformers 5 writes `rope_parameters` (theta and scaling together), for Gemma 3 one set
        // per layer type; older configs write `rope_theta` and `rope_scaling`.
        let per_type = c["rope_parameters"]["full_attention"].is_object();
        let global = if per_type {
            &c["rope_parameters"]["full_attention"]
        } else {
            &c["rope_parameters"]
        };
        let rope = if global.is_object() {
            global
        } else {
            &c["rope_scaling"]
        };
        let rope_theta = global["rope_theta"]
            .as_f64()
            .or(c["rope_theta"].as_f64())
            .unwrap_or(10_000.0);
        let local = &c["rope_parameters"]["sliding_attention"];
        let rope_theta_local = if per_type {
            let kind = local["rope_type"].as_str().unwrap_or("default");
            if kind != "default" {
                return Err(format!(
                    "rope_parameters.sliding_attention.rope_type \"{kind}\" is not supported (only default)"
                ));
            }
            local["rope_theta"].as_f64()
        } else {
            c["rope_local_base_freq"].as_f64()
        };
        let mut rope_linear_factor = None;
        let rope_scaling = match rope {
            Value::Null => None,
            s => {
                let kind = s["rope_type"].as_str().or(s["type"].as_str()).unwrap_or("");
                match kind {
                    "llama3" => Some(Llama3Scaling {
                        factor: s["factor"]
                            .as_f64()
                            .ok_or("rope_scaling.factor is missing")?,
                        low_freq_factor: s["low_freq_factor"].as_f64().unwrap_or(1.0),
                        high_freq_factor: s["high_freq_factor"].as_f64().unwrap_or(4.0),
                        original_max_position_embeddings: s["original_max_position_embeddings"]
                            .as_f64()
                            .or(c["max_position_embeddings"].as_f64())
                            .ok_or("rope_scaling.original_max_position_embeddings is missing")?,
                    }),
                    "default" | "" => None,
                    "linear" => {
                        rope_linear_factor = Some(
                            s["factor"]
                                .as_f64()
                                .ok_or("rope_scaling.factor is missing")?,
                        );
                        None
                    }
                    other => {
                        return Err(format!(
                            "rope_scaling type {other} is not supported (only llama3 and linear)"
                        ))
                    }
                }
            }
        };
        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        let softcap = |field: &str| -> Result<Option<f64>, String> {
            match &c[field] {
                Value::Null => Ok(None),
                v if gemma => match v.as_f64() {
                    Some(x) if x > 0.0 => Ok(Some(x)),
                    _ => Err(format!("{field} must be a positive number or null")),
                },
                _ => Err(format!("{field} is only supported for Gemma models")),
            }
        };
        let final_logit_softcapping = softcap("final_logit_softcapping")?;
        let attn_logit_softcapping = softcap("attn_logit_softcapping")?;
        if gemma && c["use_bidirectional_attention"].as_bool() == Some(true) {
            return Err("use_bidirectional_attention is not supported".into());
        }
        let activation = match c["hidden_activation"].as_str().or(c["hidden_act"].as_str()) {
            None | Some("silu") => Activation::Silu,
            Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(other) => {
                return Err(format!(
                    "hidden_activation \"{other}\" is not supported (silu, gelu_pytorch_tanh)"
                ))
            }
        };
        let sliding_layers: Vec<bool> = match c["layer_types"].as_array() {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            None if arch == Arch::Gemma2 => (0..get_usize(c, "num_hidden_layers")?)
                .map(|i| (i + 1) % 2 != 0)
                .collect(),
            None if gemma => {
                let pattern = c["sliding_window_pattern"]
                    .as_u64()
                    .or(c["_sliding_window_pattern"].as_u64())
                    .unwrap_or(6)
                    .max(1) as usize;
                (0..get_usize(c, "num_hidden_layers")?)
                    .map(|i| (i + 1) % pattern != 0)
                    .collect()
            }
            None => vec![],
        };
        let sliding_window = match arch {
            Arch::Mistral | Arch::Gemma2 | Arch::Gemma3 => {
                c["sliding_window"].as_u64().map(|v| v as usize)
            }
            Arch::Qwen2 | Arch::Qwen3 if c["use_sliding_window"].as_bool() == Some(true) => {
                return Err("use_sliding_window is not supported for Qwen models".into())
            }
            _ => None,
        };
        let attention_bias = c["attention_bias"].as_bool().unwrap_or(false);
        Ok(ModelConfig {
            arch,
            vocab_size: get_usize(c, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(c, "intermediate_size")?,
            num_layers: get_usize(c, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: c["max_position_embeddings"]
                .as_u64()
                .map_or(4096, |v| v as usize),
            tie_word_embeddings: c["tie_word_embeddings"].as_bool().unwrap_or(false),
            sliding_window,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            mlp_bias: c["mlp_bias"].as_bool().unwrap_or(false),
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            head,
            pad_token_id: c["pad_token_id"].as_u64().map(|v| v as u32),
            initializer_range: c["initializer_range"].as_f64().unwrap_or(0.02),
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            gemma_norms: gemma,
            activation,
            attn_scale_dim: match c["query_pre_attn_scalar"].as_f64() {
                Some(s) if gemma => s,
                _ => head_dim as f64,
            },
            sliding_layers,
            rope_theta_local,
            rope_linear_factor,
            final_logit_softcapping,
            attn_logit_softcapping,
        })
    }
}
