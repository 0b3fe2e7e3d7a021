//! Golden tests for run-time diagnostics: each case under tests/run_diagnostics/ is a folder with a
//! pipeline `p.ptl` that fails while it runs, for real, on a tiny model; NAME.out beside it holds what
//! `ptl run` renders on stderr. Every case gets the shipped character tokenizer in `tok/`, `text.jsonl`,
//! `chat.jsonl` and `long.jsonl`; a case with `model.edit` (`drop NAME` or `add NAME`) also gets `m/`, the
//! Llama fixture with that tensor removed or added. Memory figures are replaced by `N` (they depend on
//! the machine). `UPDATE_GOLDEN=1 cargo test --test run_diagnostics` rewrites the .out files.

mod common;

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn cases() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir("tests/run_diagnostics")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("p.ptl").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The Llama fixture in `dir/m` with a byte tokenizer, one tensor dropped or added.
fn edited_model(dir: &Path, edit: &str) {
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    let fixture = Path::new("tests/fixtures/models/llama");
    std::fs::copy(fixture.join("config.json"), m.join("config.json")).unwrap();
    common::byte_tokenizer(&m);
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture.join("model.safetensors"), &Device::Cpu).unwrap();
    match edit.trim().split_once(' ') {
        Some(("drop", name)) => {
            assert!(tensors.remove(name).is_some(), "no tensor {name}");
        }
        Some(("add", name)) => {
            let t = Tensor::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap();
            tensors.insert(name.to_string(), t);
        }
        _ => panic!("model.edit: `drop NAME` or `add NAME`, not {edit:?}"),
    }
    candle_core::safetensors::save(&tensors, m.join("model.safetensors")).unwrap();
}

/// The case's folder, made ready to run in a temporary place.
fn prepare(name: &str, case: &Path) -> common::Dir {
    let dir = std::env::temp_dir().join(format!("ptl-rundiag-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(case, &dir);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tokenizers/tiny-chat"),
        &dir.join("tok"),
    );
    std::fs::write(
        dir.join("text.jsonl"),
        "{\"text\": \"1+1=2 2+2=4 3+3=6\"}\n{\"text\": \"4+4=8 5+5=10\"}\n",
    )
    .unwrap();
    let chat: String = (0..4)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"messages": [{"role": "user", "content": format!("{i}+{i}=")}, {"role": "assistant", "content": format!("{}", i + i)}]})
            )
        })
        .collect();
    std::fs::write(dir.join("chat.jsonl"), chat).unwrap();
    let long = format!("{}\n", serde_json::json!({"text": "12+34=46 ".repeat(100)}));
    std::fs::write(dir.join("long.jsonl"), long).unwrap();
    if let Ok(edit) = std::fs::read_to_string(dir.join("model.edit")) {
        edited_model(&dir, &edit);
    }
    common::Dir(dir)
}

/// Machine-dependent figures and the temporary folder, made stable.
fn normalize(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.display().to_string(), "<dir>");
    let mut out = String::new();
    let mut rest = text.as_str();
    // `12345 MiB` → `N MiB`
    while let Some(i) = rest.find(" MiB") {
        let head = &rest[..i];
        let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        out.push_str(&head[..head.len() - digits]);
        out.push_str(if digits > 0 { "N" } else { "" });
        out.push_str(" MiB");
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    out
}

#[test]
fn run_time_diagnostics_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 5, "{all:?}");
    for (name, case) in all {
        let dir = prepare(&name, &case);
        let o = common::ptl(&dir.0, &["run", "p.ptl"]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", common::text(&o));
        let got = normalize(&String::from_utf8_lossy(&o.stderr), &dir.0);
        let golden = case.with_extension("out");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("--- {name}: expected\n{want}\n--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_skipped_non_finite_step_is_counted_and_the_stage_goes_on() {
    let case = Path::new("tests/run_diagnostics/non_finite");
    let dir = prepare("skip-nonfinite", case);
    let p = std::fs::read_to_string(dir.0.join("p.ptl"))
        .unwrap()
        .replace(
            "  save_every = 1\n",
            "  save_every = 1\n  skip_nonfinite = 10\n",
        );
    std::fs::write(dir.0.join("p.ptl"), p).unwrap();
    let out = common::run_ok(&dir.0, &[]);
    assert!(
        out.contains("cpt: step 2: the loss is NaN; step skipped (1 of at most 10)"),
        "{out}"
    );
    let path = common::ptl(&dir.0, &["path", "p.ptl", "cpt"]);
    let metrics = std::fs::read_to_string(
        dir.0
            .join(String::from_utf8_lossy(&path.stdout).trim())
            .join("metrics.jsonl"),
    )
    .unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 6);
    assert_eq!(last["skipped_nonfinite"], 5, "{metrics}");
}
