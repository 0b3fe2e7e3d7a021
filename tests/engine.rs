//! The engine end to end through the `ptl` binary (test builds carry the `test_step` kind): plans and
//! their reasons, caching and early cutoff, failures, --locked, --only/--from, gc, crash safety under
//! kill -9, and two runs sharing one store.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Work {
    dir: PathBuf,
}

impl Work {
    fn new(name: &str, pipeline: &str) -> Work {
        let dir = std::env::temp_dir().join(format!("ptl-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("models/base")).unwrap();
        std::fs::write(
            dir.join("models/base/config.json"),
            "{\"hidden_size\": 8}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("d.jsonl"),
            "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
        )
        .unwrap();
        std::fs::write(dir.join("p.ptl"), pipeline).unwrap();
        Work { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ptl"));
        c.args(args)
            .current_dir(&self.dir)
            .env_remove("PTL_STORE")
            .env_remove("PTL_FAULT");
        c
    }

    fn ptl(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("ptl runs")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn plan_json(w: &Work, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan", "p.ptl", "--format", "json"];
    args.extend(extra);
    let o = w.ptl(&args);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    serde_json::from_str(&out(&o)).unwrap()
}

fn statuses(plan: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let reasons = s["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                reasons,
            )
        })
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
  data = d
  log = "ran.log"
}
"#;

fn ran(w: &Work) -> Vec<String> {
    common::ran(&w.dir)
}

#[test]
fn plans_explain_every_rerun_and_noop_runs_are_cached() {
    let w = Work::new("plan", CHAIN);
    let s = statuses(&plan_json(&w, &[]));
    assert_eq!(s[0], ("a".into(), "run".into(), vec!["new".into()]));
    assert_eq!(
        s[1],
        (
            "b".into(),
            "run".into(),
            vec!["upstream a will rerun".into()]
        )
    );
    let o = w.ptl(&["run", "p.ptl", "-j", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(
        out(&o).ends_with("0 cached, 4 ran, 0 failed, 0 blocked\n"),
        "{}",
        out(&o)
    );
    assert_eq!(ran(&w), ["a", "b", "c", "e"]);
    assert!(statuses(&plan_json(&w, &[]))
        .iter()
        .all(|(_, st, _)| st == "cached"));
    let o = w.ptl(&["run", "p.ptl"]);
    assert!(out(&o).ends_with("4 cached, 0 ran, 0 failed, 0 blocked\n"));
    assert!(ran(&w).is_empty(), "a no-op run runs nothing");

    // A parameter change reruns the stage and what depends on it, never its upstream.
    let s = statuses(&plan_json(&w, &["--set", "b.text=changed"]));
    assert_eq!(s[0].1, "cached");
    assert_eq!(
        s[1],
        (
            "b".into(),
            "run".into(),
            vec!["param text changed \"second\" → \"changed\"".into()]
        )
    );
    assert_eq!(s[2].1, "cached");
    assert_eq!(
        s[3],
        (
            "e".into(),
            "run".into(),
            vec!["upstream b will rerun".into()]
        )
    );
    let o = w.ptl(&["run", "p.ptl", "--set", "b.text=changed"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(ran(&w), ["b", "e"]);

    // An input edit is named as such.
    std::fs::write(w.path("d.jsonl"), "{\"text\": \"a\"}\n{\"text\": \"c\"}\n").unwrap();
    let s = statuses(&plan_json(&w, &["--set", "b.text=changed"]));
    assert_eq!(
        s[0],
        (
            "a".into(),
            "run".into(),
            vec!["input d.jsonl changed".into()]
        )
    );
}

#[test]
fn an_upstream_rerun_with_identical_outputs_leaves_downstream_cached() {
    let w = Work::new("cutoff", CHAIN);
    assert_eq!(w.ptl(&["run", "p.ptl"]).status.code(), Some(0));
    ran(&w);
    // sleep_ms changes a's key but not the bytes it writes: b, c and e stay cached.
    let o = w.ptl(&["run", "p.ptl", "--set", "a.sleep_ms=1"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(ran(&w), ["a"]);
    assert!(out(&o).contains("cached   e"), "{}", out(&o));
}

#[test]
fn a_failed_stage_stops_its_downstream_and_keeps_finished_work() {
    let w = Work::new("fail", CHAIN);
    let o = w.ptl(&["run", "p.ptl", "--set", "b.fail=true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("ptl::stage_failed")
            && err(&o).contains("stage `b` failed: failed on purpose"),
        "{}",
        err(&o)
    );
    assert!(
        err(&o).contains("╰── this stage") && err(&o).contains("help: fix the cause and run again"),
        "a diagnostic pointing at the stage, with a help line: {}",
        err(&o)
    );
    assert!(
        out(&o).contains("blocked  e: upstream b did not finish"),
        "{}",
        out(&o)
    );
    let first = ran(&w);
    assert!(first.contains(&"a".to_string()) && first.contains(&"b".to_string()));
    // --keep-going finishes the independent stage c as well.
    let o = w.ptl(&["run", "p.ptl", "--set", "b.fail=true", "--keep-going"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("cached   a"),
        "finished stages stay cached: {}",
        out(&o)
    );
    assert!(out(&o).contains("ran      c"), "{}", out(&o));
    ran(&w);
    let o = w.ptl(&["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(ran(&w), ["b", "e"]);
}

#[test]
fn locked_runs_refuse_to_change_the_lock_file() {
    let w = Work::new("locked", CHAIN);
    let o = w.ptl(&["run", "p.ptl", "--locked"]);
    assert_eq!(o.status.code(), Some(1), "nothing is locked yet");
    assert!(err(&o).contains("a: not in the lock file"), "{}", err(&o));
    assert_eq!(w.ptl(&["run", "p.ptl"]).status.code(), Some(0));
    let lock = std::fs::read_to_string(w.path("p.ptl.lock")).unwrap();
    assert_eq!(w.ptl(&["run", "p.ptl", "--locked"]).status.code(), Some(0));
    let o = w.ptl(&["run", "p.ptl", "--locked", "--set", "c.text=new"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("c: would change (param text changed \"\" → \"new\")"),
        "{}",
        err(&o)
    );
    assert_eq!(std::fs::read_to_string(w.path("p.ptl.lock")).unwrap(), lock);
    // A fresh store (a new clone) rebuilds under --locked and must reproduce the locked outputs.
    std::fs::remove_dir_all(w.path(".ptl")).unwrap();
    let o = w.ptl(&["run", "p.ptl", "--locked"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert_eq!(std::fs::read_to_string(w.path("p.ptl.lock")).unwrap(), lock);
}

#[test]
fn only_and_from_select_stages() {
    let w = Work::new("select", CHAIN);
    let o = w.ptl(&["run", "p.ptl", "--only", "b"]);
    assert_eq!(o.status.code(), Some(1), "b's upstream is not built");
    assert!(
        out(&o).contains("skipped  a: not built, and not selected"),
        "{}",
        out(&o)
    );
    assert!(
        out(&o).contains("blocked  b: upstream a is not built"),
        "{}",
        out(&o)
    );
    let o = w.ptl(&["run", "p.ptl", "--only", "a"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).ends_with("0 cached, 1 ran, 0 failed, 0 blocked, 3 not selected\n"),
        "{}",
        out(&o)
    );
    assert_eq!(ran(&w), ["a"]);
    let o = w.ptl(&["run", "p.ptl", "--from", "b"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("skipped  c"),
        "c is neither selected nor built: {}",
        out(&o)
    );
    assert_eq!(ran(&w), ["b", "e"]);
}

#[test]
fn outputs_are_reachable_by_name_and_graphs_show_statuses() {
    let w = Work::new("path", CHAIN);
    assert_eq!(w.ptl(&["path", "p.ptl", "b"]).status.code(), Some(1));
    assert_eq!(w.ptl(&["run", "p.ptl"]).status.code(), Some(0));
    let o = w.ptl(&["path", "p.ptl", "b"]);
    let link = w.path(out(&o).trim());
    assert!(
        link.join("model/weights.txt").is_file(),
        "{}",
        link.display()
    );
    let dot = out(&w.ptl(&["graph", "p.ptl"]));
    assert!(
        dot.contains("\"a\" -> \"b\";") && dot.contains("cached"),
        "{dot}"
    );
    let mermaid = out(&w.ptl(&["graph", "p.ptl", "--format", "mermaid", "--set", "e.text=x"]));
    assert!(
        mermaid.contains("s1 --> s3") && mermaid.contains("e<br/>test_step · run"),
        "{mermaid}"
    );
}

#[test]
fn gc_removes_only_unreferenced_entries() {
    let w = Work::new("gc", CHAIN);
    assert_eq!(w.ptl(&["run", "p.ptl"]).status.code(), Some(0));
    assert_eq!(
        w.ptl(&["run", "p.ptl", "--set", "c.text=v2"]).status.code(),
        Some(0)
    );
    let entries = || std::fs::read_dir(w.path(".ptl/entries")).unwrap().count();
    assert_eq!(entries(), 5);
    let o = w.ptl(&["gc", "--dry-run"]);
    assert!(out(&o).contains("would remove 1 entry"), "{}", out(&o));
    assert_eq!(entries(), 5);
    let o = w.ptl(&["gc"]);
    assert!(
        out(&o).contains("removed 1 entry") && out(&o).contains("kept 4 entries"),
        "{}",
        out(&o)
    );
    assert_eq!(entries(), 4);
    assert!(statuses(&plan_json(&w, &["--set", "c.text=v2"]))
        .iter()
        .all(|(_, s, _)| s == "cached"));
    assert_eq!(w.ptl(&["store", "verify"]).status.code(), Some(0));
}

#[test]
fn verify_finds_tampered_entries() {
    let w = Work::new("verify", CHAIN);
    assert_eq!(w.ptl(&["run", "p.ptl"]).status.code(), Some(0));
    let link = w.path(out(&w.ptl(&["path", "p.ptl", "a"])).trim());
    std::fs::write(link.join("model/weights.txt"), "tampered").unwrap();
    let o = w.ptl(&["store", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("model/weights.txt does not match its hash"),
        "{}",
        out(&o)
    );
}

#[test]
fn store_problems_are_clear_errors() {
    let w = Work::new("faults", CHAIN);
    // A full disk while committing: the stage fails, nothing half-written remains.
    let o = w
        .cmd(&["run", "p.ptl"])
        .env("PTL_FAULT", "commit")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("stage `a` failed: cannot commit the outputs: no space left on device"),
        "{}",
        err(&o)
    );
    assert_eq!(
        std::fs::read_dir(w.path(".ptl/entries")).unwrap().count(),
        0
    );
    assert_eq!(std::fs::read_dir(w.path(".ptl/tmp")).unwrap().count(), 0);
    assert_eq!(w.ptl(&["store", "verify"]).status.code(), Some(0));
    assert_eq!(
        w.ptl(&["run", "p.ptl"]).status.code(),
        Some(0),
        "the next run finishes the job"
    );
    // A store path that is not a folder.
    std::fs::write(w.path("not-a-dir"), "x").unwrap();
    let o = w.ptl(&["run", "p.ptl", "--store", "not-a-dir"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("error: cannot use the store not-a-dir"),
        "{}",
        err(&o)
    );
    // A missing input file is a check error pointing at the source.
    std::fs::remove_file(w.path("d.jsonl")).unwrap();
    let o = w.ptl(&["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("ptl::path_not_found"), "{}", err(&o));
}

#[test]
fn malformed_dataset_rows_are_reported_with_file_and_line() {
    let w = Work::new("rows", CHAIN);
    std::fs::write(
        w.path("d.jsonl"),
        "{\"text\": \"a\"}\nnot json\n{\"other\": 1}\n",
    )
    .unwrap();
    let o = w.ptl(&["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("d.jsonl:2:2: not JSON: expected ident\n"), "{e}");
    assert!(e.contains("`skip_malformed = true`"), "{e}");
    assert!(e.contains("d.jsonl:3: a text row needs text"), "{e}");
}

#[test]
fn kinds_without_execution_are_planned_and_reported_as_not_runnable_yet() {
    // test_unbuilt has a schema but no execution (every user kind runs now); its model comes from
    // a stage that runs.
    let w = Work::new("real", "let base = hf_model(\"models/base\")\nlet prefs = jsonl(\"p.jsonl\", format = \"preference\")\n\nstage rm = reward_model {\n  model = base\n  data = prefs\n}\n\nstage align = test_unbuilt {\n  model = base\n}\n\nstage after = test_step {\n  model = align.model\n}\n");
    std::fs::write(
        w.path("p.jsonl"),
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n",
    )
    .unwrap();
    let s = statuses(&plan_json(&w, &[]));
    let get = |name: &str| s.iter().find(|x| x.0 == name).unwrap().clone();
    assert_eq!(get("rm").1, "run");
    assert_eq!(get("align").1, "blocked");
    assert!(
        get("align").2[0].contains("stage kind test_unbuilt cannot run yet"),
        "{:?}",
        get("align")
    );
    assert_eq!(
        get("after"),
        (
            "after".into(),
            "blocked".into(),
            vec!["upstream align is blocked".into()]
        )
    );
}

const SLOW: &str = r#"let d = jsonl("big.jsonl", format = "text")

stage a = test_step {
  data = d
  sleep_ms = 120
  log = "ran.log"
}

stage b = test_step {
  model = a.model
  sleep_ms = 120
  log = "ran.log"
}

stage c = test_step {
  model = b.model
  sleep_ms = 120
  log = "ran.log"
}
"#;

fn big_input(w: &Work) {
    let row = format!("{{\"text\": \"{}\"}}\n", "x".repeat(1000));
    std::fs::write(w.path("big.jsonl"), row.repeat(4000)).unwrap();
}

#[test]
fn kill_9_at_random_moments_never_corrupts_the_store() {
    let w = Work::new("kill", SLOW);
    big_input(&w);
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for trial in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = seed % 450;
        let text = format!("a.text=trial{trial}");
        let mut child = w
            .cmd(&["run", "p.ptl", "--set", &text])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let o = w.ptl(&["store", "verify"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "trial {trial} (kill after {delay} ms): {}",
            out(&o)
        );
        let o = w.ptl(&["run", "p.ptl", "--set", &text]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "trial {trial}: rerun: {}{}",
            out(&o),
            err(&o)
        );
        let plan = plan_json(&w, &["--set", &text]);
        assert!(
            statuses(&plan).iter().all(|(_, s, _)| s == "cached"),
            "trial {trial}"
        );
    }
    assert_eq!(w.ptl(&["store", "verify"]).status.code(), Some(0));
}

#[test]
fn two_runs_on_one_store_compute_each_stage_once() {
    let w = Work::new("concurrent", SLOW);
    big_input(&w);
    let spawn = || {
        w.cmd(&["run", "p.ptl"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let (o1, o2) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert_eq!(o1.status.code(), Some(0), "{}", err(&o1));
    assert_eq!(o2.status.code(), Some(0), "{}", err(&o2));
    assert_eq!(ran(&w), ["a", "b", "c"], "each stage ran exactly once");
    assert_eq!(w.ptl(&["store", "verify"]).status.code(), Some(0));
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("p.ptl.lock")).unwrap()).unwrap();
    assert_eq!(lock["stages"].as_object().unwrap().len(), 3);
}

#[test]
fn a_new_implementation_version_is_named_as_the_reason() {
    let w = Work::new("version", CHAIN);
    let checked = ptl::lang::check::check_file(&w.path("p.ptl"), &[]);
    let p = checked.pipeline.expect("checks");
    let store = ptl::store::Store::open(&w.path(".ptl")).unwrap();
    let mut cache = ptl::store::hash::HashCache::load(&store.root);
    let compute = ptl::plan::compute::Compute::cpu();
    let key = ptl::plan::key::stage_key(&p, 0, &compute, &mut cache, &|_, _| None)
        .ok()
        .expect("a has no upstream");
    let locked = ptl::plan::lockfile::LockedStage {
        kind: "test_step".into(),
        kind_version: 0,
        key: "old".into(),
        params: p.params_json(0),
        inputs: key.inputs.clone(),
        outputs: Default::default(),
    };
    assert_eq!(
        ptl::plan::reasons(&p, 0, &key, Some(&locked), false),
        ["implementation of test_step changed"]
    );
}
