//! On a CUDA GPU (a build with `--features cuda` on a machine that has one): the model fixtures'
//! per-token log-probs in f32 equal the CPU's within 1e-4, greedy generation gives the CPU's ids,
//! and a LoRA SFT stage in bf16 follows the CPU's f32 loss curve. Elsewhere each test prints why it
//! did not run and passes: these are the checks to run whenever a GPU is lent.

mod common;

use candle_core::Device;
use ptl::model::decoder::Decoder;
use ptl::model::generation::{Generation, Sampling};
use ptl::plan::compute::Compute;
use std::path::Path;

const MODELS: &[&str] = &["llama", "mistral_sw", "qwen2", "qwen3", "gemma2", "gemma3"];

/// The GPU, or why there is none (printed by the caller).
fn gpu() -> Result<Device, String> {
    Compute::resolve("cuda", "f32").map(|c| c.device)
}

fn sequences(name: &str) -> Vec<Vec<u32>> {
    let e: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new("tests/fixtures/models")
                .join(name)
                .join("expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    e["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

#[test]
fn cuda_log_probs_and_greedy_ids_equal_the_cpus() {
    let gpu = match gpu() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("not run: {why}");
            return;
        }
    };
    let g = Generation {
        max_new: 8,
        stop: vec![],
        sampling: Sampling::Greedy,
    };
    for name in MODELS {
        let dir = Path::new("tests/fixtures/models").join(name);
        let cpu = Decoder::load(&dir, &Device::Cpu).unwrap();
        let cuda = Decoder::load(&dir, &gpu).unwrap();
        let seqs = sequences(name);
        let mut worst = 0f32;
        for s in &seqs {
            let (a, b) = (
                cpu.token_logprobs(s).unwrap(),
                cuda.token_logprobs(s).unwrap(),
            );
            worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(worst, f32::max);
        }
        eprintln!("{name}: CUDA f32 log-probs within {worst:.1e} of the CPU's");
        assert!(worst < 1e-4, "{name}: {worst}");
        let seeds = vec![0; seqs.len()];
        assert_eq!(
            cpu.generate(&seqs, &seeds, &g).unwrap(),
            cuda.generate(&seqs, &seeds, &g).unwrap(),
            "{name}: greedy ids"
        );
    }
}

#[test]
fn a_lora_stage_in_bf16_on_cuda_follows_the_cpu_f32_loss_curve() {
    if let Err(why) = gpu() {
        eprintln!("not run: {why}");
        return;
    }
    let losses = |device: &str, dtype: &str| -> Vec<f64> {
        let dir = common::pipeline_copy(
            &format!("cuda-{device}"),
            &["tokenizers/tiny-chat", "data/quickstart"],
        );
        let d = dir.0.clone();
        std::fs::write(
            d.join("p.ptl"),
            format!("config {{\n  device = \"{device}\"\n  dtype = \"{dtype}\"\n}}\n\nstage base = init {{\n  tokenizer = \"tokenizers/tiny-chat\"\n}}\n\nstage tuned = sft {{\n  model = base.model\n  data = jsonl(\"data/quickstart/train.jsonl\", format = \"messages\")\n  tuning = lora(rank = 8)\n  max_steps = 20\n  lr = 5e-3\n  batch_size = 16\n  max_len = 64\n}}\n"),
        )
        .unwrap();
        let o = common::ptl(&d, &["run", "p.ptl"]);
        assert!(o.status.success(), "{}", common::text(&o));
        let out = String::from_utf8_lossy(&common::ptl(&d, &["path", "p.ptl", "tuned"]).stdout)
            .trim()
            .to_string();
        std::fs::read_to_string(d.join(out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (gpu_bf16, cpu_f32) = (losses("cuda", "bf16"), losses("cpu", "f32"));
    let worst = gpu_bf16
        .iter()
        .zip(&cpu_f32)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0f64, f64::max);
    eprintln!("CUDA bf16 vs CPU f32 loss, worst relative difference over 20 steps: {worst:.2e}");
    assert!(worst < 2e-2, "cuda bf16 {gpu_bf16:?}\ncpu f32 {cpu_f32:?}");
}
