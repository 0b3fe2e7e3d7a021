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
    let dir = std::env::temp_dir().join(format!("ptl-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tok = dir.join("tokenizers/tiny-chat");
    std::fs::create_dir_all(&tok).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            Path::new("pipelines/tokenizers/tiny-chat").join(f),
            tok.join(f),
        )
        .unwrap();
    }
    std::fs::write(dir.join("p.ptl"), pipeline).unwrap();
    Dir(dir)
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
