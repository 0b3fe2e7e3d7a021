//! `ptl watch --format json` end to end: start it on a temporary pipeline of test stages, edit files,
//! and read what happened from its event stream.

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Watch {
    dir: PathBuf,
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Watch {
    fn start(name: &str, pipeline: &str) -> Watch {
        let dir = std::env::temp_dir().join(format!("ptl-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("d.jsonl"), "{\"text\": \"a\"}\n").unwrap();
        std::fs::write(dir.join("p.ptl"), pipeline).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ptl"))
            .args(["watch", "p.ptl", "--format", "json", "--grace", "3000"])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Watch { dir, child, events }
    }

    /// Events up to and including the first that matches.
    fn until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    let done = pred(&e);
                    seen.push(e);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
            }
        }
    }

    fn idle(&self) -> Vec<Value> {
        self.until("idle", |e| e["event"] == "idle")
    }

    fn edit(&self, from: &str, to: &str) {
        let path = self.dir.join("p.ptl");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from} not in the pipeline");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    fn ran(&self) -> Vec<String> {
        common::ran(&self.dir)
    }

    fn ptl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ptl"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

fn started(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "stage_started")
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect()
}

const CHAIN: &str = r#"let d = jsonl("d.jsonl", format = "text")

stage a = test_step {
  data = d
  text = "first"
  log = "ran.log"
}

stage b = test_step {
  model = a.model
  text = "second"
  log = "ran.log"
}

stage c = test_step {
  model = a.model
  log = "ran.log"
}

stage e = test_step {
  model = b.model
  log = "ran.log"
}
"#;

#[test]
fn only_the_affected_stages_rerun() {
    let w = Watch::start("affected", CHAIN);
    let first = w.idle();
    assert_eq!(count(&first, "plan"), 1);
    assert_eq!(w.ran(), ["a", "b", "c", "e"]);
    w.edit("text = \"second\"", "text = \"changed\"");
    let events = w.idle();
    assert_eq!(count(&events, "change"), 1);
    let plan = events.iter().find(|e| e["event"] == "plan").unwrap();
    let b = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "b")
        .unwrap();
    assert_eq!(
        b["reasons"][0],
        "param text changed \"second\" → \"changed\""
    );
    assert_eq!(w.ran(), ["b", "e"]);
    // A data edit reruns the stage that reads it and its downstream.
    std::fs::write(w.dir.join("d.jsonl"), "{\"text\": \"new\"}\n").unwrap();
    w.idle();
    assert_eq!(w.ran(), ["a", "b", "c", "e"]);
    // Files the run writes (store, lock file, the log) never trigger a run.
    let quiet = w.events.recv_timeout(Duration::from_millis(400));
    assert!(quiet.is_err(), "no event without an edit: {quiet:?}");
}

#[test]
fn a_burst_of_saves_gives_one_replan() {
    let w = Watch::start("burst", CHAIN);
    w.idle();
    w.ran();
    for i in 0..5 {
        w.edit(
            &format!(
                "text = \"{}\"",
                if i == 0 {
                    "first".to_string()
                } else {
                    format!("v{}", i - 1)
                }
            ),
            &format!("text = \"v{i}\""),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let events = w.idle();
    assert_eq!(count(&events, "plan"), 1, "{events:#?}");
    assert_eq!(w.ran(), ["a", "b", "c", "e"]);
}

#[test]
fn an_invalid_edit_shows_diagnostics_and_a_fix_resumes() {
    let w = Watch::start("invalid", CHAIN);
    w.idle();
    w.ran();
    w.edit("text = \"second\"", "text = \"second\"\n  bta = 1");
    let events = w.until("diagnostics", |e| e["event"] == "diagnostics");
    let diag = &events.last().unwrap()["diagnostics"][0];
    assert_eq!(diag["code"], "ptl::unknown_field");
    assert_eq!(diag["line"], 12);
    let quiet = w.events.recv_timeout(Duration::from_millis(400));
    assert!(
        quiet.is_err(),
        "nothing runs while the pipeline is invalid: {quiet:?}"
    );
    w.edit("\n  bta = 1", "\n  fail = false");
    let events = w.idle();
    assert_eq!(count(&events, "plan"), 1);
    assert!(
        w.ran().is_empty(),
        "`fail = false` is the default: the key is unchanged"
    );
    w.edit("text = \"second\"", "text = \"third\"");
    w.idle();
    assert_eq!(w.ran(), ["b", "e"]);
}

const SLOW: &str = r#"stage a = test_step {
  text = "one"
  sleep_ms = 4000
  steps = 400
  log = "ran.log"
}

stage b = test_step {
  model = a.model
  log = "ran.log"
}
"#;

#[test]
fn a_stale_running_stage_is_cancelled_and_restarted() {
    let w = Watch::start("cancel", SLOW);
    w.until("a starts", |e| {
        e["event"] == "stage_started" && e["stage"] == "a"
    });
    w.edit("text = \"one\"", "text = \"two\"");
    let events = w.idle();
    let cancelled: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "stage_cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "{events:#?}");
    assert_eq!(
        (&cancelled[0]["stage"], &cancelled[0]["forced"]),
        (&Value::from("a"), &Value::from(false))
    );
    assert_eq!(
        started(&events),
        ["a", "b"],
        "a restarts with the new text: {events:#?}"
    );
    assert_eq!(
        w.ran(),
        ["a", "b"],
        "the cancelled run of a logs nothing: it stops before its end"
    );
    let o = w.ptl(&["store", "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        std::fs::read_dir(w.dir.join(".ptl/entries"))
            .unwrap()
            .count(),
        2,
        "only the finished a and b"
    );
    assert_eq!(
        std::fs::read_dir(w.dir.join(".ptl/tmp")).unwrap().count(),
        0,
        "no partial entry"
    );
}

#[test]
fn a_running_stage_whose_key_did_not_change_is_left_alone() {
    let pipeline =
        SLOW.to_string() + "\nstage other = test_step {\n  text = \"x\"\n  log = \"ran.log\"\n}\n";
    let w = Watch::start("keep", &pipeline);
    w.until("a starts", |e| {
        e["event"] == "stage_started" && e["stage"] == "a"
    });
    w.edit("text = \"x\"", "text = \"y\"");
    let events = w.idle();
    assert_eq!(count(&events, "stage_cancelled"), 0, "{events:#?}");
    // `other` is independent of a → b, so it may finish anywhere among them; each ran once.
    let mut ran = w.ran();
    ran.sort();
    ran.dedup();
    assert_eq!(ran, ["a", "b", "other"], "{events:#?}");
}

#[test]
fn ctrl_c_stops_cleanly_and_commits_nothing_partial() {
    let mut w = Watch::start("interrupt", SLOW);
    w.until("a starts", |e| {
        e["event"] == "stage_started" && e["stage"] == "a"
    });
    let pid = w.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let events = w.until("stopped", |e| e["event"] == "stopped");
    let status = w.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(w.ptl(&["store", "verify"]).status.success());
    let entries: Vec<_> = std::fs::read_dir(w.dir.join(".ptl/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 0, "{entries:?} {events:#?}");
    assert_eq!(
        std::fs::read_dir(w.dir.join(".ptl/tmp")).unwrap().count(),
        0
    );
}
