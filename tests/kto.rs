//! KTO against TRL 1.16's own KTOTrainer (tests/fixtures/kto, made by scripts/make_kto_fixture.py, on
//! the DPO fixture's two models): step 1's loss and every logged metric with a positive KL estimate
//! (balanced and weighted) and a clamped one, for full tuning and a fresh LoRA; the rows and their
//! mismatched pairs equal TRL's preprocessing; bad KTO data is refused before any step.

mod common;

use common::{ptl, text, Dir};
use serde_json::Value;
use std::path::Path;

/// Within this of TRL's values (absolute; losses and rewards measured ≤ 7.2e-6).
const TOLERANCE: f64 = 1e-5;
/// Summed log-probabilities (about −200) are f32 sums in TRL, whose spacing at 200 is 1.5e-5: within
/// this relative difference (measured 4.2e-7).
const RELATIVE: f64 = 5e-7;
/// `kl` is a mean of differences of such sums (policy − reference, about −200 each): within this
/// (absolute; measured 6.1e-5, the sums' own rounding).
const KL_TOLERANCE: f64 = 1e-4;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string("tests/fixtures/kto/expected.json").unwrap())
        .unwrap()
}

fn workdir(name: &str) -> Dir {
    let d = common::preference_workdir(&format!("kto-{name}"));
    std::fs::copy("tests/fixtures/kto/data.jsonl", d.0.join("kto.jsonl")).unwrap();
    d
}

fn stage(policy: &str, reference: &str, tuning: &str, extra: &str) -> String {
    format!(
        "stage aligned = kto {{\n  model = hf_model(\"{policy}\")\n  reference = hf_model(\"{reference}\")\n  data = jsonl(\"kto.jsonl\", format = \"kto\")\n  tuning = {tuning}\n  batch_size = 6\n  max_steps = 1\n{extra}}}\n"
    )
}

#[test]
fn step_one_matches_trl_full_and_lora() {
    let want = expected();
    let mut problems = Vec::new();
    for (case, c) in want["cases"].as_object().unwrap() {
        for tuning in ["full", "lora(rank = 4, alpha = 8)"] {
            let d = workdir(&format!("{case}-{}", tuning.len()));
            let weights = format!(
                "  desirable_weight = {}\n  undesirable_weight = {}\n",
                c["desirable_weight"], c["undesirable_weight"]
            );
            let pipeline = stage(
                c["policy"].as_str().unwrap(),
                c["reference"].as_str().unwrap(),
                tuning,
                &weights,
            );
            std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
            let o = ptl(&d.0, &["run", "p.ptl"]);
            assert_eq!(o.status.code(), Some(0), "{case}: {}", text(&o));
            let got = common::first_logged_step(&d.0, "aligned");
            let label = format!("{case} {tuning}");
            let (kl, rest) = ptl::train::kto::KTO_METRICS.split_at(1);
            problems.extend(common::compare_metrics(
                &label,
                &got,
                c,
                std::iter::once("loss").chain(rest.iter().copied()),
                TOLERANCE,
                RELATIVE,
            ));
            problems.extend(common::compare_metrics(
                &label,
                &got,
                c,
                kl.iter().copied(),
                KL_TOLERANCE,
                0.0,
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rows_and_mismatched_pairs_are_tokenized_as_trl_does() {
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
    let (rows, problems) = ptl::data::rows::read(
        Path::new("tests/fixtures/kto/data.jsonl"),
        ptl::lang::types::Format::Kto,
    )
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let ids = common::token_ids;
    let trl = want["tokenized"].as_array().unwrap();
    let completions: Vec<Vec<u32>> = rows
        .iter()
        .zip(trl)
        .map(|(row, t)| {
            let Encoded::Unpaired {
                prompt_ids,
                completion_ids,
                label,
                ..
            } = enc.encode(&row.example).unwrap()
            else {
                panic!("not an unpaired row")
            };
            assert_eq!(prompt_ids, ids(&t["prompt_ids"]), "line {}", row.line);
            assert_eq!(
                completion_ids,
                ids(&t["completion_ids"]),
                "line {}",
                row.line
            );
            assert_eq!(Value::Bool(label), t["label"], "line {}", row.line);
            completion_ids
        })
        .collect();
    let partners = ptl::train::kto::kl_partners(rows.len(), trl.len());
    for (i, t) in trl.iter().enumerate() {
        assert_eq!(
            completions[partners[i]],
            ids(&t["KL_completion_ids"]),
            "row {i}"
        );
    }
}

#[test]
fn rows_with_one_label_are_refused_with_the_file() {
    let d = workdir("one-label");
    let rows: String = std::fs::read_to_string(d.0.join("kto.jsonl"))
        .unwrap()
        .replace("\"label\": false", "\"label\": true");
    std::fs::write(d.0.join("kto.jsonl"), rows).unwrap();
    std::fs::write(d.0.join("p.ptl"), stage("policy", "reference", "full", "")).unwrap();
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("ptl::one_label"), "{t}");
    assert!(
        t.contains("kto.jsonl: all 6 rows to train on have label = true"),
        "{t}"
    );
    assert!(t.contains("add rows"), "{t}");
    assert!(
        !d.0.join(".ptl/out/p/aligned").exists(),
        "nothing is committed"
    );
}

#[test]
fn a_batch_of_one_is_refused_at_check() {
    let d = workdir("batch-one");
    let pipeline =
        stage("policy", "reference", "full", "").replace("batch_size = 6", "batch_size = 1");
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    let o = ptl(&d.0, &["check", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("must be at least 2"), "{}", text(&o));
}
