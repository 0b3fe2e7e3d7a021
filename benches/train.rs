//! Training throughput as users get it: `ptl run` of real `pt` stages (full, and LoRA r 16 all-linear)
//! on the shared bench model, tokens/s read from each stage's timing.jsonl, side by side with the
//! PyTorch reference (benches/reference/torch_train.py) in the same run.
//!
//! The model: Qwen3 architecture made by an `init` stage, vocab 32000 (a generated word-level
//! tokenizer), hidden 512, intermediate 1536, 8 layers, 8 heads, 4 KV heads, head_dim 64, tied
//! embeddings (41.6 M parameters); batch 8 × 256 tokens, f32, CPU, AdamW, clipping at 1.0 (the stage
//! defaults), every step logged. The first step is a warm-up and is not counted.
//!
//! It also times a `dpo` step against an `sft`-shaped step on the same tokens (LoRA, 4 pairs of 128
//! prompt + 128 completion tokens = 8 sequences of 256, reference log-probs computed before training),
//! the ratio the preference issue bounds at 2.2×.
//!
//! Then the quickstart's model (pipelines/quickstart.ptl: hidden 128, 3 layers, vocab 100 from the
//! quickstart's character tokenizer, 0.6 M parameters), full tuning on the same batch shape, where
//! per-op overhead rather than arithmetic sets the rate: `--small-steps N` timed steps (default 30).
//!
//! Run with `cargo bench --bench train [-- --steps N]`. The PyTorch side runs when
//! `PTL_BENCH_PYTHON` (default `python3`) has torch, transformers and peft.

mod common;

use common::{tokenizer, words, INIT_STAGE};
use std::path::Path;

const BATCH: usize = 8;
const SEQ: usize = 256;

/// Text rows of `SEQ` random words: with the EOS, each row is one sequence of `SEQ` positions.
fn rows(path: &Path, n: usize) {
    let mut seed = 1u64;
    let text: String = (0..n)
        .map(|_| format!("{}\n", serde_json::json!({"text": words(&mut seed, SEQ)})))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Preference rows of 128-word prompts and 127-word completions (the EOS makes 128 tokens).
fn pairs(path: &Path, n: usize) {
    let mut seed = 7u64;
    let text: String = (0..n)
        .map(|_| {
            let row = serde_json::json!({
                "prompt": words(&mut seed, SEQ / 2),
                "chosen": format!(" {}", words(&mut seed, SEQ / 2 - 1)),
                "rejected": format!(" {}", words(&mut seed, SEQ / 2 - 1)),
            });
            format!("{row}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn pipeline(steps: usize) -> String {
    let stage = |name: &str, tuning: &str| {
        format!(
            "stage {name} = pt {{\n  model = base.model\n  data = jsonl(\"rows.jsonl\", format = \"text\")\n  tuning = {tuning}\n  max_steps = {steps}\n  batch_size = {BATCH}\n  max_len = {}\n  packing = false\n  lr = 1e-4\n  log_every = 1\n  save_every = 0\n  save_minutes = 0\n}}\n",
            SEQ + 1
        )
    };
    let dpo = format!(
        "stage lora_dpo = dpo {{\n  model = base.model\n  data = jsonl(\"pairs.jsonl\", format = \"preference\")\n  tuning = lora(rank = 16, alpha = 32, targets = \"all-linear\")\n  max_steps = {steps}\n  batch_size = {}\n  max_len = {}\n  lr = 1e-5\n  log_every = 1\n  save_every = 0\n  save_minutes = 0\n}}\n",
        BATCH / 2,
        SEQ + 1
    );
    format!(
        "config {{\n  seed = 0\n}}\n\n{INIT_STAGE}\n{}\n{}\n{dpo}",
        stage("full_ft", "full"),
        stage(
            "lora_ft",
            "lora(rank = 16, alpha = 32, targets = \"all-linear\")"
        )
    )
}

/// Seconds per step over the timed steps (all but the first) of a finished stage.
fn step_seconds(dir: &Path, stage: &str) -> f64 {
    let entry = dir.join(".ptl/out/bench").join(stage).join("..");
    let timing = std::fs::read_to_string(entry.join("timing.jsonl")).unwrap();
    let metrics = std::fs::read_to_string(entry.join("out/metrics.jsonl")).unwrap();
    let secs: Vec<f64> = timing
        .lines()
        .zip(metrics.lines())
        .skip(1)
        .map(|(t, m)| {
            let t: serde_json::Value = serde_json::from_str(t).unwrap();
            let m: serde_json::Value = serde_json::from_str(m).unwrap();
            m["tokens"].as_f64().unwrap() / t["tokens_per_s"].as_f64().unwrap()
        })
        .collect();
    secs.iter().sum::<f64>() / secs.len() as f64
}

fn torch(mode: &str, model: &str, steps: usize) -> Option<serde_json::Value> {
    let steps = steps.to_string();
    common::python_json(
        "benches/reference/torch_train.py",
        &["--mode", mode, "--model", model, "--steps", &steps],
    )
}

/// The quickstart's model (its `init` stage's shape and character tokenizer) and a full `pt`
/// stage on rows of `SEQ` random characters (with the EOS, `SEQ` positions each).
fn small_pipeline(dir: &Path, steps: usize) {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tokenizers/tiny-chat");
    std::fs::create_dir_all(dir.join("tiny-chat")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(f), dir.join("tiny-chat").join(f)).unwrap();
    }
    let chars: Vec<char> = ('0'..='9').chain('a'..='z').collect();
    let mut seed = 3u64;
    let text: String = (0..BATCH * steps)
        .map(|_| {
            let row: String = (0..SEQ)
                .map(|_| chars[common::draw(&mut seed) as usize % chars.len()])
                .collect();
            format!("{}\n", serde_json::json!({ "text": row }))
        })
        .collect();
    std::fs::write(dir.join("chars.jsonl"), text).unwrap();
    std::fs::write(
        dir.join("small.ptl"),
        format!(
            "config {{\n  seed = 0\n}}\n\nstage base = init {{\n  tokenizer = \"tiny-chat\"\n  hidden_size = 128\n  heads = 4\n  kv_heads = 2\n  intermediate_size = 384\n  layers = 3\n}}\n\nstage small_ft = pt {{\n  model = base.model\n  data = jsonl(\"chars.jsonl\", format = \"text\")\n  max_steps = {steps}\n  batch_size = {BATCH}\n  max_len = {}\n  packing = false\n  lr = 1e-4\n  log_every = 1\n  save_every = 0\n  save_minutes = 0\n}}\n",
            SEQ + 1
        ),
    )
    .unwrap();
}

/// One line for ptl's rate and, when PyTorch runs, one for its rate and the ratio.
fn report(ptl_tps: f64, timed: usize, mode: &str, model: &str, torch_steps: usize) {
    println!(
        "{}",
        serde_json::json!({"engine": "ptl run", "model": model, "mode": mode, "timed_steps": timed, "tokens_per_s": (ptl_tps * 10.0).round() / 10.0})
    );
    match torch(mode, model, torch_steps) {
        Some(j) => {
            let t = j["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{}",
                serde_json::json!({"engine": "pytorch", "model": model, "mode": mode, "tokens_per_s": t, "params": j["params"], "trainable": j["trainable"], "peak_rss_mib": j["peak_rss_mib"], "ptl_over_pytorch": (ptl_tps / t * 100.0).round() / 100.0})
            );
        }
        None => println!(
            "(PyTorch reference not run: PTL_BENCH_PYTHON / python3 lacks torch, transformers or peft)"
        ),
    }
}

fn main() {
    let steps = common::arg("--steps", 5);
    let dir = common::fresh_dir("bench-train");
    tokenizer(&dir.join("tokenizer"));
    rows(&dir.join("rows.jsonl"), BATCH * (steps + 1));
    pairs(&dir.join("pairs.jsonl"), BATCH / 2 * (steps + 1));
    std::fs::write(dir.join("bench.ptl"), pipeline(steps + 1)).unwrap();
    common::run_bench_pipeline(&dir);
    let (sft, dpo) = (
        step_seconds(&dir, "lora_ft"),
        step_seconds(&dir, "lora_dpo"),
    );
    println!(
        "{}",
        serde_json::json!({"engine": "ptl run", "mode": "lora", "sft_step_s": (sft * 1000.0).round() / 1000.0, "dpo_step_s": (dpo * 1000.0).round() / 1000.0, "dpo_over_sft": (dpo / sft * 100.0).round() / 100.0})
    );
    for mode in ["full", "lora"] {
        let (ptl_tps, timed) = common::tokens_per_s(&dir, "bench", &format!("{mode}_ft"));
        report(ptl_tps, timed, mode, "bench", steps);
    }
    let small_steps = common::arg("--small-steps", 30);
    small_pipeline(&dir, small_steps + 1);
    common::run_pipeline(&dir, "small.ptl");
    let (ptl_tps, timed) = common::tokens_per_s(&dir, "small", "small_ft");
    report(ptl_tps, timed, "full", "quickstart", small_steps);
}
