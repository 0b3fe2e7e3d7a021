//! Training throughput (forward + backward + AdamW step, tokens/s) on the shared benchmark config:
//! Qwen3 architecture, vocab 32000, hidden 512, intermediate 1536, 8 layers, 8 heads, 4 KV heads,
//! head_dim 64, tied embeddings (41.6 M parameters), batch 8 × 256, f32 on CPU. Full fine-tuning
//! and LoRA (r 16, all-linear). The PyTorch reference is benches/reference/torch_train.py.
//! Run with `cargo bench --bench train [-- --steps N]`.

use candle_core::{Device, Tensor};
use ptl::lang::value::{Lora, Tuning};
use ptl::model::config::ModelConfig;
use ptl::model::decoder::Decoder;
use ptl::train::loss::chunked_nll;
use ptl::train::optim::AdamW;
use std::time::Instant;

fn config() -> ModelConfig {
    ModelConfig::from_json(&serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"],
        "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "tie_word_embeddings": true,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 4096
    }))
    .unwrap()
}

fn main() {
    ptl::keep_freed_memory();
    let steps: usize = std::env::args()
        .skip_while(|a| a != "--steps")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (batch, seq) = (8usize, 256usize);
    for mode in ["full", "lora"] {
        let device = Device::Cpu;
        let mut d = Decoder::random(config(), 0, &device).unwrap();
        let params = d.parameter_count();
        let tuning = if mode == "full" {
            Tuning::Full
        } else {
            Tuning::Lora(Lora {
                rank: 16,
                alpha: 32.0,
                dropout: 0.0,
                targets: vec!["all-linear".into()],
                rslora: false,
            })
        };
        let vars = d.apply_tuning(&tuning, 0).unwrap();
        let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        let mut opt = AdamW::new(&vars, 0.9, 0.999, 1e-8, 0.0).unwrap();
        let mut seed = 1u64;
        let mut ids = || {
            (0..batch * (seq + 1))
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) % 32000) as u32
                })
                .collect::<Vec<u32>>()
        };
        let mut step = |tokens: &[u32]| {
            let rows: Vec<u32> = tokens
                .chunks(seq + 1)
                .flat_map(|r| r[..seq].to_vec())
                .collect();
            let targets: Vec<u32> = tokens
                .chunks(seq + 1)
                .flat_map(|r| r[1..].to_vec())
                .collect();
            let input = Tensor::from_vec(rows, (batch, seq), &device).unwrap();
            let hidden = d
                .hidden(&input)
                .unwrap()
                .reshape((batch * seq, 512))
                .unwrap();
            let loss =
                chunked_nll(&hidden, d.head(), &targets, &vec![1.0; batch * seq], 512).unwrap();
            opt.step(&loss.surrogate.backward().unwrap(), 1e-4).unwrap();
        };
        for _ in 0..1 {
            step(&ids());
        }
        let start = Instant::now();
        for _ in 0..steps {
            step(&ids());
        }
        let secs = start.elapsed().as_secs_f64() / steps as f64;
        let ptl_tps = (batch * seq) as f64 / secs;
        println!(
            "{}",
            serde_json::json!({"engine": "ptl", "mode": mode, "params": params, "trainable": trainable, "step_s": secs, "tokens_per_s": ptl_tps})
        );
        // The PyTorch reference, side by side, when torch is installed (it is not needed otherwise).
        let reference = std::process::Command::new("python3")
            .args([
                "benches/reference/torch_train.py",
                "--mode",
                mode,
                "--steps",
                &steps.to_string(),
            ])
            .output();
        match reference {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                if let Some(j) = text.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                    let torch = j["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                    println!("{}", serde_json::json!({"engine": "pytorch", "mode": mode, "tokens_per_s": torch, "ptl_over_pytorch": ptl_tps / torch}));
                }
            }
            _ => println!("(PyTorch reference not run: python3 with torch, transformers and peft is not installed)"),
        }
    }
}
