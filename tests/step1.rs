//! The step-1 loss of `sft` equals transformers' masked token-mean cross-entropy on the same model,
//! data and chat template (within 1e-5), for full tuning and LoRA (a fresh adapter changes nothing at
//! step 1), with prompts trained too, with the last turn only, and with TRL's Qwen3 training
//! template (`{% generation %}` spans). The fixture (tests/fixtures/step1/) is a tiny Qwen3 over the
//! real Qwen3 vocabulary, made by scripts/make_step1_fixture.py; all rows form one batch.

mod common;

use common::{ptl, text};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-5;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/step1")
}

/// One `sft` stage over the fixture: all rows in one batch, one step, a learning rate too small to
/// matter (the step-1 loss is computed before the update anyway).
fn stage(name: &str, rows: usize, extra: &str) -> String {
    format!(
        "stage {name} = sft {{\n  model = base\n  data = chat\n  max_steps = 1\n  batch_size = {rows}\n  lr = 1e-9\n  warmup_steps = 0\n{extra}}}\n\n"
    )
}

/// (stage, the expected.json loss it must match, its extra fields)
const STAGES: [(&str, &str, &str); 5] = [
    ("sft_full", "assistant", "  tuning = full\n"),
    ("sft_lora", "lora", "  tuning = lora(rank = 4)\n"),
    (
        "sft_prompts",
        "all_tokens",
        "  tuning = full\n  train_on_prompt = true\n",
    ),
    (
        "sft_history",
        "last_turn",
        "  tuning = full\n  mask_history = true\n",
    ),
    (
        "sft_trl",
        "trl",
        "  tuning = full\n  template = \"qwen3_training.jinja\"\n",
    ),
];

#[test]
fn sft_step1_loss_equals_transformers() {
    let fx = fixture();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let n_rows = expected["rows"].as_array().unwrap().len();

    let dir = std::env::temp_dir().join(format!("ptl-step1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = Dir(dir);
    for f in ["data.jsonl", "qwen3_training.jinja"] {
        std::fs::copy(fx.join(f), dir.0.join(f)).unwrap();
    }
    let mut pipeline = format!(
        "let base = hf_model({:?})\nlet chat = jsonl(\"data.jsonl\", format = \"messages\")\n\n",
        fx.join("model").display().to_string()
    );
    for (name, _, extra) in STAGES {
        pipeline.push_str(&stage(name, n_rows, extra));
    }
    std::fs::write(dir.0.join("p.ptl"), &pipeline).unwrap();

    let mut problems = Vec::new();

    // What trains: ptl's ids and masks equal the ones the loss was computed on.
    let rows = |key: &str| -> Vec<(Vec<u64>, Vec<u64>)> {
        let (rows, ids, mask) = match key {
            "trl" => ("trl_rows", "ids", "mask"),
            "last_turn" => ("rows", "ids", "last_turn_mask"),
            _ => ("rows", "ids", "assistant_mask"),
        };
        expected[rows]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let ids: Vec<u64> = r[ids]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                let mask = if key == "all_tokens" {
                    vec![1; ids.len()]
                } else {
                    r[mask]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap())
                        .collect()
                };
                (ids, mask)
            })
            .collect()
    };
    for (name, key, _) in STAGES {
        if name == "sft_lora" {
            continue; // the same encoding as sft_full
        }
        let o = ptl(
            &dir.0,
            &[
                "data", "show", "p.ptl", name, "--rows", "100", "--format", "json",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "data show {name}: {}", text(&o));
        let shown: Vec<Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want = rows(key);
        assert_eq!(shown.len(), want.len(), "{name}: rows");
        for (i, (row, (ids, mask))) in shown.iter().zip(&want).enumerate() {
            let got_ids: Vec<u64> = row["ids"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} row {i}: {row}"))
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let got_mask: Vec<u64> = row["labels_mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            if &got_ids != ids {
                problems.push(format!(
                    "{name} row {i}: ids differ from transformers'\n  ptl:  {got_ids:?}\n  want: {ids:?}"
                ));
            } else if &got_mask != mask {
                problems.push(format!(
                    "{name} row {i}: mask differs\n  ptl:  {got_mask:?}\n  want: {mask:?}"
                ));
            }
        }
    }

    let started = std::time::Instant::now();
    let o = ptl(&dir.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    eprintln!(
        "ptl run: {} stages in {:.1}s",
        STAGES.len(),
        started.elapsed().as_secs_f64()
    );

    for (name, key, _) in STAGES {
        let out = ptl(&dir.0, &["path", "p.ptl", name]);
        let out = dir.0.join(String::from_utf8_lossy(&out.stdout).trim());
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let first: Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        assert_eq!(first["step"], 1, "{name}: {first}");
        let loss = first["loss"].as_f64().unwrap();
        let want = expected["losses"][key]["loss"].as_f64().unwrap();
        eprintln!(
            "{name:8} ptl {loss:.6}  transformers {want:.6}  diff {:+.2e}",
            loss - want
        );
        if (loss - want).abs() >= TOLERANCE {
            problems.push(format!(
                "{name}: step-1 loss {loss} vs transformers {want} (diff {:+.3e}, {} trained tokens)",
                loss - want,
                expected["losses"][key]["tokens"]
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
