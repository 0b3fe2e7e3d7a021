//! QLoRA: `qlora(...)` keeps every projection's frozen weight in NF4 with double quantization and
//! dequantizes it inside the matmul. A fresh QLoRA model gives the per-token log-probs of the same
//! checkpoint with bitsandbytes' NF4 weights (transformers' f32 model with each projection replaced by
//! bitsandbytes' quantize-then-dequantize; tests/fixtures/nf4, scripts/make_qlora_fixture.py); the
//! quantized weights take about 4.13 bits; a QLoRA stage trains, and its saved model is the
//! unquantized base with the adapter folded in; `ptl score --load-in-4bit` scores as the QLoRA
//! model does.

mod common;

use common::{text, Dir};
use ptl::lang::value::{Lora, Tuning};
use ptl::model::decoder::Decoder;
use serde_json::Value;
use std::path::Path;

/// Within this of the bitsandbytes-quantized model (absolute; measured 9.5e-7): the 4-bit codes,
/// the block scales' 8-bit codes (bitsandbytes' CPU lookup table) and the offset are bitsandbytes'
/// own, so what is left is the f32 rounding of the forward pass.
const TOLERANCE: f32 = 1e-5;

fn qlora(rank: i64) -> Tuning {
    Tuning::Qlora {
        lora: Lora {
            rank,
            alpha: 2.0 * rank as f64,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
            rslora: false,
        },
        double_quant: true,
    }
}

#[test]
fn a_fresh_qlora_model_gives_transformers_4_bit_log_probs() {
    let dir = Path::new("tests/fixtures/nf4/qwen3");
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/nf4/qlora_logprobs.json").unwrap(),
    )
    .unwrap();
    let mut model = Decoder::load(dir, &candle_core::Device::Cpu).unwrap();
    let full = Decoder::load(dir, &candle_core::Device::Cpu).unwrap();
    let vars = model.apply_tuning(&qlora(4), 0).unwrap();
    assert!(
        vars.iter().all(|(n, _)| n.contains("lora_")),
        "only adapters train"
    );
    let (mut worst, mut moved) = (0f32, 0f32);
    for row in want["rows"].as_array().unwrap() {
        let ids = common::token_ids(&row["ids"]);
        let got = model.token_logprobs(&ids).unwrap();
        let f32_model = full.token_logprobs(&ids).unwrap();
        for ((g, w), f) in got
            .iter()
            .zip(row["token_logprobs"].as_array().unwrap())
            .zip(&f32_model)
        {
            worst = worst.max((g - w.as_f64().unwrap() as f32).abs());
            moved = moved.max((g - f).abs());
        }
    }
    eprintln!("QLoRA vs transformers 4-bit: {worst:.2e}; vs the f32 model: {moved:.2e}");
    assert!(worst <= TOLERANCE, "{worst}");
    assert!(
        moved > 100.0 * TOLERANCE,
        "quantization changed nothing: {moved}"
    );
    // Every projection is NF4: about 4.13 bits a weight, no f32 copy kept.
    let (mut bytes, mut weights) = (0usize, 0usize);
    for (_, _, lin) in model.linears_mut() {
        let q = lin.nf4.as_ref().expect("every projection is quantized");
        bytes += q.bytes();
        weights += q.shape.0 * q.shape.1;
        assert_eq!(lin.weight.elem_count(), 0);
    }
    let bits = 8.0 * bytes as f64 / weights as f64;
    eprintln!("{bits:.3} bits a quantized weight");
    assert!(bits < 4.2, "{bits}");
}

#[test]
fn a_qlora_stage_trains_and_saves_the_adapter_folded_into_the_unquantized_base() {
    let tmp = std::env::temp_dir().join(format!("ptl-qlora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("base")).unwrap();
    for f in std::fs::read_dir("tests/fixtures/nf4/qwen3").unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.join("base").join(f.file_name().unwrap())).unwrap();
    }
    common::quickstart_chat(&tmp, 32);
    std::fs::write(
        tmp.join("p.ptl"),
        "stage q = sft {\n  model = hf_model(\"base\")\n  data = jsonl(\"chat.jsonl\", format = \"messages\")\n  tuning = qlora(rank = 4)\n  lr = 1e-2\n  batch_size = 8\n  max_steps = 6\n}\n",
    )
    .unwrap();
    let d = Dir(tmp);
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = common::ptl(&d.0, &["path", "p.ptl", "q"]);
    let out = d.0.join(String::from_utf8_lossy(&o.stdout).trim());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(losses[losses.len() - 1] < losses[0], "{losses:?}");
    // The saved model is the f32 base with the adapter folded in (PEFT's merge into the unquantized base).
    let mut want = Decoder::load(&d.0.join("base"), &candle_core::Device::Cpu).unwrap();
    want.load_adapter(&out.join("adapter")).unwrap();
    let got = Decoder::load(&out.join("model"), &candle_core::Device::Cpu).unwrap();
    let ids: Vec<u32> = (1..30).map(|i| (i * 11 % 97) as u32).collect();
    let (a, b) = (
        got.token_logprobs(&ids).unwrap(),
        want.token_logprobs(&ids).unwrap(),
    );
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");
}

/// `ptl score --load-in-4bit` holds the projections in NF4 as a QLoRA stage does: the 4-bit model's
/// log-probs of the fixture, not the f32 model's.
#[test]
fn score_load_in_4bit_gives_the_4_bit_log_probs() {
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/nf4/qlora_logprobs.json").unwrap(),
    )
    .unwrap();
    let d = Dir(std::env::temp_dir().join(format!("ptl-score-4bit-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let rows = want["rows"].as_array().unwrap();
    let input: String = rows
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({"ids": r["ids"]})))
        .collect();
    std::fs::write(d.0.join("ids.jsonl"), input).unwrap();
    let model = std::env::current_dir()
        .unwrap()
        .join("tests/fixtures/nf4/qwen3");
    let model = model.to_str().unwrap();
    let o = common::ptl(
        &d.0,
        &["score", model, "--load-in-4bit", "--input", "ids.jsonl"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), rows.len());
    for (g, w) in got.iter().zip(rows) {
        for (a, b) in common::f32s(&g["token_logprobs"])
            .iter()
            .zip(common::f32s(&w["token_logprobs"]))
        {
            assert!((a - b).abs() <= TOLERANCE, "{a} vs {b}");
        }
    }
}
