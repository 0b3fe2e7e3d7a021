//! Generation throughput as users get it: `ptl generate --input` of 16 prompts on the shared bench
//! model (benches/common), in one batch (`--batch-size 16`) and one prompt at a time (`--batch-size
//! 1`), side by side with transformers' `generate` on the same model folder and the same batch
//! (benches/reference/torch_generate.py), greedy, f32, CPU.
//!
//! Rates are decode rates: each side runs `max_new` and 1 new tokens, and the difference in wall time
//! is divided by the difference in generated tokens, so loading the model and reading the prompts
//! cancel out. Run with `cargo bench --bench generate [-- --new N]`. The PyTorch side runs when
//! `PTL_BENCH_PYTHON` (default `python3`) has torch and transformers.

mod common;

use common::{ptl_generate, tokenizer, words, INIT_STAGE};
use std::process::Command;

const PROMPTS: usize = 16;
const PROMPT_WORDS: usize = 32;

fn main() {
    let new = common::arg("--new", 64);
    let dir = common::fresh_dir("bench-generate");
    tokenizer(&dir.join("tokenizer"));
    std::fs::write(
        dir.join("bench.ptl"),
        format!("config {{\n  seed = 0\n}}\n\n{INIT_STAGE}"),
    )
    .unwrap();
    let mut seed = 11u64;
    let prompts: String = (0..PROMPTS)
        .map(|i| {
            // Prompts of different lengths, so the batch pads.
            let n = PROMPT_WORDS - (i % 4) * 4;
            format!("{}\n", serde_json::json!({"prompt": words(&mut seed, n)}))
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    common::run_bench_pipeline(&dir);
    let model = dir.join(".ptl/out/bench/base/model");
    let rate = |batch: usize| {
        let (long, n_long) = ptl_generate(&dir, &model, batch, new);
        let (short, n_short) = ptl_generate(&dir, &model, batch, 1);
        (n_long - n_short) as f64 / (long - short)
    };
    let (batched, alone) = (rate(PROMPTS), rate(1));
    println!(
        "{}",
        serde_json::json!({"engine": "ptl generate", "batch": PROMPTS, "new_tokens": new, "tokens_per_s": (batched * 10.0).round() / 10.0})
    );
    println!(
        "{}",
        serde_json::json!({"engine": "ptl generate", "batch": 1, "new_tokens": new, "tokens_per_s": (alone * 10.0).round() / 10.0, "batched_over_one_at_a_time": (batched / alone * 100.0).round() / 100.0})
    );
    let python = std::env::var("PTL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let o = Command::new(python)
        .args([
            "benches/reference/torch_generate.py",
            model.to_str().unwrap(),
        ])
        .args([
            dir.join("prompts.jsonl").to_str().unwrap(),
            "--new",
            &new.to_string(),
        ])
        .output();
    match o.ok().filter(|o| o.status.success()) {
        Some(o) => {
            let j: serde_json::Value = String::from_utf8_lossy(&o.stdout)
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .unwrap();
            let t = j["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{}",
                serde_json::json!({"engine": "transformers generate", "batch": PROMPTS, "new_tokens": new, "tokens_per_s": t, "ptl_over_transformers": (batched / t * 100.0).round() / 100.0})
            );
        }
        None => println!("(transformers reference not run: PTL_BENCH_PYTHON / python3 lacks torch or transformers)"),
    }
}
