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

/// `rows` text rows (`{"text": ...}`) of `n` random words each (seed 7).
// Used by the benches that train on plain text, not by every bench that includes this module.
#[allow(dead_code)]
pub fn text_rows(path: &Path, rows: usize, n: usize) {
    let mut seed = 7u64;
    let text: String = (0..rows)
        .map(|_| format!("{}\n", serde_json::json!({"text": words(&mut seed, n)})))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Writes `{name}.ptl` in `dir` (seed 0, the bench model's `init` stage, then `stage`), runs it,
/// and returns the output folder of its stage `name` (whose entry, `..`, holds timing.jsonl).
// Used by the benches that run one stage per process, not by every bench that includes this module.
#[allow(dead_code)]
pub fn run_stage_alone(dir: &Path, name: &str, stage: &str) -> std::path::PathBuf {
    let file = format!("{name}.ptl");
    std::fs::write(
        dir.join(&file),
        format!("config {{\n  seed = 0\n}}\n\n{INIT_STAGE}\n{stage}"),
    )
    .unwrap();
    run_pipeline(dir, &file);
    // `.ptl/out/<pipeline>/<stage>` is the stage's output folder.
    dir.join(".ptl/out").join(name).join(name)
}

/// The last JSON line a Python reference script printed (`PTL_BENCH_PYTHON`, default `python3`),
/// or `None` when it cannot run (no torch): the failure's last line goes to stderr.
// Used by the benches with a PyTorch side, not by every bench that includes this module.
#[allow(dead_code)]
pub fn python_json(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let python = std::env::var("PTL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let o = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("{script} failed: {}", err.lines().last().unwrap_or(""));
        return None;
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Trained tokens per second over the timed steps (all but the first) of a finished stage of the
/// pipeline `pipeline`.ptl, and how many steps were timed.
// Used by the training benches, not by every bench that includes this module.
#[allow(dead_code)]
pub fn tokens_per_s(dir: &Path, pipeline: &str, stage: &str) -> (f64, usize) {
    let entry = dir.join(".ptl/out").join(pipeline).join(stage).join("..");
    let timing = std::fs::read_to_string(entry.join("timing.jsonl")).unwrap();
    let rates: Vec<f64> = timing
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens_per_s"]
                .as_f64()
                .unwrap()
        })
        .collect();
    // Every step trains the same number of tokens: the overall rate is the harmonic mean.
    let secs: f64 = rates.iter().map(|r| 1.0 / r).sum();
    (rates.len() as f64 / secs, rates.len())
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

/// The next draw of the benches' random text: a 64-bit linear congruential step, its high 31 bits.
pub fn draw(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Random words.
pub fn words(seed: &mut u64, n: usize) -> String {
    (0..n)
        .map(|_| format!("w{}", draw(seed) % (VOCAB as u64 - 1)))
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
