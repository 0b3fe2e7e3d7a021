//! Tracking: TensorBoard event files read back by an independent parser, MLflow runs checked on a
//! real server through its REST API, and failing sinks that warn once and never stop training.

mod common;
#[path = "common/tfrecord.rs"]
mod tfrecord;

use ptl::track::{self, Settings, Status, Tracking};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The MLflow version .ci/run installs; named in the message of a test that finds no server.
const MLFLOW_VERSION: &str = "3.17.2";

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

/// An MLflow server for the test: `PTL_TEST_MLFLOW_URI`, or one started from `mlflow` on PATH.
struct Server {
    uri: String,
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // The server runs uvicorn in child processes: end its whole process group.
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mlflow_server(dir: &Path) -> Server {
    if let Ok(uri) = std::env::var("PTL_TEST_MLFLOW_URI") {
        if !uri.trim().is_empty() {
            return Server {
                uri: uri.trim().trim_end_matches('/').to_string(),
                child: None,
            };
        }
    }
    let exe = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("mlflow"))
            .find(|p| p.is_file())
    });
    let Some(exe) = exe else {
        panic!(
            "this test needs an MLflow server: set PTL_TEST_MLFLOW_URI=http://127.0.0.1:PORT to a \
             running one, or put the `mlflow` command on PATH and the test starts one, e.g.\n  \
             python3 -m venv /tmp/mlflow-venv && /tmp/mlflow-venv/bin/pip install \
             mlflow=={MLFLOW_VERSION} && export PATH=/tmp/mlflow-venv/bin:$PATH\n(.ci/run does this)"
        )
    };
    let port = free_port();
    let log = std::fs::File::create(dir.join("mlflow-server.log")).unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(dir.join("artifacts"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            "1",
        ])
        .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut server = Server {
        uri: format!("http://127.0.0.1:{port}"),
        child: Some(cmd.spawn().expect("starting `mlflow server`")),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if http_get(&format!("{}/health", server.uri)).is_some() {
            return server;
        }
        let exited = server.child.as_mut().unwrap().try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("mlflow-server.log")).unwrap_or_default();
            panic!("`mlflow server` did not come up ({exited:?}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// GET a URL; the body when the answer is 200.
fn http_get(url: &str) -> Option<String> {
    let mut resp = ureq::get(url).call().ok()?;
    (resp.status() == 200).then(|| resp.body_mut().read_to_string().unwrap())
}

/// Calls MLflow's REST API (`POST` when there is a body) and returns the JSON answer.
fn api(uri: &str, path: &str, query: &[(&str, &str)], body: Option<Value>) -> Value {
    let url = format!("{uri}/api/2.0/mlflow/{path}");
    let resp = match body {
        Some(b) => ureq::post(&url)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        None => query
            .iter()
            .fold(ureq::get(&url), |r, (k, v)| r.query(*k, *v))
            .call(),
    };
    let text = resp
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap();
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
    let server = mlflow_server(&dir);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let experiment = format!("ptl-test-{}-{nanos}", std::process::id());
    let (warn, seen) = warnings();
    let s = Settings {
        tensorboard: Some(dir.join("tb")),
        mlflow: Some(format!("{}/", server.uri)),
        experiment: Some(experiment.clone()),
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

    let uri = &server.uri;
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
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mlflow_server_down_warns_once_and_training_goes_on() {
    let dir = tmp("mlflow-down");
    let (warn, seen) = warnings();
    let s = Settings {
        tensorboard: Some(dir.clone()),
        mlflow: Some(format!("http://127.0.0.1:{}", free_port())),
        experiment: None,
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
        "https://mlflow.invalid",
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
    let server = mlflow_server(&dir);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let experiment = format!("ptl-e2e-{}-{nanos}", std::process::id());
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
            "track {{\n  tensorboard = \"tb\"\n  mlflow = \"{}\"\n  experiment = \"{experiment}\"\n}}\n\n\
             stage base = init {{\n  tokenizer = \"{}\"\n  hidden_size = 32\n}}\n\n\
             stage tuned = sft {{\n  model = base.model\n  data = jsonl(\"chat.jsonl\", format = \"messages\")\n  max_steps = 3\n  batch_size = 2\n  lr = 1e-3\n}}\n",
            server.uri,
            tokenizer.display()
        ),
    )
    .unwrap();
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
    let uri = &server.uri;
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
