//! A data-parallel stage (`workers = N`): `ptl run` starts N worker processes (`ptl worker`), serves
//! their rendezvous, shares the run's threads out among them, relays worker 0's progress, log and
//! metrics as the stage's own, passes a stop on, and ends them all when one fails (its failure is
//! the stage's).

use super::context::RunContext;
use crate::error::{Error, Relayed};
use crate::train::ring;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Everything a worker needs to run its share of the stage, written once for all of them.
#[derive(Serialize, Deserialize)]
pub struct Spec {
    pub file: PathBuf,
    /// The run's `--set` overrides: the worker checks the same pipeline.
    pub overrides: Vec<String>,
    pub stage: String,
    pub store: PathBuf,
    /// The stage's parameters as the launcher resolved them: a worker whose pipeline resolves to
    /// others (the file changed meanwhile) refuses to train.
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Worker 0 writes the stage's outputs here; the others into `scratch`.
    pub out: PathBuf,
    pub run_dir: PathBuf,
    pub checkpoints: PathBuf,
    pub scratch: PathBuf,
}

/// What a worker prints on its stdout, one JSON object a line.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Progress {
        step: u64,
        total: u64,
        note: String,
    },
    Log {
        line: String,
    },
    Metrics {
        step: u64,
        values: Vec<(String, f64)>,
    },
    Error(Relayed),
}

/// How long a collective waits for another worker: `PTL_COLLECTIVE_TIMEOUT` seconds, 600 unless set.
pub fn collective_timeout() -> Duration {
    let secs = std::env::var("PTL_COLLECTIVE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(600.0);
    Duration::from_secs_f64(secs)
}

/// Where the launcher found the pipeline.
pub struct Launch<'a> {
    pub file: &'a Path,
    pub overrides: &'a [String],
    pub store: &'a Path,
}

/// A worker process: its child, the pipe a stop goes down, the last lines of its stderr.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
    ended: bool,
}

/// The workers; dropping them kills whichever still runs.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in self.0.iter_mut().filter(|w| !w.ended) {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// What arrives from the workers' pipes.
enum Arrival {
    Line(usize, String),
    /// Worker `rank` closed its stdout (it ended).
    Closed(usize),
}

const TAIL: usize = 20;

/// How a worker ended, in words.
fn ended(status: ExitStatus) -> String {
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return format!("was killed by signal {signal}");
    }
    format!("exited with {status}")
}

/// Trains `ctx`'s stage on `n` worker processes; returns when all have finished (or the first
/// failed, which ends the rest).
pub fn train(ctx: &mut RunContext, launch: &Launch, n: usize) -> crate::error::Result<()> {
    if !ctx.device().is_cpu() {
        return Err(Error::Workers(
            "workers on CUDA need the NCCL collective, which is not built yet: set `device = \"cpu\"` or `workers = 1`".into(),
        ));
    }
    let io = |what: &str, e: std::io::Error| Error::Workers(format!("{what}: {e}"));
    let scratch = ctx.run_dir.join("workers");
    std::fs::create_dir_all(&scratch).map_err(|e| io("cannot create the workers' folder", e))?;
    let spec = Spec {
        file: launch.file.to_path_buf(),
        overrides: launch.overrides.to_vec(),
        stage: ctx.stage.to_string(),
        store: launch.store.to_path_buf(),
        params: ctx.params_json.clone(),
        inputs: ctx.inputs.clone(),
        out: ctx.out.clone(),
        run_dir: ctx.run_dir.clone(),
        checkpoints: ctx.checkpoints.clone(),
        scratch: scratch.clone(),
    };
    let spec_path = scratch.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap_or_default())
        .map_err(|e| io("cannot write the workers' spec", e))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| io("cannot open the rendezvous", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io("cannot open the rendezvous", e))?
        .port();
    let token = blake3::hash(
        format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
    )
    .to_hex()
    .to_string();
    let threads = (candle_core::utils::get_num_threads() / n).max(1);
    let timeout = collective_timeout();
    let exe = std::env::current_exe().map_err(|e| io("cannot find the ptl binary", e))?;
    let (tx, rx) = mpsc::channel::<Arrival>();
    let mut workers = Workers(Vec::with_capacity(n));
    for rank in 0..n {
        let mut child = Command::new(&exe)
            .arg("worker")
            .arg(&spec_path)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("PTL_GROUP_TOKEN", &token)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io("cannot start a worker", e))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let tail = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        if let Some(stdout) = stdout {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(Arrival::Line(rank, line));
                }
                let _ = tx.send(Arrival::Closed(rank));
            });
        }
        if let Some(stderr) = stderr {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push_back(line);
                    if t.len() > TAIL {
                        t.pop_front();
                    }
                }
            });
        }
        workers.0.push(Worker {
            stdin: child.stdin.take(),
            child,
            stderr: tail,
            ended: false,
        });
    }
    drop(tx);
    let rendezvous =
        std::thread::spawn(move || ring::serve_rendezvous(&listener, n, &token, timeout));
    (ctx.log)(&format!(
        "training on {n} workers, {threads} thread{} each",
        if threads == 1 { "" } else { "s" }
    ));
    let outcome = relay(ctx, &mut workers, &rx);
    drop(workers);
    let rendezvous = rendezvous.join().unwrap_or(Ok(()));
    let _ = std::fs::remove_dir_all(&scratch);
    match (outcome, rendezvous) {
        (Err(e), Err(r)) if matches!(e, Error::Workers(_)) => {
            Err(Error::Workers(format!("{e} ({r})")))
        }
        (result, _) => result,
    }
}

/// Relays the workers' messages until all have ended well, or one ended otherwise.
fn relay(
    ctx: &mut RunContext,
    workers: &mut Workers,
    rx: &mpsc::Receiver<Arrival>,
) -> crate::error::Result<()> {
    let n = workers.0.len();
    let mut errors: Vec<Option<Relayed>> = vec![None; n];
    let mut stopping = false;
    // Workers that stopped on request: the others are stopping too (worker 0 may be saving a
    // checkpoint), so they are waited for, not ended.
    let mut cancelled = false;
    loop {
        if !stopping && ctx.cancelled() {
            stopping = true;
            for w in &mut workers.0 {
                if let Some(stdin) = w.stdin.as_mut() {
                    let _ = stdin.write_all(b"stop\n").and_then(|()| stdin.flush());
                }
            }
        }
        let arrival = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => a,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // Every pipe closed and every worker accounted for.
            Err(mpsc::RecvTimeoutError::Disconnected) if cancelled => return Err(Error::Cancelled),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match arrival {
            Arrival::Line(rank, line) => match serde_json::from_str::<Message>(&line) {
                Ok(Message::Error(e)) => errors[rank] = Some(e),
                Ok(_) if rank != 0 => {}
                Ok(Message::Progress { step, total, note }) => (ctx.progress)(step, total, &note),
                Ok(Message::Log { line }) => (ctx.log)(&line),
                Ok(Message::Metrics { step, values }) => {
                    let values: Vec<(&str, f64)> =
                        values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    ctx.tracker.log(step, &values);
                }
                // Something else on its stdout: shown as the stage's output.
                Err(_) => (ctx.log)(&format!("worker {rank}: {line}")),
            },
            Arrival::Closed(rank) => {
                let w = &mut workers.0[rank];
                let status = w.child.wait();
                w.ended = true;
                if status.as_ref().is_ok_and(ExitStatus::success) {
                    continue;
                }
                if errors[rank]
                    .as_ref()
                    .is_some_and(|e| e.code == Error::Cancelled.code())
                {
                    cancelled = true;
                    continue;
                }
                // The first worker to fail is the cause; the others are ended with it.
                return Err(match errors[rank].take() {
                    Some(e) if e.code == Error::Workers(String::new()).code() => {
                        Error::Workers(format!("worker {rank}: {}", e.message))
                    }
                    Some(e) => Error::Relayed(e),
                    None => {
                        let how = status.map_or_else(|e| e.to_string(), ended);
                        let tail = w
                            .stderr
                            .lock()
                            .map(|t| t.iter().cloned().collect::<Vec<_>>())
                            .unwrap_or_default();
                        let tail = if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; its last output:\n  {}", tail.join("\n  "))
                        };
                        Error::Workers(format!("worker {rank} of {n} {how}{tail}"))
                    }
                });
            }
        }
    }
}

/// The messages a worker prints for its launcher.
pub fn send(message: &Message) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, message);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
