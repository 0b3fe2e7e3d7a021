//! ORPO against TRL 1.16's own ORPOTrainer (tests/fixtures/orpo, made by scripts/make_orpo_fixture.py
//! on the DPO fixture's policy and rows): step 1's loss and every logged metric for two betas, full and
//! LoRA. ORPO's sequences are CPO's (tests/simpo.rs checks them against TRL's preprocessing).

mod common;

use serde_json::Value;

/// Within this of TRL's float32 values (absolute): the odds terms.
const TOLERANCE: f64 = 1e-5;
/// The loss and the NLL against TRL's float64 run (TRL's float32 NLL, summed in f32 over the 152k
/// vocabulary, is 1.3e-5 off its float64 one; ptl sums in f64): within this (measured ≤ 1.1e-6; the
/// logged float64 values are themselves rounded to f32, spacing 1.9e-6 from 16 to 32).
const FLOAT64_TOLERANCE: f64 = 2e-6;
/// Rewards and averaged log-probs are f32 values in TRL: within this relative difference.
const RELATIVE: f64 = 5e-7;

#[test]
fn step_one_matches_trl_for_two_betas_full_and_lora() {
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/orpo/expected.json").unwrap(),
    )
    .unwrap();
    let mut problems = Vec::new();
    for (name, case) in want["cases"].as_object().unwrap() {
        for tuning in ["full", "lora(rank = 4, alpha = 8)"] {
            let got = common::preference_step_one(
                &format!("orpo-{name}-{}", tuning.len()),
                &format!(
                    "stage aligned = orpo {{\n  model = hf_model(\"policy\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  tuning = {tuning}\n  beta = {}\n  batch_size = 4\n  max_steps = 1\n}}\n",
                    case["beta"]
                ),
            );
            problems.extend(common::compare_metrics_with_float64(
                &format!("{name} {tuning}"),
                &got,
                case,
                std::iter::once("loss").chain(ptl::train::preference::ORPO_METRICS),
                (TOLERANCE, RELATIVE),
                FLOAT64_TOLERANCE,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
