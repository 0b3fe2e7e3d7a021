//! The shipped preference pipelines run end to end from a fresh store on models the repo builds:
//! `pipelines/chat_assistant.ptl` (SFT → reward model → DPO → eval, as written) and
//! `pipelines/preference.ptl` (the preference demo, shortened with --set: the full run takes minutes
//! in release and its figures are in the README).

mod common;

use common::text;
use serde_json::Value;
use std::path::Path;

fn run(dir: &Path, pipeline: &str, set: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"));
    cmd.args(["run", pipeline]);
    for s in set {
        cmd.args(["--set", s]);
    }
    cmd.env("PTL_STORE", "store")
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn metrics(dir: &Path, pipeline: &str, stage: &str) -> Value {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["path", pipeline, stage])
        .env("PTL_STORE", "store")
        .current_dir(dir)
        .output()
        .unwrap();
    let out = dir.join(String::from_utf8_lossy(&o.stdout).trim());
    serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn chat_assistant_runs_end_to_end_from_a_fresh_store() {
    let d = common::pipeline_copy(
        "chat-assistant",
        &[
            "chat_assistant.ptl",
            "models/qwen3-tiny",
            "data/chat.jsonl",
            "data/prefs.jsonl",
            "data/heldout.jsonl",
        ],
    );
    let o = run(&d.0, "chat_assistant.ptl", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("0 cached, 6 ran, 0 failed, 0 blocked\n"),
        "{}",
        text(&o)
    );
    assert!(d.0.join("exports/assistant.gguf").is_file());
    let m = metrics(&d.0, "chat_assistant.ptl", "report");
    let models = m["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{m:#}");
    for (i, entry) in models.iter().enumerate() {
        assert!(entry["loss"].as_f64().is_some_and(f64::is_finite), "{m:#}");
        assert!(
            entry["reward"].as_f64().is_some_and(f64::is_finite),
            "{m:#}"
        );
        let examples = entry["examples"].as_array().unwrap();
        assert!(examples[0]["reward"].as_f64().is_some(), "{m:#}");
        // Win rates are against the first model.
        let rate = entry["win_rate"].as_f64();
        assert_eq!(rate.is_some(), i > 0, "{m:#}");
        assert!(rate.is_none_or(|r| (0.0..=1.0).contains(&r)), "{m:#}");
    }
}

#[test]
fn the_preference_demo_runs_and_reports_every_preference_metric() {
    let d = common::pipeline_copy(
        "preference",
        &[
            "preference.ptl",
            "tokenizers/tiny-chat",
            "data/quickstart/pretrain.jsonl",
            "data/preference",
        ],
    );
    let short = [
        "pretrained.max_steps=2",
        "tuned.max_steps=2",
        "judge.max_steps=2",
        "aligned.max_steps=2",
        "report.limit=4",
    ];
    let o = run(&d.0, "preference.ptl", &short);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("0 cached, 6 ran, 0 failed, 0 blocked\n"),
        "{}",
        text(&o)
    );
    let m = metrics(&d.0, "preference.ptl", "report");
    for entry in m["models"].as_array().unwrap() {
        for key in ["exact_match", "reward", "pref_accuracy"] {
            assert!(entry[key].as_f64().is_some(), "{key}: {m:#}");
        }
        assert_eq!(entry["answered"], 4, "{m:#}");
    }
    assert!(m["models"][1]["win_rate"].as_f64().is_some(), "{m:#}");
    assert_eq!(m["reward_model"]["model"], "judge.model", "{m:#}");
    assert!(
        m["reward_model"]["pref_accuracy"].as_f64().is_some(),
        "{m:#}"
    );
}
