//! What the benches share: the bench model's word-level tokenizer and random text in its words.

use std::path::Path;

/// The value of `--name N` on the bench's command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// An empty folder `name` under cargo's temporary target folder.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ptl run bench.ptl` in `dir` (its own store); panics with the output when it fails.
// Used by the benches of one pipeline, not by every bench that includes this module.
#[allow(dead_code)]
pub fn run_bench_pipeline(dir: &Path) {
    run_pipeline(dir, "bench.ptl");
}

/// `ptl run FILE` in `dir` (its own store); panics with the output when it fails.
pub fn run_pipeline(dir: &Path, file: &str) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", file])
        .current_dir(dir)
        .env_remove("PTL_STORE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The bench model's vocabulary size.
pub const VOCAB: usize = 32_000;

/// A word-level tokenizer of `VOCAB` tokens (`w0` … `w31998`, then `</s>` as EOS).
pub fn tokenizer(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = serde_json::Map::new();
    for i in 0..VOCAB - 1 {
        vocab.insert(format!("w{i}"), serde_json::json!(i));
    }
    vocab.insert("</s>".into(), serde_json::json!(VOCAB - 1));
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"eos_token": "</s>"}).to_string(),
    )
    .unwrap();
}

/// Random words.
pub fn words(seed: &mut u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            format!("w{}", (*seed >> 33) % (VOCAB as u64 - 1))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `init` stage of the bench model: Qwen3 architecture, hidden 512, intermediate 1536, 8 layers,
/// 8 heads, 4 KV heads, head_dim 64, tied embeddings (41.6 M parameters), the tokenizer in `tokenizer/`.
pub const INIT_STAGE: &str = "stage base = init {\n  tokenizer = \"tokenizer\"\n  hidden_size = 512\n  layers = 8\n  heads = 8\n  kv_heads = 4\n  intermediate_size = 1536\n  rope_theta = 1000000.0\n  max_position_embeddings = 4096\n}\n";

/// Wall seconds of `ptl generate --input prompts.jsonl` (in `dir`) and the tokens it generated.
// Used by the generate and serve benches, not by every bench that includes this module.
#[allow(dead_code)]
pub fn ptl_generate(dir: &Path, model: &Path, batch: usize, new: usize) -> (f64, usize) {
    let start = std::time::Instant::now();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args([
            "generate",
            model.to_str().unwrap(),
            "--input",
            "prompts.jsonl",
        ])
        .args(["--batch-size", &batch.to_string()])
        .args(["--max-new-tokens", &new.to_string(), "--format", "json"])
        .current_dir(dir)
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tokens = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ids"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    (secs, tokens)
}
