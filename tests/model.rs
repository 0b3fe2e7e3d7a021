//! The decoder against transformers: per-token log-probs (1e-4), last-position logits and greedy ids
//! on tiny random checkpoints of each family that scripts/make_model_fixtures.py made with
//! transformers (sharded and bf16 weights, llama3 rope scaling, a sliding window shorter than the
//! text, qkv bias, tied embeddings, q/k norm); and a gradient for every weight.

use candle_core::Device;
use ptl::model::decoder::Decoder;
use serde_json::Value;
use std::path::Path;

const MODELS: &[&str] = &["llama", "llama3_scaled", "mistral_sw", "qwen2", "qwen3"];

fn load(name: &str) -> (Decoder, Value) {
    let dir = Path::new("tests/fixtures/models").join(name);
    let d = Decoder::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (d, expected)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn log_probs_match_transformers() {
    for name in MODELS {
        let (d, e) = load(name);
        assert!(
            e["logit_std"].as_f64().unwrap() > 1.0,
            "{name}: logits too close to uniform to prove anything"
        );
        for (seq, want) in e["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .zip(e["token_logprobs"].as_array().unwrap())
        {
            let got = d.token_logprobs(&ids(seq)).unwrap();
            let want = floats(want);
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{name}: log-probs differ by up to {worst}");
        }
        let first = ids(&e["sequences"][0]);
        let got = d.last_logits(&first).unwrap();
        let worst = got
            .iter()
            .zip(floats(&e["last_logits"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: last logits differ by up to {worst}");
    }
}

#[test]
fn greedy_ids_match_transformers() {
    for name in MODELS {
        let (d, e) = load(name);
        let got = d
            .greedy(&ids(&e["greedy_prompt"]), ids(&e["greedy_ids"]).len())
            .unwrap();
        assert_eq!(got, ids(&e["greedy_ids"]), "{name}");
    }
}

#[test]
fn every_weight_receives_a_gradient() {
    for name in MODELS {
        let (mut d, e) = load(name);
        let vars = d.make_trainable().unwrap();
        let loss = d.nll(&ids(&e["sequences"][1])).unwrap();
        let grads = loss.backward().unwrap();
        for (param, var) in &vars {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: zero or non-finite gradient for {param}"
            );
        }
    }
}

#[test]
fn unknown_architectures_and_missing_tensors_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("ptl-model-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let e = Decoder::load(&dir, &Device::Cpu).err().unwrap();
    assert!(
        e.contains("architecture GPT2LMHeadModel is not supported"),
        "{e}"
    );
    std::fs::copy(
        "tests/fixtures/models/llama/config.json",
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"not loaded").unwrap();
    let e = Decoder::load(&dir, &Device::Cpu).err().unwrap();
    assert!(e.contains("safetensors only"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
