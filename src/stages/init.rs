//! `init`: a new, randomly initialized model from an architecture preset and a tokenizer folder, so a
//! pipeline can start from nothing downloaded (the quickstart does).

use super::schema::*;
use crate::data::tokenizer::TextTokenizer;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::model::config::ModelConfig;
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use serde_json::json;

pub const ARCHS: &[&str] = &["qwen3", "qwen2", "llama", "mistral", "gemma2", "gemma3"];
pub const SIZES: &[&str] = &["tiny", "small", "base"];

/// hidden, layers, attention heads, key/value heads, MLP width of each size.
fn preset(size: &str) -> (i64, i64, i64, i64, i64) {
    match size {
        "small" => (256, 4, 8, 4, 768),
        "base" => (768, 12, 12, 4, 2048),
        _ => (64, 2, 4, 2, 192),
    }
}

pub fn kind() -> Kind {
    let size_doc = "architecture preset: tiny (64 wide, 2 layers), small (256, 4), base (768, 12)";
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "init",
        summary: "a new randomly initialized model from an architecture preset and a tokenizer",
        fields: vec![
            path(
                "tokenizer",
                Default::Required,
                "a folder with tokenizer.json (and tokenizer_config.json with the chat template)",
            ),
            choice(
                "arch",
                ARCHS,
                "qwen3",
                "the architecture written to config.json",
            ),
            choice("size", SIZES, "tiny", size_doc),
            optional("hidden_size", Type::Int, "instead of the preset's width"),
            optional(
                "layers",
                Type::Int,
                "instead of the preset's number of layers",
            ),
            optional(
                "heads",
                Type::Int,
                "instead of the preset's attention heads",
            ),
            optional(
                "kv_heads",
                Type::Int,
                "instead of the preset's key/value heads",
            ),
            optional(
                "intermediate_size",
                Type::Int,
                "instead of the preset's MLP width",
            ),
            int(
                "max_position_embeddings",
                2048,
                "the longest sequence the model is made for",
            ),
            float("rope_theta", 10_000.0, "rotary embedding base"),
            boolean(
                "tie_embeddings",
                true,
                "share the input embedding and the output head",
            ),
            field(
                "seed",
                Type::Int,
                Default::Config("seed"),
                "seed for the weights (default: config.seed)",
            ),
        ],
        outputs: vec![output(
            "model",
            Type::Model,
            "an HF folder: config.json, model.safetensors, the tokenizer files",
        )],
        refused: vec![],
        rules: vec![init_rules],
    }
}

fn init_rules(s: &StageView, d: &mut Vec<Diag>) {
    for f in [
        "hidden_size",
        "layers",
        "heads",
        "kv_heads",
        "intermediate_size",
        "max_position_embeddings",
        "rope_theta",
    ] {
        super::rules::positive(s, d, f);
    }
    let size = match s.get("size") {
        Value::Str(v) => v.clone(),
        _ => "tiny".into(),
    };
    let (hidden, _, heads, kv, _) = preset(&size);
    let get = |f: &str, default: i64| match s.get(f) {
        Value::Int(i) => *i,
        _ => default,
    };
    let (hidden, heads, kv) = (
        get("hidden_size", hidden),
        get("heads", heads),
        get("kv_heads", kv),
    );
    if heads > 0 && kv > 0 && (heads % kv != 0 || hidden % heads != 0) {
        let at = if s.is_set("kv_heads") {
            "kv_heads"
        } else {
            "heads"
        };
        d.push(
            Diag::error(
                "ptl::out_of_range",
                format!("{heads} heads do not fit: hidden_size ({hidden}) must divide by heads, and heads by kv_heads ({kv})"),
            )
            .label(s.loc(at), "here")
            .help("pick heads that divide hidden_size, and kv_heads that divide heads"),
        );
    }
}

/// The stage's fields, typed (the schema fills in every default; the shape fields left out take the
/// `size` preset's values).
#[derive(Debug, serde::Deserialize)]
pub struct InitParams {
    pub arch: String,
    pub size: String,
    pub hidden_size: Option<i64>,
    pub layers: Option<i64>,
    pub heads: Option<i64>,
    pub kv_heads: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub max_position_embeddings: i64,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    pub seed: u64,
}

/// config.json for `arch` with the given shape, as transformers writes it.
pub fn hf_config(p: &InitParams, tok: &TextTokenizer) -> serde_json::Value {
    let (hidden, layers, heads, kv, inter) = preset(&p.size);
    let hidden = p.hidden_size.unwrap_or(hidden);
    let heads = p.heads.unwrap_or(heads);
    let class = match p.arch.as_str() {
        "qwen2" => "Qwen2ForCausalLM",
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        "gemma3" => "Gemma3ForCausalLM",
        _ => "Qwen3ForCausalLM",
    };
    let token = |name: Option<&str>| name.and_then(|t| tok.inner.token_to_id(t));
    let layers = p.layers.unwrap_or(layers);
    let mut config = json!({
        "architectures": [class],
        "model_type": p.arch,
        "vocab_size": tok.inner.get_vocab_size(true),
        "hidden_size": hidden,
        "intermediate_size": p.intermediate_size.unwrap_or(inter),
        "num_hidden_layers": p.layers.unwrap_or(layers),
        "num_attention_heads": heads,
        "num_key_value_heads": p.kv_heads.unwrap_or(kv),
        "head_dim": hidden / heads.max(1),
        "hidden_act": "silu",
        "max_position_embeddings": p.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": p.rope_theta,
        "tie_word_embeddings": p.tie_embeddings,
        "attention_bias": false,
        "initializer_range": 0.02,
        "bos_token_id": token(tok.bos.as_deref()),
        "eos_token_id": token(tok.eos.as_deref()),
        "pad_token_id": token(tok.pad.as_deref()),
        "dtype": "float32",
        "torch_dtype": "float32",
    });
    if let Some(gemma) = gemma_defaults(&p.arch, p.rope_theta) {
        // Gemma2Config's and Gemma3TextConfig's defaults: sliding layers (all but every 2nd, all but
        // every 6th) and full ones, GeGLU, queries scaled by head_dim, Gemma 2's soft-capping.
        let head_dim = hidden / heads.max(1);
        let types: Vec<&str> = (0..layers)
            .map(|i| {
                if (i + 1) % gemma.period == 0 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        for (key, value) in [
            ("model_type", json!(gemma.model_type)),
            ("hidden_activation", json!("gelu_pytorch_tanh")),
            ("query_pre_attn_scalar", json!(head_dim)),
            ("sliding_window", json!(gemma.window)),
            ("layer_types", json!(types)),
            ("final_logit_softcapping", json!(gemma.caps.map(|c| c.1))),
            ("attn_logit_softcapping", json!(gemma.caps.map(|c| c.0))),
            ("rope_parameters", gemma.rope),
        ] {
            config[key] = value;
        }
        if let Some(o) = config.as_object_mut() {
            o.remove("hidden_act");
            o.remove("rope_theta");
        }
    }
    config
}

/// What a new Gemma's config.json takes from transformers' config class.
struct GemmaDefaults {
    model_type: &'static str,
    /// Every `period`-th layer attends to the whole sequence, the others within `window`.
    period: i64,
    window: i64,
    /// Attention and final-logit soft-capping.
    caps: Option<(f64, f64)>,
    rope: serde_json::Value,
}

fn gemma_defaults(arch: &str, rope_theta: f64) -> Option<GemmaDefaults> {
    let base = |theta: f64| json!({"rope_type": "default", "rope_theta": theta});
    match arch {
        "gemma2" => Some(GemmaDefaults {
            model_type: "gemma2",
            period: 2,
            window: 4096,
            caps: Some((50.0, 30.0)),
            rope: base(rope_theta),
        }),
        // The full layers take the stage's rope_theta, the sliding ones Gemma 3's local 10,000.
        "gemma3" => Some(GemmaDefaults {
            model_type: "gemma3_text",
            period: 6,
            window: 512,
            caps: None,
            rope: json!({"full_attention": base(rope_theta), "sliding_attention": base(10_000.0)}),
        }),
        _ => None,
    }
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let tokenizer = ctx.path("tokenizer").ok_or("the stage has no tokenizer")?;
    let tok = TextTokenizer::load(&tokenizer)?;
    let params: InitParams = ctx.typed()?;
    let config = hf_config(&params, &tok);
    let cfg = ModelConfig::from_json(&config)?;
    let out = ctx.out.join("model");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("cannot write {}: {e}", out.display());
    crate::model::tuning::copy_hf_files(&tokenizer, &out)?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?,
    )
    .map_err(io)?;
    let mut model = Decoder::random(cfg, params.seed, ctx.device())?;
    (ctx.log)(&format!(
        "{} parameters, vocabulary {}",
        model.parameter_count(),
        model.cfg.vocab_size
    ));
    model.save_weights(&out, 2 << 30)
}
