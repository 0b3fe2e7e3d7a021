//! DPO against TRL 1.16's own DPOTrainer (tests/fixtures/dpo, made by scripts/make_dpo_fixture.py):
//! step 1's loss and every logged metric for the sigmoid, ipo, hinge and robust losses, with a
//! reference model different from the policy, for full tuning and a fresh LoRA, and with a max_len
//! that drops a row and truncates completions, and with TRL's batch shared by two worker processes;
//! the tokenized prompt / chosen / rejected ids equal TRL's preprocessing.

mod common;

use common::{ptl, text, Dir};
use serde_json::Value;
use std::path::Path;

/// Within this of TRL's values (absolute): losses and rewards (measured ≤ 7e-6).
const TOLERANCE: f64 = 1e-5;
/// Summed log-probabilities (about −200 here) are f32 sums in TRL, whose spacing at 200 is 1.5e-5
/// itself: they agree within this relative difference (measured 1.1e-7, 1.7e-5 absolute, since ptl
/// sums each row's vocabulary in f64; 3.5e-7 before).
const RELATIVE: f64 = 3e-7;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string("tests/fixtures/dpo/expected.json").unwrap())
        .unwrap()
}

fn workdir(name: &str) -> Dir {
    common::preference_workdir(name)
}

#[test]
fn step_one_matches_trl_for_every_loss_full_and_lora() {
    let want = expected();
    let mut problems = Vec::new();
    for (loss, case) in want["losses"].as_object().unwrap() {
        for tuning in ["full", "lora(rank = 4, alpha = 8)"] {
            let got = common::preference_step_one(
                &format!("dpo-{loss}-{}", tuning.len()),
                &format!(
                    "stage aligned = dpo {{\n  model = hf_model(\"policy\")\n  reference = hf_model(\"reference\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  tuning = {tuning}\n  loss = \"{loss}\"\n  label_smoothing = {}\n  beta = 0.1\n  batch_size = 4\n  max_steps = 1\n}}\n",
                    case["label_smoothing"]
                ),
            );
            problems.extend(common::compare_metrics(
                &format!("{loss} {tuning}"),
                &got,
                case,
                std::iter::once("loss").chain(ptl::train::preference::DPO_METRICS),
                TOLERANCE,
                RELATIVE,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Fails with every metric of `got` (step 1) that differs from TRL's `case`.
fn assert_matches_trl(name: &str, got: &Value, case: &Value) {
    let problems = common::compare_metrics(
        name,
        got,
        case,
        std::iter::once("loss").chain(ptl::train::preference::DPO_METRICS),
        TOLERANCE,
        RELATIVE,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn two_workers_of_two_pairs_match_trl_on_four() {
    // TRL's step on a batch of 4 pairs, here shared by 2 worker processes of 2 pairs each: the
    // loss and every metric are summed over the workers before they are logged.
    let case = &expected()["losses"]["sigmoid"];
    let got = common::preference_step_one(
        "dpo-workers",
        &format!(
            "stage aligned = dpo {{\n  model = hf_model(\"policy\")\n  reference = hf_model(\"reference\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  loss = \"sigmoid\"\n  label_smoothing = {}\n  beta = 0.1\n  batch_size = 2\n  workers = 2\n  max_steps = 1\n}}\n",
            case["label_smoothing"]
        ),
    );
    assert_matches_trl("sigmoid on 2 workers", &got, case);
}

#[test]
fn truncation_and_dropped_rows_match_trl() {
    // max_len 24: the row whose prompt is 34 tokens is dropped, the others' completions are cut.
    let case = &expected()["truncated"];
    let got = common::preference_step_one(
        "dpo-truncated",
        &format!(
            "stage aligned = dpo {{\n  model = hf_model(\"policy\")\n  reference = hf_model(\"reference\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  max_len = {}\n  batch_size = {}\n  max_steps = 1\n}}\n",
            case["max_length"], case["batch_size"]
        ),
    );
    assert_matches_trl("sigmoid max_len 24", &got, case);
}

#[test]
fn pairs_are_tokenized_as_trl_does() {
    use ptl::data::encode::{EncodeOptions, Encoded, Encoder};
    use ptl::data::tokenizer::TextTokenizer;
    let want = expected();
    let tok = TextTokenizer::load(Path::new("tests/fixtures/dpo/policy")).unwrap();
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
    // Conversations, and plain text (prompt + completion + EOS tokenized together).
    for (file, key) in [
        ("data.jsonl", "tokenized"),
        ("plain.jsonl", "tokenized_plain"),
    ] {
        let (rows, problems) = ptl::data::rows::read(
            &Path::new("tests/fixtures/dpo").join(file),
            ptl::lang::types::Format::Preference,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let trl_rows = want[key].as_array().unwrap();
        assert_eq!(rows.len(), trl_rows.len());
        for (row, trl) in rows.iter().zip(trl_rows) {
            let Encoded::Pair {
                prompt_ids,
                chosen_ids,
                rejected_ids,
                ..
            } = enc.encode(&row.example).unwrap()
            else {
                panic!("not a pair")
            };
            assert_eq!(prompt_ids, ids(&trl["prompt_ids"]), "{file}:{}", row.line);
            assert_eq!(chosen_ids, ids(&trl["chosen_ids"]), "{file}:{}", row.line);
            assert_eq!(
                rejected_ids,
                ids(&trl["rejected_ids"]),
                "{file}:{}",
                row.line
            );
        }
    }
}

#[test]
fn a_killed_dpo_stage_resumes_bit_identical() {
    let pipeline = "stage aligned = dpo {\n  model = hf_model(\"policy\")\n  reference = hf_model(\"reference\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  tuning = lora(rank = 4, alpha = 8, dropout = 0.1)\n  lr = 1e-2\n  batch_size = 2\n  max_steps = 5\n  save_every = 2\n}\n";
    let files = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let o = ptl(d, &["path", "p.ptl", "aligned"]);
        let out = d.join(String::from_utf8_lossy(&o.stdout).trim());
        let mut files = Vec::new();
        for sub in ["model", "adapter"] {
            for f in std::fs::read_dir(out.join(sub)).unwrap() {
                let f = f.unwrap().path();
                files.push((
                    f.display()
                        .to_string()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string(),
                    std::fs::read(&f).unwrap(),
                ));
            }
        }
        files.push((
            "metrics".into(),
            std::fs::read(out.join("metrics.jsonl")).unwrap(),
        ));
        files.sort();
        files
    };
    let whole = workdir("whole");
    std::fs::write(whole.0.join("p.ptl"), pipeline).unwrap();
    let o = ptl(&whole.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let crashed = workdir("crashed");
    std::fs::write(crashed.0.join("p.ptl"), pipeline).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .env("PTL_FAULT", "crash_after_step:3")
        .env_remove("PTL_STORE")
        .current_dir(&crashed.0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "killed by a signal: {}", text(&o));
    let o = ptl(&crashed.0, &["run", "p.ptl"]);
    assert!(
        text(&o).contains("aligned: resuming from the checkpoint at step 2"),
        "{}",
        text(&o)
    );
    let (a, b) = (files(&whole.0), files(&crashed.0));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs after the resume:\n{}\n{}",
            String::from_utf8_lossy(&x[..x.len().min(2000)]),
            String::from_utf8_lossy(&y[..y.len().min(2000)])
        );
    }
    assert_eq!(a.len(), b.len());
}

#[test]
fn a_row_without_rejected_stops_the_stage_at_its_line() {
    let d = workdir("bad-row");
    let rows = std::fs::read_to_string(d.0.join("data.jsonl")).unwrap();
    std::fs::write(
        d.0.join("data.jsonl"),
        format!("{rows}{{\"prompt\": \"a\", \"chosen\": \"b\"}}\n"),
    )
    .unwrap();
    std::fs::write(
        d.0.join("p.ptl"),
        "stage aligned = dpo {\n  model = hf_model(\"policy\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  max_steps = 1\n}\n",
    )
    .unwrap();
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1));
    let all = text(&o);
    assert!(
        all.contains("data.jsonl:5: a preference row needs rejected"),
        "{all}"
    );
    assert!(
        !d.0.join(".ptl/out/p/aligned").exists(),
        "nothing committed"
    );
}

#[test]
fn a_second_dpo_stage_on_the_same_data_reuses_the_reference_log_probs() {
    let stage = |name: &str, beta: f64| {
        format!("stage {name} = dpo {{\n  model = hf_model(\"policy\")\n  reference = hf_model(\"reference\")\n  data = jsonl(\"data.jsonl\", format = \"preference\")\n  beta = {beta}\n  lr = 1e-3\n  batch_size = 2\n  max_steps = 2\n}}\n")
    };
    let pipeline = format!("{}{}", stage("first", 0.1), stage("second", 0.5));
    let d = workdir("shared-ref");
    std::fs::write(d.0.join("p.ptl"), &pipeline).unwrap();
    let o = ptl(&d.0, &["run", "p.ptl", "--only", "first"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("first: computing the reference log-probs"),
        "{}",
        text(&o)
    );
    let o = ptl(&d.0, &["plan", "p.ptl"]);
    assert!(
        text(&o).contains("reuses the reference log-probs in the store"),
        "{}",
        text(&o)
    );
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("second: reference log-probs found in the store"),
        "{}",
        text(&o)
    );
    // The reused log-probs give the same bits as computing them afresh.
    let fresh = workdir("fresh-ref");
    std::fs::write(fresh.0.join("p.ptl"), &pipeline).unwrap();
    let o = ptl(&fresh.0, &["run", "p.ptl", "--only", "second"]);
    assert!(
        text(&o).contains("second: computing the reference log-probs"),
        "{}",
        text(&o)
    );
    let metrics = |d: &Path| {
        let o = ptl(d, &["path", "p.ptl", "second"]);
        let out = d.join(String::from_utf8_lossy(&o.stdout).trim());
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap()
    };
    assert_eq!(metrics(&d.0), metrics(&fresh.0));
}
