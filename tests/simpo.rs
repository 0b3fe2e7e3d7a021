//! SimPO against TRL 1.16's own CPOTrainer with `loss_type = "simpo"` (tests/fixtures/simpo, made by
//! scripts/make_simpo_fixture.py on the DPO fixture's policy and rows): step 1's loss and every logged
//! metric, pure SimPO and with the CPO NLL term and label smoothing, full and LoRA; and the sequences
//! equal TRL's CPO preprocessing (which ends each completion with EOS).

mod common;

use serde_json::Value;
use std::path::Path;

/// Within this of TRL's float32 values (absolute), for the metrics not compared relatively.
const TOLERANCE: f64 = 1e-5;
/// The loss and the NLL against TRL's float64 run (TRL's float32 NLL, summed in f32 over the 152k
/// vocabulary, is 1.3e-5 off its float64 one; ptl sums in f64): within this (measured ≤ 1.1e-6; the
/// logged float64 values are themselves rounded to f32, spacing 1.9e-6 from 16 to 32).
const FLOAT64_TOLERANCE: f64 = 2e-6;
/// Rewards and averaged log-probs are f32 values in TRL (spacing 3.8e-6 at 41): within this relative
/// difference (measured 2.9e-7).
const RELATIVE: f64 = 5e-7;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string("tests/fixtures/simpo/expected.json").unwrap())
        .unwrap()
}

#[test]
fn step_one_matches_trl_with_and_without_the_nll_term() {
    let want = expected();
    let mut problems = Vec::new();
    for (name, case) in want["cases"].as_object().unwrap() {
        for tuning in ["full", "lora(rank = 4, alpha = 8)"] {
            let got = common::preference_step_one(
                &format!("simpo-{name}-{}", tuning.len()),
                &format!(
                    "stage aligned = simpo {{\n  model = hf_model(\"policy\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  tuning = {tuning}\n  beta = 2.0\n  gamma = 0.5\n  cpo_alpha = {}\n  label_smoothing = {}\n  batch_size = 4\n  max_steps = 1\n}}\n",
                    case["cpo_alpha"], case["label_smoothing"]
                ),
            );
            problems.extend(common::compare_metrics_with_float64(
                &format!("{name} {tuning}"),
                &got,
                case,
                std::iter::once("loss").chain(ptl::train::preference::SIMPO_METRICS),
                (TOLERANCE, RELATIVE),
                FLOAT64_TOLERANCE,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn sequences_are_trls_cpo_preprocessing() {
    // TRL's CPO rows: prompt + completion + EOS (when the rendering does not end with it), the
    // prompt's labels -100. ptl's pairs with the simpo stage's EOS rule give the same sequences.
    use ptl::data::encode::{EncodeOptions, Encoded, Encoder};
    use ptl::data::tokenizer::TextTokenizer;
    let want = expected();
    let tok = TextTokenizer::load(Path::new("tests/fixtures/dpo/policy")).unwrap();
    let eos = tok.eos_id().unwrap();
    let enc = Encoder::new(
        &tok,
        None,
        EncodeOptions {
            max_len: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let (rows, _) = ptl::data::rows::read(
        Path::new("tests/fixtures/dpo/data.jsonl"),
        ptl::lang::types::Format::Preference,
    )
    .unwrap();
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_i64().unwrap())
            .collect()
    };
    for (row, trl) in rows.iter().zip(want["tokenized"].as_array().unwrap()) {
        let Encoded::Pair {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            ..
        } = enc.encode(&row.example).unwrap()
        else {
            panic!("not a pair")
        };
        for (completion, side) in [(chosen_ids, "chosen"), (rejected_ids, "rejected")] {
            let mut completion = completion;
            if completion.last() != Some(&eos) {
                completion.push(eos);
            }
            let full: Vec<i64> = prompt_ids
                .iter()
                .chain(&completion)
                .map(|&i| i as i64)
                .collect();
            let labels: Vec<i64> = std::iter::repeat_n(-100, prompt_ids.len())
                .chain(completion.iter().map(|&i| i as i64))
                .collect();
            assert_eq!(
                full,
                ids(&trl[format!("{side}_input_ids")]),
                "line {}",
                row.line
            );
            assert_eq!(
                labels,
                ids(&trl[format!("{side}_labels")]),
                "line {}",
                row.line
            );
        }
    }
}
