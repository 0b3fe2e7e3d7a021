//! Data-parallel scaling on the CPU as users get it: `ptl run` of `pt` stages on the shared bench
//! model (see benches/train.rs), each step 8 sequences of 256 tokens, once as one process using
//! every core (`workers = 1`, batch 8) and once as one worker per core (`workers = N`, batch 8 / N
//! each, one thread each). The same global batch, so the same training; tokens/s read from each
//! stage's timing.jsonl, the first step not counted.
//!
//! Run with `cargo bench --bench workers [-- --steps N]`.

mod common;

use common::{tokenizer, INIT_STAGE};

const BATCH: usize = 8;
const SEQ: usize = 256;

fn stage(name: &str, tuning: &str, workers: usize, steps: usize) -> String {
    format!(
        "stage {name} = pt {{\n  model = base.model\n  data = jsonl(\"rows.jsonl\", format = \"text\")\n  tuning = {tuning}\n  max_steps = {steps}\n  batch_size = {}\n  workers = {workers}\n  max_len = {}\n  packing = false\n  lr = 1e-4\n  log_every = 1\n  save_every = 0\n  save_minutes = 0\n}}\n",
        BATCH / workers,
        SEQ + 1
    )
}

fn main() {
    let steps = common::arg("--steps", 5);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // One worker per core, as many as divide the batch.
    let workers = [8, 4, 2].into_iter().find(|w| *w <= cores).unwrap_or(2);
    let dir = common::fresh_dir("bench-workers");
    tokenizer(&dir.join("tokenizer"));
    // Rows of SEQ words: with the EOS and `max_len` SEQ + 1, SEQ trained positions each.
    common::text_rows(&dir.join("rows.jsonl"), BATCH * (steps + 1), SEQ);
    let modes = [
        ("full", "full"),
        (
            "lora",
            "lora(rank = 16, alpha = 32, targets = \"all-linear\")",
        ),
    ];
    let mut stages = String::new();
    for (mode, tuning) in modes {
        for n in [1, workers] {
            stages.push_str(&stage(&format!("{mode}_{n}"), tuning, n, steps + 1));
        }
    }
    std::fs::write(
        dir.join("bench.ptl"),
        format!("config {{\n  seed = 0\n}}\n\n{INIT_STAGE}\n{stages}"),
    )
    .unwrap();
    common::run_bench_pipeline(&dir);
    for (mode, _) in modes {
        let (one, timed) = common::tokens_per_s(&dir, "bench", &format!("{mode}_1"));
        let (many, _) = common::tokens_per_s(&dir, "bench", &format!("{mode}_{workers}"));
        println!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "timed_steps": timed,
                "one_process_tokens_per_s": (one * 10.0).round() / 10.0,
                "workers": workers,
                "workers_tokens_per_s": (many * 10.0).round() / 10.0,
                "workers_over_one_process": (many / one * 100.0).round() / 100.0,
            })
        );
    }
}
