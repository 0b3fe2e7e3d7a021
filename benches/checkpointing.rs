//! What `gradient_checkpointing = true` saves and costs, as users run it: `ptl run` of a full `pt`
//! stage on the shared bench model (Qwen3 architecture, 41.6 M parameters, batch 8 × 256, f32, CPU),
//! with and without it, each stage in its own process so that the process's peak resident memory
//! (timing.jsonl's `peak_rss_mib`) is the stage's. Activation memory is that peak less the peak of
//! the same stage on a batch of one 8-token row (weights, gradients, AdamW moments, the runtime).
//! Seconds per step over the steps after the first.
//!
//! Run with `cargo bench --bench checkpointing [-- --steps N]`.

mod common;

use common::tokenizer;
use std::path::Path;

fn stage(name: &str, batch: usize, len: usize, steps: usize, checkpointing: bool) -> String {
    format!(
        "stage {name} = pt {{\n  model = base.model\n  data = jsonl(\"rows.jsonl\", format = \"text\")\n  tuning = full\n  max_steps = {steps}\n  batch_size = {batch}\n  max_len = {len}\n  packing = false\n  lr = 1e-4\n  save_every = 0\n  save_minutes = 0\n  gradient_checkpointing = {checkpointing}\n}}\n"
    )
}

/// (seconds per step after the first, peak resident MiB) of a stage run alone in `dir`.
fn run_alone(dir: &Path, name: &str, stage: &str) -> (f64, f64) {
    let out = common::run_stage_alone(dir, name, stage);
    let timing = std::fs::read_to_string(out.join("../timing.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = timing
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let secs: Vec<f64> = lines
        .iter()
        .skip(1)
        .map(|l| 1.0 / l["tokens_per_s"].as_f64().unwrap())
        .collect();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let tokens = first["tokens"].as_f64().unwrap();
    let per_step = tokens * secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    let peak = lines
        .iter()
        .filter_map(|l| l["peak_rss_mib"].as_f64())
        .fold(0.0, f64::max);
    (per_step, peak)
}

fn main() {
    let steps = common::arg("--steps", 4);
    let dir = common::fresh_dir("bench-checkpointing");
    tokenizer(&dir.join("tokenizer"));
    common::text_rows(&dir.join("rows.jsonl"), 8 * (steps + 1), 256);
    let (_, base) = run_alone(&dir, "baseline", &stage("baseline", 1, 8, 2, false));
    let mut results = Vec::new();
    for on in [false, true] {
        let name = if on { "recomputed" } else { "kept" };
        let (secs, peak) = run_alone(&dir, name, &stage(name, 8, 257, steps + 1, on));
        results.push((secs, peak));
        println!(
            "{}",
            serde_json::json!({"gradient_checkpointing": on, "step_s": (secs * 100.0).round() / 100.0, "peak_rss_mib": peak, "activations_mib": peak - base})
        );
    }
    let ((t0, p0), (t1, p1)) = (results[0], results[1]);
    println!(
        "{}",
        serde_json::json!({"baseline_peak_rss_mib": base, "activation_memory_ratio": ((p0 - base) / (p1 - base) * 100.0).round() / 100.0, "extra_time": ((t1 / t0 - 1.0) * 1000.0).round() / 1000.0})
    );
}
