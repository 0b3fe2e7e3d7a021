//! bf16 mixed precision on the CPU as users run it: `ptl run` of a `pt` stage on the shared bench
//! model (Qwen3 architecture, 41.6 M parameters, batch 8 × 256, AdamW, clipping at 1.0) with
//! `dtype = "f32"` and `dtype = "bf16"` (bf16 compute, f32 weights and optimizer state), full and
//! LoRA r 16 all-linear, each stage in its own process; side by side in the same run with PyTorch
//! f32 and PyTorch under `torch.autocast("cpu", dtype=torch.bfloat16)`
//! (benches/reference/torch_train.py --dtype). Reports tokens/s over the steps after the first, the
//! process's peak RSS, and how far the bf16 loss curve lies from the f32 one (ptl's and PyTorch's,
//! each against its own f32 run on the same batches), and what share of the f32 matmul peak each
//! step's matmul FLOPs reach (`matmul_flops_per_token`; the peak is the best f32 rate measured below).
//!
//! First, matmul throughput on the model's training shapes: candle's f32 matmul, bf16 through
//! candle's widening path and through ptl's AVX512-BF16 kernel, next to PyTorch's f32 and bf16
//! matmuls (benches/reference/torch_matmul.py).
//!
//! Run with `cargo bench --bench bf16 [-- --steps N | --matmuls-only]`; the PyTorch side runs when
//! `PTL_BENCH_PYTHON` (default `python3`) has torch, transformers and peft.

mod common;

use candle_core::{DType, Device, Tensor};
use common::tokenizer;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// (m, k, n): a projection's forward, its input gradient, and the tied LM head, at 8 × 256 rows.
const SHAPES: [(usize, usize, usize); 3] =
    [(2048, 512, 1536), (2048, 1536, 512), (2048, 512, 32000)];

/// GFLOP/s of `f` (one m × k × n product) over about a second, after two warm-up calls.
fn gflops(m: usize, k: usize, n: usize, f: impl Fn() -> Tensor) -> f64 {
    for _ in 0..2 {
        f();
    }
    let (start, mut reps) = (Instant::now(), 0);
    while start.elapsed().as_secs_f64() < 1.0 {
        f();
        reps += 1;
    }
    2.0 * (m * k * n * reps) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// What the matmul section measured.
struct Matmuls {
    /// The f32 matmul peak: the highest f32 rate of candle's or PyTorch's matmul over the
    /// training shapes.
    peak: f64,
    /// PyTorch's best bf16 rate over its best f32 rate on those shapes (None without PyTorch).
    torch_bf16_over_f32: Option<f64>,
}

fn matmuls() -> Matmuls {
    let dev = Device::Cpu;
    let mut peak = 0f64;
    let (mut torch_f32, mut torch_bf16) = (0f64, 0f64);
    for (m, k, n) in SHAPES {
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        let (ah, bh) = (
            a.to_dtype(DType::BF16).unwrap(),
            b.to_dtype(DType::BF16).unwrap(),
        );
        let mut row = serde_json::json!({"engine": "ptl", "m": m, "k": k, "n": n});
        let f32_rate = gflops(m, k, n, || a.matmul(&b).unwrap());
        peak = peak.max(f32_rate);
        row["f32_candle"] = round(f32_rate, 1).into();
        row["bf16_candle_widening"] = round(gflops(m, k, n, || ah.matmul(&bh).unwrap()), 1).into();
        if ptl::model::gemm_bf16::available() {
            let f = || ptl::model::matmul::kernel_matmul(&ah, &bh).unwrap();
            row["bf16_kernel"] = round(gflops(m, k, n, f), 1).into();
            let path = if ptl::model::gemm_amx::available() {
                "amx"
            } else {
                "avx512_bf16"
            };
            row["bf16_kernel_path"] = path.into();
        }
        println!("{row}");
    }
    let python = std::env::var("PTL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(python)
        .arg("benches/reference/torch_matmul.py")
        .output()
    {
        Ok(o) if o.status.success() => {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                println!("{line}");
                let row: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let rate = row["gflops"].as_f64().unwrap_or(0.0);
                if row["dtype"] == "f32" {
                    peak = peak.max(rate);
                    torch_f32 = torch_f32.max(rate);
                } else if row["dtype"] == "bf16" {
                    torch_bf16 = torch_bf16.max(rate);
                }
            }
        }
        _ => println!("(PyTorch matmul reference not run: PTL_BENCH_PYTHON / python3 lacks torch)"),
    }
    println!(
        "{}",
        serde_json::json!({"f32_matmul_peak_gflops": round(peak, 1)})
    );
    Matmuls {
        peak,
        torch_bf16_over_f32: (torch_f32 > 0.0).then(|| torch_bf16 / torch_f32),
    }
}

/// Matmul FLOPs per trained token of one step on the bench model (rows of 256 positions): every
/// projection and the tied LM head 2 per weight forward and 2 for the input's gradient, 2 more for
/// the weight's gradient when it trains; attention's two products (QKᵀ and PV over all 256 keys,
/// as both engines multiply them) forward and both operands' gradients; a LoRA adapter 6 per
/// trainable weight. Element-wise work (norms, softmax, activations, AdamW) is not counted: the
/// share of the peak this gives is the share of the step's time spent at the matmul peak.
fn matmul_flops_per_token(mode: &str) -> f64 {
    let (hidden, inter, layers, heads, kv_heads, head_dim) = (512.0, 1536.0, 8.0, 8.0, 4.0, 64.0);
    let (vocab, positions, rank) = (common::VOCAB as f64, 256.0, 16.0);
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let projections = [
        (hidden, q),
        (hidden, kv),
        (hidden, kv),
        (q, hidden),
        (hidden, inter),
        (hidden, inter),
        (inter, hidden),
    ];
    let weights = layers * projections.iter().map(|(i, o)| i * o).sum::<f64>() + hidden * vocab;
    let attention = layers * 3.0 * 2.0 * 2.0 * positions * q;
    let adapters = layers * projections.iter().map(|(i, o)| rank * (i + o)).sum::<f64>();
    match mode {
        "full" => 6.0 * weights + attention,
        _ => 4.0 * weights + attention + 6.0 * adapters,
    }
}

fn stage(name: &str, tuning: &str, dtype: &str, steps: usize) -> String {
    format!(
        "stage {name} = pt {{\n  model = base.model\n  data = jsonl(\"rows.jsonl\", format = \"text\")\n  tuning = {tuning}\n  max_steps = {steps}\n  batch_size = 8\n  max_len = 257\n  packing = false\n  lr = 1e-4\n  log_every = 1\n  save_every = 0\n  save_minutes = 0\n  dtype = \"{dtype}\"\n}}\n"
    )
}

/// What one stage run alone measured.
struct Measured {
    tokens_per_s: f64,
    peak_rss_mib: f64,
    losses: Vec<f64>,
}

fn run_alone(dir: &Path, name: &str, stage: &str) -> Measured {
    let out = common::run_stage_alone(dir, name, stage);
    let lines = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let timing = lines("../timing.jsonl");
    // Every step trains the same tokens: the rate over the timed steps is the harmonic mean.
    let secs: f64 = timing
        .iter()
        .skip(1)
        .map(|l| 1.0 / l["tokens_per_s"].as_f64().unwrap())
        .sum();
    Measured {
        tokens_per_s: (timing.len() - 1) as f64 / secs,
        peak_rss_mib: timing
            .iter()
            .filter_map(|l| l["peak_rss_mib"].as_f64())
            .fold(0.0, f64::max),
        losses: lines("metrics.jsonl")
            .iter()
            .filter_map(|m| m["loss"].as_f64())
            .collect(),
    }
}

fn torch(mode: &str, dtype: &str, steps: usize) -> Option<serde_json::Value> {
    let steps = steps.to_string();
    common::python_json(
        "benches/reference/torch_train.py",
        &["--mode", mode, "--dtype", dtype, "--steps", &steps],
    )
}

/// The largest gap between two loss curves over their common steps.
fn gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn round(x: f64, digits: i32) -> f64 {
    let s = 10f64.powi(digits);
    (x * s).round() / s
}

fn main() {
    let steps = common::arg("--steps", 4);
    // Threads as the training stages use them (ptl pins rayon's count to candle's at startup).
    std::env::set_var(
        "RAYON_NUM_THREADS",
        candle_core::utils::get_num_threads().to_string(),
    );
    let measured = matmuls();
    let peak = measured.peak;
    // Without native bf16 (no AVX512-BF16 or AMX) PyTorch's bf16 matmul runs at about 1% of its
    // f32 one: a training run under autocast would take hours, so it is left out and said so.
    // Without PyTorch there is no rate to go by, and its runs report themselves as not run.
    let torch_bf16_runs = !measured.torch_bf16_over_f32.is_some_and(|r| r < 0.1);
    if std::env::args().any(|a| a == "--matmuls-only") {
        return;
    }
    let dir = common::fresh_dir("bench-bf16");
    tokenizer(&dir.join("tokenizer"));
    common::text_rows(&dir.join("rows.jsonl"), 8 * (steps + 1), 256);
    for (mode, tuning) in [
        ("full", "full"),
        (
            "lora",
            "lora(rank = 16, alpha = 32, targets = \"all-linear\")",
        ),
    ] {
        let mut ptl = Vec::new();
        let mut reference = Vec::new();
        for dtype in ["f32", "bf16"] {
            let name = format!("{mode}_{dtype}");
            let m = run_alone(&dir, &name, &stage(&name, tuning, dtype, steps + 1));
            let t = if dtype == "bf16" && !torch_bf16_runs {
                println!(
                    "{}",
                    serde_json::json!({"mode": mode, "pytorch_bf16_not_run": "PyTorch's bf16 matmul is under a tenth of its f32 matmul on this CPU", "pytorch_bf16_over_f32_matmul": measured.torch_bf16_over_f32.map(|r| round(r, 3))})
                );
                None
            } else {
                torch(mode, dtype, steps)
            };
            let t_rate = t.as_ref().and_then(|t| t["tokens_per_s"].as_f64());
            let share = |rate: f64| round(rate * matmul_flops_per_token(mode) / 1e9 / peak, 2);
            println!(
                "{}",
                serde_json::json!({"mode": mode, "dtype": dtype, "ptl_tokens_per_s": round(m.tokens_per_s, 1), "ptl_peak_rss_mib": m.peak_rss_mib, "pytorch_tokens_per_s": t_rate, "pytorch_peak_rss_mib": t.as_ref().map(|t| t["peak_rss_mib"].clone()), "ptl_over_pytorch": t_rate.map(|r| round(m.tokens_per_s / r, 2)), "ptl_share_of_f32_matmul_peak": share(m.tokens_per_s), "pytorch_share_of_f32_matmul_peak": t_rate.map(share)})
            );
            ptl.push(m);
            reference.push(t);
        }
        let torch_gap = match (&reference[0], &reference[1]) {
            (Some(a), Some(b)) => {
                let curve = |j: &serde_json::Value| -> Vec<f64> {
                    j["losses"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|v| v.as_f64())
                        .collect()
                };
                Some(round(gap(&curve(a), &curve(b)), 5))
            }
            _ => None,
        };
        println!(
            "{}",
            serde_json::json!({"mode": mode, "ptl_bf16_speedup": round(ptl[1].tokens_per_s / ptl[0].tokens_per_s, 2), "ptl_loss_gap_bf16_vs_f32": round(gap(&ptl[0].losses, &ptl[1].losses), 5), "pytorch_loss_gap_bf16_vs_f32": torch_gap, "ptl_losses_f32": ptl[0].losses, "ptl_losses_bf16": ptl[1].losses})
        );
    }
}
