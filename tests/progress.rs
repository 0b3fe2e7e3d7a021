//! `ptl run`'s progress when stdout is not a terminal: no bars, a plain progress line at most every
//! tenth of a stage (and always at its last step), with the training loss and tokens/s or the model
//! being scored.

mod common;

use common::{ptl, setup, text};

use std::path::Path;
use std::process::Command;

const PIPELINE: &str = r#"let base = hf_model("m")

stage tuned = sft {
  model = base
  data = jsonl("train.jsonl", format = "messages")
  template = "chat.jinja"
  tuning = lora(rank = 4)
  lr = 1e-2
  epochs = 2
  batch_size = 1
  max_len = 32
}

stage cpt = pt {
  model = tuned.model
  data = jsonl("text.jsonl", format = "text")
  max_steps = 3
  batch_size = 1
}

stage score = eval {
  models = [base, cpt.model]
  data = jsonl("text.jsonl", format = "text")
  metrics = ["loss"]
}
"#;

/// The plain progress lines of `stage`: `(step, total, note)`.
fn progress_lines(out: &str, stage: &str) -> Vec<(u64, u64, String)> {
    let prefix = format!("         {stage}: step ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (counts, note) = rest.split_once(' ').unwrap_or((rest, ""));
            let (step, total) = counts.split_once('/').expect("step N/M");
            (
                step.parse().unwrap(),
                total.parse().unwrap(),
                note.to_string(),
            )
        })
        .collect()
}

#[test]
fn piped_run_prints_sparse_plain_progress_lines() {
    let d = setup("plain", PIPELINE);
    let o = ptl(&d.0, &["run", "p.ptl"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // No terminal, no bars: no carriage returns or cursor movement.
    assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
    assert!(
        out.ends_with("0 cached, 3 ran, 0 failed, 0 blocked\n"),
        "{out}"
    );

    // 12 rows, one a step, 2 epochs: 24 steps, a line about every tenth.
    let tuned = progress_lines(&out, "tuned");
    assert!((2..=11).contains(&tuned.len()), "{out}");
    assert_eq!(tuned.last().map(|l| (l.0, l.1)), Some((24, 24)), "{out}");
    for w in tuned.windows(2) {
        assert!(w[0].0 < w[1].0, "steps go up: {out}");
    }
    for (_, total, note) in &tuned {
        assert_eq!(*total, 24);
        let (loss, rate) = note
            .strip_prefix("loss ")
            .and_then(|n| n.split_once(" · "))
            .unwrap_or_else(|| panic!("a training note: {note:?}"));
        assert!(loss.parse::<f64>().unwrap().is_finite(), "{note}");
        assert!(rate.ends_with(" tok/s"), "{note}");
    }

    // 3 steps: every one is a tenth or more.
    let cpt = progress_lines(&out, "cpt");
    let steps: Vec<(u64, u64)> = cpt.iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(steps, [(1, 3), (2, 3), (3, 3)], "{out}");

    // eval: one step a model, the note names it.
    let score = progress_lines(&out, "score");
    let steps: Vec<(u64, u64, &str)> = score.iter().map(|l| (l.0, l.1, l.2.as_str())).collect();
    assert_eq!(steps.len(), 2, "{out}");
    assert_eq!((steps[1].0, steps[1].1), (2, 2), "{out}");
    assert!(steps[1].2.contains("cpt"), "{out}");

    // The progress lines come between the stage's start and its end.
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in {out}"))
    };
    assert!(at("running  tuned") < at("         tuned: step 24/24"));
    assert!(at("         tuned: step 24/24") < at("ran      tuned in"));

    // A cached run shows no progress.
    let o = ptl(&d.0, &["run", "p.ptl"]);
    let again = String::from_utf8_lossy(&o.stdout);
    assert!(!again.contains(": step "), "{again}");
    assert!(Path::new(&d.0).join("p.ptl.lock").is_file());
}

/// On a terminal the progress is bars, not lines (run under `script` from util-linux, part of every
/// Debian system, which gives the command a pseudo-terminal; its absence fails the test). Whether a bar
/// gets drawn depends on timing, so only what does not is checked: no plain progress lines, every
/// event line, the summary last.
#[cfg(target_os = "linux")]
#[test]
fn terminal_run_shows_bars_instead_of_lines() {
    let d = setup("tty", PIPELINE);
    let cmd = format!("{} run p.ptl", env!("CARGO_BIN_EXE_ptl"));
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(&d.0)
        .env_remove("PTL_STORE")
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("`script` (util-linux) runs ptl on a pseudo-terminal");
    let out = String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n");
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains(": step "), "{out:?}");
    for line in [
        "running  tuned",
        "ran      tuned in",
        "ran      cpt in",
        "ran      score in",
    ] {
        assert!(out.contains(line), "{line:?} in {out:?}");
    }
    assert!(
        out.trim_end()
            .ends_with("0 cached, 3 ran, 0 failed, 0 blocked"),
        "{out:?}"
    );
}
