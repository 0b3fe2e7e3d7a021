//! `ptl run --format json`: the event stream of real runs (train, then all cached, then a failure),
//! compared with golden files under tests/run_events/ after speeds, times and loss digits are replaced
//! (they depend on the machine). `UPDATE_GOLDEN=1 cargo test --test run_events` rewrites them.

mod common;

use serde_json::Value;
use std::path::Path;

const PIPELINE: &str = r#"stage base = init {
  tokenizer = "tok"
  hidden_size = 32
}

stage cpt = pt {
  model = base.model
  data = jsonl("text.jsonl", format = "text")
  max_steps = 2
  batch_size = 1
}

stage score = eval {
  models = [cpt.model]
  data = jsonl("text.jsonl", format = "text")
  metrics = ["loss"]
}
"#;

/// Digits → `#`.
fn hide_digits(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// The stream with what varies between machines made stable: `seconds` → 0, a training note's speed
/// → `<speed>`, digits of losses → `#` (the last digit may differ between CPU kinds).
fn normalized(stdout: &[u8]) -> String {
    let mut out = String::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        let mut v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v.get("seconds").is_some() {
            v["seconds"] = 0.into();
        }
        if let Some(note) = v.get("note").and_then(Value::as_str) {
            let note = match note.split_once(" · ") {
                Some((loss, _speed)) => format!("{} · <speed>", hide_digits(loss)),
                None => note.to_string(),
            };
            v["note"] = note.into();
        }
        if let Some(text) = v.get("line").and_then(Value::as_str) {
            if text.contains("loss ") {
                v["line"] = hide_digits(text).into();
            }
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

fn check(name: &str, got: &str) {
    let golden = Path::new("tests/run_events").join(format!("{name}.jsonl"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        got,
        want,
        "{name}: the stream differs from {}",
        golden.display()
    );
}

#[test]
fn run_format_json_streams_the_events_of_watch() {
    let dir = std::env::temp_dir().join(format!("ptl-run-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tok")).unwrap();
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tokenizers/tiny-chat");
    for f in std::fs::read_dir(&tok).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join("tok").join(f.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("text.jsonl"),
        "{\"text\": \"1+1=2 2+2=4\"}\n{\"text\": \"3+3=6\"}\n",
    )
    .unwrap();
    std::fs::write(dir.join("p.ptl"), PIPELINE).unwrap();
    let d = common::Dir(dir);
    let run = || common::ptl(&d.0, &["run", "p.ptl", "--format", "json"]);

    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    check("first_run", &normalized(&o.stdout));

    let o = run();
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    check("cached_run", &normalized(&o.stdout));

    // A stage that fails: its event carries the code and field, then the diagnostics follow.
    let failing = PIPELINE.replace(
        "  batch_size = 1\n",
        "  batch_size = 1\n  lr = 1e9\n  max_grad_norm = 0\n",
    );
    std::fs::write(d.0.join("p.ptl"), failing).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    check("failed_run", &normalized(&o.stdout));
}
