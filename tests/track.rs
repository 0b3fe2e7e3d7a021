//! Tracking: TensorBoard event files read back by an independent parser, MLflow runs checked on a
//! real server through its REST API, and failing sinks that warn once and never stop training.

mod common;
#[path = "common/tfrecord.rs"]
mod tfrecord;

use common::mlflow::free_port;
use ptl::track::{self, Settings, Status, Tracking};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ptl-track-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A warning callback that keeps what it is given.
fn warnings() -> (track::Warn, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        Arc::new(move |w: &str| s.lock().unwrap().push(w.to_string())),
        seen,
    )
}

/// The event files in `dir`, oldest first.
fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    files
}

/// The `(step, tag, value)` scalars of an event file, after checking its first record.
fn scalars(file: &Path) -> Vec<(i64, String, f32)> {
    let events = tfrecord::read(file).unwrap();
    let first = events.first().expect("an empty event file");
    assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
    assert!(first.scalars.is_empty());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for e in &events {
        assert!(
            (now - e.wall_time).abs() < 600.0,
            "wall time {}",
            e.wall_time
        );
    }
    events[1..]
        .iter()
        .flat_map(|e| e.scalars.iter().map(|(t, v)| (e.step, t.clone(), *v)))
        .collect()
}

/// The values a stage logs: five train tags at steps 1..=3, and an eval metric at step 3.
fn log_steps(st: &mut track::StageTracker) -> Vec<(i64, String, f32)> {
    let mut expected = Vec::new();
    for step in 1..=3u64 {
        let s = step as f64;
        let values = [
            (track::LOSS, 2.5 / s),
            (track::LR, 1e-4 * s),
            (track::GRAD_NORM, 0.75 + s),
            (track::TOKENS_PER_S, 1000.0 * s),
            (track::EPOCH, s / 3.0),
        ];
        st.log(step, &values);
        expected.extend(
            values
                .iter()
                .map(|(t, v)| (step as i64, t.to_string(), *v as f32)),
        );
    }
    let acc = track::eval_tag("accuracy");
    st.log(3, &[(&acc, 0.625)]);
    expected.push((3, "eval/accuracy".into(), 0.625));
    expected
}

#[test]
fn trackers_can_move_to_stage_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Tracking>();
    send::<track::StageTracker>();
}

#[test]
fn the_crc_is_castagnoli() {
    // The standard check value of CRC-32C.
    assert_eq!(tfrecord::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn tensorboard_files_read_back_with_an_independent_parser() {
    let dir = tmp("tb");
    let (warn, seen) = warnings();
    let s = Settings {
        tensorboard: Some(dir.clone()),
        ..Settings::default()
    };
    let t = Tracking::start(&s, "chat", warn);
    assert!(t.is_on());
    let mut sft = t.stage("sft", "sft", "k1", &json!({ "lr": 2e-4 }));
    let expected = log_steps(&mut sft);
    let mut dpo = t.stage("v1/dpo", "dpo", "k2", &json!({}));
    dpo.log(7, &[(track::LOSS, 0.5)]);
    sft.finish(Status::Finished);
    dpo.finish(Status::Finished);
    // The same stage again at once (a rerun): a second file, the first one intact.
    let mut again = t.stage("sft", "sft", "k1", &json!({}));
    again.log(1, &[(track::LOSS, 9.0)]);
    again.finish(Status::Failed);
    t.finish(true);

    let files = event_files(&dir.join("chat/sft"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(scalars(&files[0]), expected);
    assert_eq!(scalars(&files[1]), vec![(1, track::LOSS.to_string(), 9.0)]);
    // The reader checks what it reads: a flipped bit in the data fails its CRC.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let last = bytes.len() - 6;
    bytes[last] ^= 1;
    assert!(tfrecord::records(&bytes)
        .unwrap_err()
        .contains("bad data CRC"));
    // A `/` in a name does not make a directory level.
    let files = event_files(&dir.join("chat/v1_dpo"));
    assert_eq!(scalars(&files[0]), vec![(7, track::LOSS.to_string(), 0.5)]);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[test]
fn tensorboard_on_an_unusable_directory_warns_once() {
    let dir = tmp("tb-bad");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let (warn, seen) = warnings();
    let s = Settings {
        tensorboard: Some(file.join("runs")),
        ..Settings::default()
    };
    let t = Tracking::start(&s, "p", warn);
    for stage in ["a", "b"] {
        let mut st = t.stage(stage, "sft", "k", &json!({}));
        for step in 0..50 {
            st.log(step, &[(track::LOSS, 1.0)]);
        }
        st.finish(Status::Finished);
    }
    assert!(!t.is_on());
    t.finish(true);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("TensorBoard"), "{}", seen[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tracking_with_both_sinks_off_does_nothing() {
    let (warn, seen) = warnings();
    let t = Tracking::start(&Settings::default(), "p", warn);
    assert!(!t.is_on());
    let started = Instant::now();
    let mut st = t.stage("s", "sft", "k", &json!({ "a": [1, 2] }));
    for step in 0..100_000 {
        st.log(step, &[(track::LOSS, 1.0), (track::LR, 0.1)]);
    }
    st.finish(Status::Finished);
    t.finish(true);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(seen.lock().unwrap().is_empty());
}

// ---- MLflow ----

/// Calls MLflow's REST API (`POST` when there is a body) and returns the JSON answer.
fn api(uri: &str, path: &str, query: &[(&str, &str)], body: Option<Value>) -> Value {
    api_as(uri, None, path, query, body)
}

/// [`api`] as a user of a basic-auth server, over http or https (the test certificate is trusted).
fn api_as(
    uri: &str,
    user: Option<(&str, &str)>,
    path: &str,
    query: &[(&str, &str)],
    body: Option<Value>,
) -> Value {
    let url = format!("{uri}/api/2.0/mlflow/{path}");
    let agent = common::mlflow::agent();
    let auth = user.map(|(u, p)| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let resp = match body {
        Some(b) => {
            let mut r = agent.post(&url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(b.to_string())
        }
        None => {
            let mut r = query
                .iter()
                .fold(agent.get(&url), |r, (k, v)| r.query(*k, *v));
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// A run's tags or params as `key → value`.
fn pairs(run: &Value, field: &str) -> std::collections::BTreeMap<String, String> {
    run["data"][field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["key"].as_str().unwrap().to_string(),
                p["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `(step, value)` of a metric's history.
fn history(uri: &str, run_id: &str, key: &str) -> Vec<(i64, Value)> {
    let v = api(
        uri,
        "metrics/get-history",
        &[("run_id", run_id), ("metric_key", key)],
        None,
    );
    let mut h: Vec<(i64, Value)> = v["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["step"].as_i64().unwrap_or(0), m["value"].clone()))
        .collect();
    h.sort_by_key(|(s, _)| *s);
    h
}

#[test]
fn mlflow_runs_land_on_a_real_server() {
    let dir = tmp("mlflow");
    let uri = common::mlflow::shared();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let experiment = format!("ptl-test-{}-{nanos}", std::process::id());
    let (warn, seen) = warnings();
    let s = Settings {
        tensorboard: Some(dir.join("tb")),
        mlflow: Some(format!("{uri}/")),
        experiment: Some(experiment.clone()),
        ..Settings::default()
    };
    let t = Tracking::start(&s, "chat", warn);
    let params = json!({
        "lr": 2e-4,
        "epochs": 2,
        "tuning": { "kind": "lora", "rank": 16, "targets": ["q_proj", "v_proj"] },
        "system_prompt": "y".repeat(7000),
    });
    let mut sft = t.stage("sft", "sft", "sftkey123", &params);
    log_steps(&mut sft);
    sft.log(4, &[(track::LOSS, f64::NAN), ("eval/acc@1", 0.5)]);
    sft.finish(Status::Finished);
    let mut dpo = t.stage("dpo", "dpo", "dpokey456", &json!({ "beta": 0.1 }));
    dpo.log(1, &[(track::LOSS, 0.69)]);
    dpo.finish(Status::Killed);
    t.finish(true);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );

    let exp = api(
        uri,
        "experiments/get-by-name",
        &[("experiment_name", &experiment)],
        None,
    );
    let exp_id = exp["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let found = api(
        uri,
        "runs/search",
        &[],
        Some(json!({ "experiment_ids": [exp_id], "max_results": 100 })),
    );
    let runs = found["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "{found:#}");
    let named = |name: &str| {
        runs.iter()
            .find(|r| r["info"]["run_name"] == name)
            .unwrap_or_else(|| panic!("no run `{name}`: {found:#}"))
    };
    let (parent, sft, dpo) = (named("chat"), named("sft"), named("dpo"));
    let parent_id = parent["info"]["run_id"].as_str().unwrap();

    let tags = pairs(parent, "tags");
    assert_eq!(tags["ptl.pipeline"], "chat");
    assert_eq!(tags["ptl.version"], env!("CARGO_PKG_VERSION"));
    assert!(!tags.contains_key("mlflow.parentRunId"));
    assert_eq!(parent["info"]["status"], "FINISHED");

    let tags = pairs(sft, "tags");
    assert_eq!(tags["mlflow.parentRunId"], parent_id);
    assert_eq!(tags["ptl.stage_key"], "sftkey123");
    assert_eq!(tags["ptl.kind"], "sft");
    assert_eq!(tags["ptl.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(sft["info"]["status"], "FINISHED");
    let p = pairs(sft, "params");
    assert_eq!(p["lr"], "0.0002");
    assert_eq!(p["epochs"], "2");
    assert_eq!(p["tuning.kind"], "lora");
    assert_eq!(p["tuning.rank"], "16");
    assert_eq!(p["tuning.targets"], r#"["q_proj","v_proj"]"#);
    assert_eq!(p["system_prompt"], "y".repeat(6000));

    let sft_id = sft["info"]["run_id"].as_str().unwrap();
    let loss = history(uri, sft_id, track::LOSS);
    let steps: Vec<i64> = loss.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    assert_eq!(loss[0].1.as_f64(), Some(2.5));
    assert_eq!(loss[1].1.as_f64(), Some(1.25));
    assert_eq!(loss[3].1, "NaN");
    for (tag, at3) in [
        (track::LR, 3e-4),
        (track::GRAD_NORM, 3.75),
        (track::TOKENS_PER_S, 3000.0),
        (track::EPOCH, 1.0),
        ("eval/accuracy", 0.625),
    ] {
        let h = history(uri, sft_id, tag);
        let last = h.last().unwrap_or_else(|| panic!("no history of {tag}"));
        assert_eq!(last.0, 3, "{tag}");
        assert!(
            (last.1.as_f64().unwrap() - at3).abs() < 1e-12,
            "{tag}: {h:?}"
        );
    }
    // A character MLflow refuses in a key is replaced.
    assert_eq!(history(uri, sft_id, "eval/acc_1").len(), 1);

    assert_eq!(pairs(dpo, "tags")["mlflow.parentRunId"], parent_id);
    assert_eq!(pairs(dpo, "params")["beta"], "0.1");
    assert_eq!(dpo["info"]["status"], "KILLED");
    let dpo_id = dpo["info"]["run_id"].as_str().unwrap();
    assert_eq!(history(uri, dpo_id, track::LOSS).len(), 1);

    // TensorBoard was written beside it.
    let files = event_files(&dir.join("tb/chat/sft"));
    assert_eq!(scalars(&files[0]).len(), 16 + 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mlflow_server_down_warns_once_and_training_goes_on() {
    let dir = tmp("mlflow-down");
    let (warn, seen) = warnings();
    let s = Settings {
        tensorboard: Some(dir.clone()),
        mlflow: Some(format!("http://127.0.0.1:{}", free_port())),
        ..Settings::default()
    };
    let started = Instant::now();
    let t = Tracking::start(&s, "p", warn);
    for stage in ["a", "b"] {
        let mut st = t.stage(stage, "sft", "k", &json!({ "lr": 1 }));
        for step in 1..=200 {
            st.log(step, &[(track::LOSS, 1.0 / step as f64)]);
        }
        st.finish(Status::Finished);
    }
    t.finish(true);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("MLflow tracking: http://127.0.0.1:"),
        "{}",
        seen[0]
    );
    for stage in ["a", "b"] {
        let files = event_files(&dir.join("p").join(stage));
        assert_eq!(scalars(&files[0]).len(), 200);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fake MLflow server that accepts the setup calls and answers 500 to `log-batch`; it counts
/// the requests it gets per path.
fn failing_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &seen);
        }
    });
    (uri, paths)
}

fn answer(stream: TcpStream, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let route = path.split('?').next().unwrap_or("").to_string();
    seen.lock().unwrap().push(route.clone());
    let (status, body) = match route.rsplit('/').next().unwrap_or("") {
        "get-by-name" => (
            "200 OK",
            r#"{"experiment":{"experiment_id":"7","lifecycle_stage":"active"}}"#,
        ),
        "create" => ("200 OK", r#"{"run":{"info":{"run_id":"r1"}}}"#),
        "update" => ("200 OK", "{}"),
        _ => (
            "500 Internal Server Error",
            r#"{"error_code":"INTERNAL_ERROR","message":"boom"}"#,
        ),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

#[test]
fn mlflow_http_errors_warn_once_and_turn_the_sink_off() {
    let (uri, paths) = failing_server();
    let (warn, seen) = warnings();
    let s = Settings {
        mlflow: Some(uri),
        ..Settings::default()
    };
    let started = Instant::now();
    let t = Tracking::start(&s, "p", warn);
    for stage in ["a", "b", "c"] {
        let mut st = t.stage(stage, "sft", "k", &json!({}));
        for step in 1..=100 {
            st.log(step, &[(track::LOSS, 1.0)]);
        }
        st.finish(Status::Finished);
    }
    t.finish(false);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].contains("HTTP 500 INTERNAL_ERROR: boom"),
        "{}",
        seen[0]
    );
    let paths = paths.lock().unwrap();
    let batches = paths.iter().filter(|p| p.ends_with("/log-batch")).count();
    assert_eq!(batches, 1, "calls after the failure: {paths:?}");
}

#[test]
fn unusable_mlflow_uris_warn_once_without_a_connection() {
    for uri in [
        "ftp://mlflow.invalid",
        "file:./mlruns",
        "databricks",
        "http://",
    ] {
        let (warn, seen) = warnings();
        let s = Settings {
            mlflow: Some(uri.to_string()),
            ..Settings::default()
        };
        let t = Tracking::start(&s, "p", warn);
        assert!(!t.is_on(), "{uri}");
        let mut st = t.stage("s", "sft", "k", &json!({}));
        st.log(1, &[(track::LOSS, 1.0)]);
        st.finish(Status::Finished);
        t.finish(true);
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "{uri}: {:?}",
            seen.lock().unwrap()
        );
    }
    // An https server with a CA file that is not there: refused before any connection.
    let (warn, seen) = warnings();
    let s = Settings {
        mlflow: Some("https://mlflow.invalid".into()),
        access: track::Access {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..track::Access::default()
        },
        ..Settings::default()
    };
    let t = Tracking::start(&s, "p", warn);
    assert!(!t.is_on());
    t.finish(true);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() == 1 && seen[0].contains("cannot read the CA file /nonexistent/ca.pem"),
        "{seen:?}"
    );
    // An empty URI is off, not an error.
    let (warn, seen) = warnings();
    let s = Settings {
        mlflow: Some(" ".into()),
        ..Settings::default()
    };
    Tracking::start(&s, "p", warn).finish(true);
    assert!(seen.lock().unwrap().is_empty());
}

// ---- through `ptl run` ----

#[test]
fn ptl_run_tracks_every_stage_that_runs() {
    let dir = tmp("e2e");
    let uri = common::mlflow::shared();
    let experiment = experiment_name("e2e");
    tracked_pipeline(
        &dir,
        &format!(
            "track {{\n  tensorboard = \"tb\"\n  mlflow = \"{uri}\"\n  experiment = \"{experiment}\"\n}}\n"
        ),
        "  max_steps = 3\n",
    );
    let out = common::run_ok(&dir, &[]);
    assert!(!out.contains("warning"), "{out}");

    // TensorBoard: one event file per stage that trains, read back independently.
    let files = event_files(&dir.join("tb/p/tuned"));
    assert_eq!(files.len(), 1, "{files:?}");
    let loss: Vec<i64> = scalars(&files[0])
        .into_iter()
        .filter(|(_, tag, _)| tag == track::LOSS)
        .map(|(step, _, _)| step)
        .collect();
    assert_eq!(loss, vec![1, 2, 3]);

    // MLflow: the parent run, a nested run per stage with its key, params and metrics.
    let exp = api(
        uri,
        "experiments/get-by-name",
        &[("experiment_name", &experiment)],
        None,
    );
    let exp_id = exp["experiment"]["experiment_id"].as_str().unwrap();
    let found = api(
        uri,
        "runs/search",
        &[],
        Some(json!({ "experiment_ids": [exp_id], "max_results": 100 })),
    );
    let runs = found["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "p, base, tuned: {found:#}");
    let named = |name: &str| {
        runs.iter()
            .find(|r| r["info"]["run_name"] == name)
            .unwrap_or_else(|| panic!("no run `{name}`: {found:#}"))
    };
    let parent_id = named("p")["info"]["run_id"].as_str().unwrap();
    let tuned = named("tuned");
    let tags = pairs(tuned, "tags");
    assert_eq!(tags["mlflow.parentRunId"], parent_id);
    let link = std::fs::read_link(dir.join(".ptl/out/p/tuned")).unwrap();
    assert!(
        link.to_string_lossy().contains(&tags["ptl.stage_key"]),
        "{link:?} vs {}",
        tags["ptl.stage_key"]
    );
    assert_eq!(pairs(tuned, "params")["max_steps"], "3");
    for run in [named("p"), named("base"), tuned] {
        assert_eq!(run["info"]["status"], "FINISHED");
    }
    let steps: Vec<i64> = history(uri, tuned["info"]["run_id"].as_str().unwrap(), track::LOSS)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);

    // A second run finds everything cached and creates no MLflow run.
    common::run_ok(&dir, &[]);
    let again = api(
        uri,
        "runs/search",
        &[],
        Some(json!({ "experiment_ids": [exp_id], "max_results": 100 })),
    );
    assert_eq!(again["runs"].as_array().map_or(0, Vec::len), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A unique experiment name.
fn experiment_name(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ptl-{what}-{}-{nanos}", std::process::id())
}

/// `dir/p.ptl`: `track_block`, a tiny `init` stage `base` and an `sft` stage `tuned` on six chat rows
/// (`tuned_fields` added to it).
fn tracked_pipeline(dir: &Path, track_block: &str, tuned_fields: &str) {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tokenizers/tiny-chat");
    let rows: String = (0..6)
        .map(|i| {
            format!(
                "{}\n",
                json!({"messages": [{"role": "user", "content": format!("{i}+1=")}, {"role": "assistant", "content": format!("{}", i + 1)}]})
            )
        })
        .collect();
    std::fs::write(dir.join("chat.jsonl"), rows).unwrap();
    std::fs::write(
        dir.join("p.ptl"),
        format!(
            "{track_block}\n\
             stage base = init {{\n  tokenizer = \"{}\"\n  hidden_size = 32\n}}\n\n\
             stage tuned = sft {{\n  model = base.model\n  data = jsonl(\"chat.jsonl\", format = \"messages\")\n  batch_size = 2\n  lr = 1e-3\n{tuned_fields}}}\n",
            tokenizer.display()
        ),
    )
    .unwrap();
}

/// The runs of an experiment as `name → status`.
fn run_statuses(uri: &str, user: Option<(&str, &str)>, experiment: &str) -> Vec<(String, String)> {
    let exp = api_as(
        uri,
        user,
        "experiments/get-by-name",
        &[("experiment_name", experiment)],
        None,
    );
    let id = exp["experiment"]["experiment_id"].as_str().unwrap();
    let found = api_as(
        uri,
        user,
        "runs/search",
        &[],
        Some(json!({ "experiment_ids": [id], "max_results": 100 })),
    );
    let mut runs: Vec<(String, String)> = found["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["info"]["run_name"].as_str().unwrap().to_string(),
                r["info"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    runs.sort();
    runs
}

fn finished(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), "FINISHED".to_string()))
        .collect()
}

/// `ptl run p.ptl` in `dir` with MLflow's variables cleared and then `env` set; must succeed.
fn run_with_mlflow_env(dir: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ptl"));
    cmd.args(["run", "p.ptl"])
        .current_dir(dir)
        .env_remove("PTL_STORE");
    for (k, _) in std::env::vars() {
        if k.starts_with("MLFLOW_") {
            cmd.env_remove(k);
        }
    }
    let o = cmd.envs(env.iter().copied()).output().unwrap();
    let text = common::text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    text
}

#[test]
fn mlflow_is_configured_by_its_own_environment_variables() {
    let uri = common::mlflow::shared();
    let dir = tmp("mlflow-env");
    let experiment = experiment_name("env");
    tracked_pipeline(&dir, "", "  max_steps = 2\n");
    let out = run_with_mlflow_env(
        &dir,
        &[
            ("MLFLOW_TRACKING_URI", uri),
            ("MLFLOW_EXPERIMENT_NAME", &experiment),
        ],
    );
    let first = out.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("tracking MLflow {uri} (experiment {experiment})"),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
    assert_eq!(
        run_statuses(uri, None, &experiment),
        finished(&["base", "p", "tuned"])
    );

    // The pipeline's block wins over the environment: the variables point at nothing here.
    let dir = tmp("mlflow-env-block");
    let block_experiment = experiment_name("block");
    tracked_pipeline(
        &dir,
        &format!("track {{\n  mlflow = \"{uri}\"\n  experiment = \"{block_experiment}\"\n}}\n"),
        "  max_steps = 2\n",
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = run_with_mlflow_env(
        &dir,
        &[
            ("MLFLOW_TRACKING_URI", &dead),
            ("MLFLOW_EXPERIMENT_NAME", "not-this-one"),
        ],
    );
    assert!(!out.contains("warning"), "{out}");
    assert!(
        out.contains(&format!(
            "tracking MLflow {uri} (experiment {block_experiment})"
        )),
        "{out}"
    );
    assert_eq!(
        run_statuses(uri, None, &block_experiment),
        finished(&["base", "p", "tuned"])
    );

    // Without the block or the variables, nothing is tracked and nothing is said about it.
    let dir = tmp("mlflow-env-none");
    tracked_pipeline(&dir, "", "  max_steps = 1\n");
    let out = run_with_mlflow_env(&dir, &[]);
    assert!(!out.contains("tracking"), "{out}");
}

#[test]
fn mlflow_basic_auth_and_https_on_a_real_server() {
    let dir = tmp("mlflow-auth");
    let server = common::mlflow::start(
        &dir.join("server"),
        &common::mlflow::Options {
            basic_auth: true,
            tls: true,
        },
    );
    let uri = server.uri.as_str();
    assert!(uri.starts_with("https://"), "{uri}");
    let admin = common::mlflow::ADMIN;
    let cert = common::mlflow::tls_cert();
    let cert = cert.to_str().unwrap();
    let mut n = 0;
    let mut run = |env: &[(&str, &str)]| {
        n += 1;
        let d = dir.join(format!("run{n}"));
        std::fs::create_dir_all(&d).unwrap();
        tracked_pipeline(&d, "", "  max_steps = 1\n");
        run_with_mlflow_env(&d, env)
    };

    // The right user and password, the server's certificate trusted through MLflow's variable.
    let experiment = experiment_name("auth");
    let out = run(&[
        ("MLFLOW_TRACKING_URI", uri),
        ("MLFLOW_EXPERIMENT_NAME", &experiment),
        ("MLFLOW_TRACKING_USERNAME", admin.0),
        ("MLFLOW_TRACKING_PASSWORD", admin.1),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", cert),
    ]);
    assert!(!out.contains("warning"), "{out}");
    assert!(
        out.contains(&format!(
            "tracking MLflow {uri} (experiment {experiment}, as admin)"
        )),
        "{out}"
    );
    assert_eq!(
        run_statuses(uri, Some(admin), &experiment),
        finished(&["base", "p", "tuned"])
    );

    // A wrong password: the server refuses, ptl warns once and trains on.
    let out = run(&[
        ("MLFLOW_TRACKING_URI", uri),
        ("MLFLOW_EXPERIMENT_NAME", &experiment_name("auth-wrong")),
        ("MLFLOW_TRACKING_USERNAME", admin.0),
        ("MLFLOW_TRACKING_PASSWORD", "wrong"),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", cert),
    ]);
    assert_eq!(out.matches("warning: tracking: MLflow").count(), 1, "{out}");
    assert!(out.contains("HTTP 401"), "{out}");
    assert!(out.contains("0 cached, 2 ran"), "{out}");

    // A certificate nobody vouches for is refused, unless MLFLOW_TRACKING_INSECURE_TLS says not to check.
    let out = run(&[
        ("MLFLOW_TRACKING_URI", uri),
        ("MLFLOW_EXPERIMENT_NAME", &experiment_name("auth-untrusted")),
        ("MLFLOW_TRACKING_USERNAME", admin.0),
        ("MLFLOW_TRACKING_PASSWORD", admin.1),
    ]);
    assert_eq!(out.matches("warning: tracking: MLflow").count(), 1, "{out}");
    let insecure = experiment_name("auth-insecure");
    let out = run(&[
        ("MLFLOW_TRACKING_URI", uri),
        ("MLFLOW_EXPERIMENT_NAME", &insecure),
        ("MLFLOW_TRACKING_USERNAME", admin.0),
        ("MLFLOW_TRACKING_PASSWORD", admin.1),
        ("MLFLOW_TRACKING_INSECURE_TLS", "true"),
    ]);
    assert!(!out.contains("warning"), "{out}");
    assert_eq!(
        run_statuses(uri, Some(admin), &insecure),
        finished(&["base", "p", "tuned"])
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `ptl run p.ptl` in `dir`, its output collected by a thread.
fn spawn_run(dir: &Path) -> (std::process::Child, Arc<Mutex<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .current_dir(dir)
        .env_remove("PTL_STORE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let text = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
    }
    (child, text)
}

fn interrupt(child: &std::process::Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits for `child` to exit (at most `limit`); its exit code.
fn wait_exit(child: &mut std::process::Child, limit: Duration, out: &Mutex<String>) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200));
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}:\n{}", out.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a file matching `pred` exists below `dir`.
fn wait_for(dir: &Path, what: &str, pred: &dyn Fn(&Path) -> bool, out: &Mutex<String>) {
    fn walk(d: &Path, pred: &dyn Fn(&Path) -> bool) -> bool {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                pred(&p) || (p.is_dir() && walk(&p, pred))
            })
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !walk(dir, pred) {
        assert!(
            Instant::now() < deadline,
            "no {what} after 120 s:\n{}",
            out.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_stops_at_a_step_saves_a_checkpoint_and_marks_mlflow_runs_killed() {
    let uri = common::mlflow::shared();
    let dir = tmp("ctrl-c");
    let experiment = experiment_name("ctrl-c");
    // Checkpoints neither by steps nor by time: the one found afterwards comes from the interrupt.
    tracked_pipeline(
        &dir,
        &format!("track {{\n  mlflow = \"{uri}\"\n  experiment = \"{experiment}\"\n}}\n"),
        "  max_steps = 1000000\n  save_every = 0\n  save_minutes = 0\n",
    );
    let (mut child, out) = spawn_run(&dir);
    // Interrupt once `tuned` has logged a step.
    wait_for(
        &dir.join(".ptl/tmp"),
        "logged step",
        &|p| {
            p.ends_with("out/metrics.jsonl")
                && std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"step\""))
        },
        &out,
    );
    interrupt(&child);
    let code = wait_exit(&mut child, Duration::from_secs(60), &out);
    let text = out.lock().unwrap().clone();
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("cancelled tuned"), "{text}");
    assert!(
        text.contains("tuned: saved a checkpoint at step "),
        "{text}"
    );
    assert!(
        text.contains("1 ran, 0 failed, 0 blocked, 1 cancelled"),
        "{text}"
    );

    // The finished stage is in the lock file, the interrupted one is not.
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("p.ptl.lock")).unwrap()).unwrap();
    let locked: Vec<&String> = lock["stages"].as_object().unwrap().keys().collect();
    assert_eq!(locked, vec!["base"], "{lock:#}");

    // The rerun would resume from the checkpoint.
    let o = common::ptl(&dir, &["plan", "p.ptl"]);
    let plan = common::text(&o);
    assert!(
        plan.contains("resumes from its checkpoint at step "),
        "{plan}"
    );

    // MLflow: the interrupted stage and the parent run are KILLED, the finished stage FINISHED.
    let runs = run_statuses(uri, None, &experiment);
    assert_eq!(
        runs,
        vec![
            ("base".to_string(), "FINISHED".to_string()),
            ("p".to_string(), "KILLED".to_string()),
            ("tuned".to_string(), "KILLED".to_string()),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = tmp("ctrl-c-twice");
    // One step of 60 s: the first Ctrl-C cannot stop it before the step ends.
    std::fs::write(
        dir.join("p.ptl"),
        "stage slow = test_step {\n  sleep_ms = 60000\n  steps = 1\n}\n",
    )
    .unwrap();
    let (mut child, out) = spawn_run(&dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.lock().unwrap().contains("running  slow") {
        assert!(Instant::now() < deadline, "{}", out.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt(&child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.lock().unwrap().contains("press Ctrl-C again") {
        assert!(Instant::now() < deadline, "{}", out.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first Ctrl-C waits for the step"
    );
    let started = Instant::now();
    interrupt(&child);
    let code = wait_exit(&mut child, Duration::from_secs(10), &out);
    assert_eq!(code, Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}
