//! The reward model against TRL 1.16's own RewardTrainer and transformers'
//! AutoModelForSequenceClassification (tests/fixtures/reward, made by scripts/make_reward_fixture.py):
//! step 1's loss and logged metrics for chat rows, rows with a margin column and
//! center_rewards_coefficient, and plain-text rows, for full, freeze and LoRA tuning from a checkpoint
//! that already has a score head; the sequences equal TRL's tokenization; `ptl reward` gives
//! transformers' rewards; a trained reward model reloads with the rewards it trained to.

mod common;

use common::{ptl, text, Dir};
use serde_json::Value;
use std::path::Path;

/// Within this of TRL's and transformers' values (absolute; measured ≤ 5.4e-7).
const TOLERANCE: f64 = 1e-5;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string("tests/fixtures/reward/expected.json").unwrap())
        .unwrap()
}

fn workdir(name: &str) -> Dir {
    common::fixture_workdir(
        name,
        "reward",
        &["start"],
        &["chat.jsonl", "margin.jsonl", "plain.jsonl"],
    )
}

fn run_ok(d: &Path, pipeline: &str) {
    std::fs::write(d.join("p.ptl"), pipeline).unwrap();
    let o = ptl(d, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn step_one_matches_trl_full_freeze_and_lora() {
    let want = expected();
    let mut problems = Vec::new();
    for (case, expect) in want["cases"].as_object().unwrap() {
        let center = expect["center_rewards_coefficient"].as_f64().unwrap_or(0.0);
        for tuning in ["full", "freeze(layers = 1)", "lora(rank = 4, alpha = 8)"] {
            let d = workdir(&format!("{case}-{}", tuning.len()));
            run_ok(
                &d.0,
                &format!(
                    "stage aligned = reward_model {{\n  model = hf_model(\"start\")\n  data = jsonl(\"{case}.jsonl\", format = \"preference\")\n  tuning = {tuning}\n  center_rewards_coefficient = {center}\n  batch_size = 4\n  max_steps = 1\n}}\n"
                ),
            );
            let got = common::first_logged_step(&d.0, "aligned");
            problems.extend(common::compare_metrics(
                &format!("{case} {tuning}"),
                &got,
                &expect["metrics"],
                std::iter::once("loss").chain(ptl::train::reward::REWARD_METRICS),
                TOLERANCE,
                0.0,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn sequences_are_tokenized_as_trl_does() {
    use ptl::data::encode::{EncodeOptions, Encoder};
    use ptl::data::tokenizer::TextTokenizer;
    let want = expected();
    let tok = TextTokenizer::load(Path::new("tests/fixtures/reward/start")).unwrap();
    let enc = Encoder::new(
        &tok,
        None,
        EncodeOptions {
            max_len: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = common::token_ids;
    for (case, expect) in want["cases"].as_object().unwrap() {
        let (rows, problems) = ptl::data::rows::read(
            &Path::new("tests/fixtures/reward").join(format!("{case}.jsonl")),
            ptl::lang::types::Format::Preference,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        for (row, trl) in rows.iter().zip(expect["tokenized"].as_array().unwrap()) {
            let pair =
                ptl::stages::reward_model::scored_pair(enc.encode(&row.example).unwrap(), 1024)
                    .unwrap();
            assert_eq!(
                pair.chosen,
                ids(&trl["chosen_ids"]),
                "{case} line {}",
                row.line
            );
            assert_eq!(
                pair.rejected,
                ids(&trl["rejected_ids"]),
                "{case} line {}",
                row.line
            );
        }
    }
}

/// `ptl reward --format json` over `rows`: the rewards.
fn rewards(dir: &Path, model: &str, rows: &str) -> Vec<f64> {
    std::fs::write(dir.join("rows.jsonl"), rows).unwrap();
    let o = ptl(
        dir,
        &["reward", model, "--input", "rows.jsonl", "--format", "json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["reward"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn ptl_reward_gives_transformers_rewards() {
    let want = expected();
    let d = workdir("score");
    let mut rows = String::new();
    let mut reference = Vec::new();
    for case in want["cases"].as_object().unwrap().values() {
        for (t, r) in case["tokenized"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["rewards"].as_array().unwrap())
        {
            for (k, side) in ["chosen_ids", "rejected_ids"].iter().enumerate() {
                rows.push_str(&format!("{{\"ids\": {}}}\n", t[side]));
                reference.push(r[k].as_f64().unwrap());
            }
        }
    }
    let got = rewards(&d.0, "start", &rows);
    assert_eq!(got.len(), reference.len());
    for (g, w) in got.iter().zip(&reference) {
        assert!((g - w).abs() <= TOLERANCE, "ptl {g} vs transformers {w}");
    }
    // Rows as users write them score the sequences TRL trains on: the first chat pair.
    let chat = std::fs::read_to_string(d.0.join("chat.jsonl")).unwrap();
    let first: Value = serde_json::from_str(chat.lines().next().unwrap()).unwrap();
    let row = serde_json::json!({"prompt": first["prompt"], "completion": first["chosen"]});
    let by_messages = rewards(&d.0, "start", &format!("{row}\n"));
    let r0 = want["cases"]["chat"]["rewards"][0][0].as_f64().unwrap();
    assert!(
        (by_messages[0] - r0).abs() <= TOLERANCE,
        "{by_messages:?} vs {r0}"
    );
}

#[test]
fn a_trained_reward_model_is_a_sequence_classifier_that_learned_the_pairs() {
    let d = workdir("trained");
    run_ok(
        &d.0,
        "stage rm = reward_model {\n  model = hf_model(\"start\")\n  data = jsonl(\"chat.jsonl\", format = \"preference\")\n  tuning = lora(rank = 4, alpha = 8)\n  lr = 5e-2\n  batch_size = 4\n  max_steps = 20\n}\n",
    );
    let o = ptl(&d.0, &["path", "p.ptl", "rm"]);
    let out = d.0.join(String::from_utf8_lossy(&o.stdout).trim());
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen3ForSequenceClassification");
    assert_eq!(config["id2label"].as_object().unwrap().len(), 1);
    assert_eq!(config["pad_token_id"], 151643);
    let adapter: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["task_type"], "SEQ_CLS");
    assert_eq!(adapter["modules_to_save"][0], "score");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["accuracy"], 1.0, "{metrics}");
    // The saved folder scores chosen above rejected for every training pair.
    let expect = expected();
    let mut rows = String::new();
    for t in expect["cases"]["chat"]["tokenized"].as_array().unwrap() {
        rows.push_str(&format!(
            "{{\"ids\": {}}}\n{{\"ids\": {}}}\n",
            t["chosen_ids"], t["rejected_ids"]
        ));
    }
    let model = out.join("model");
    let r = rewards(&d.0, model.to_str().unwrap(), &rows);
    for pair in r.chunks(2) {
        assert!(pair[0] > pair[1], "{r:?}");
    }
}

#[test]
fn ptl_reward_refuses_a_model_without_a_score_head() {
    let d = common::preference_workdir("not-rm");
    std::fs::write(d.0.join("rows.jsonl"), "{\"ids\": [1, 2, 3]}\n").unwrap();
    let o = ptl(&d.0, &["reward", "policy", "--input", "rows.jsonl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not a reward model"), "{}", text(&o));
}

#[test]
fn eval_refuses_a_reward_input_that_is_not_a_reward_model_before_running() {
    let d = common::preference_workdir("eval-not-rm");
    std::fs::write(
        d.0.join("p.ptl"),
        "stage report = eval {\n  models = [hf_model(\"policy\"), hf_model(\"reference\")]\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  reward = hf_model(\"policy\")\n  metrics = [\"reward\", \"win_rate\"]\n  max_new_tokens = 2\n}\n",
    )
    .unwrap();
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("ptl::type_mismatch"), "{t}");
    assert!(t.contains("expects reward model, found model"), "{t}");
    assert!(!d.0.join(".ptl").exists(), "nothing ran: {t}");
}
