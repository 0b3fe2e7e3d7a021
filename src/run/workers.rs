//! A data-parallel stage (`workers = N`): `ptl run` starts N worker processes (`ptl worker`), serves
//! their rendezvous, shares the run's threads out among them, relays worker 0's progress, log and
//! metrics as the stage's own, passes a stop on, and ends them all when one fails (its failure is
//! the stage's).

use super::context::RunContext;
use super::ray_workers::{Driver, Placement, Tail};
use crate::error::{Error, Relayed};
use crate::train::ring;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// The worker runs on another node (placed by Ray): it keeps a store of its own, downloads
    /// the stage's inputs into it from the remote store, and writes its scratch there.
    #[serde(default)]
    pub own_store: bool,
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

/// A worker: its process when it runs here (else Ray's driver runs it), the pipe a stop goes
/// down, the last lines of its stderr.
struct Worker {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stderr: Tail,
    ended: bool,
}

/// The workers; dropping them kills whichever still runs here, and the Ray driver (which ends the
/// ones it placed).
struct Workers {
    each: Vec<Worker>,
    ray: Option<Driver>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in self.each.iter_mut().filter(|w| !w.ended) {
            if let Some(child) = w.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What arrives from the workers.
pub enum Arrival {
    Line(usize, String),
    /// Worker `rank`, a process here, closed its stdout (it ended).
    Closed(usize),
    /// Worker `rank`, placed by Ray, ended: well, or how not.
    Exited(usize, Result<(), String>),
    /// Where Ray placed worker `rank`.
    Placed(usize, String),
    /// Ray could not place the workers, or its driver ended before them.
    Failed(String),
}

/// A failed file, socket or process operation of the launcher, said with what it was doing.
pub(super) fn io(what: &str, e: std::io::Error) -> Error {
    Error::Workers(format!("{what}: {e}"))
}

/// How many of a worker's last stderr lines its failure shows.
pub const TAIL: usize = 20;

/// Starts worker `rank` as a process of this machine, with the group's variables; its stdout
/// lines and end arrive through `tx`, its stderr's last lines in `tail`.
fn start_here(
    exe: &Path,
    spec: &Path,
    rank: usize,
    group: &[(String, String)],
    tail: &Tail,
    tx: &mpsc::Sender<Arrival>,
) -> crate::error::Result<Worker> {
    let mut child = Command::new(exe)
        .arg("worker")
        .arg(spec)
        .envs(group.iter().map(|(k, v)| (k, v)))
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("cannot start a worker", e))?;
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(Arrival::Line(rank, line));
            }
            let _ = tx.send(Arrival::Closed(rank));
        });
    }
    if let Some(stderr) = child.stderr.take() {
        let tail = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                super::ray_workers::push(&tail, line);
            }
        });
    }
    Ok(Worker {
        stdin: child.stdin.take(),
        child: Some(child),
        stderr: tail.clone(),
        ended: false,
    })
}

/// The variables a worker on another node needs from this one's environment: ptl's own and the
/// remote store's credentials (AWS_*), not this node's paths.
fn passed_on_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("PTL_") || k.starts_with("AWS_")) && k != super::ray_workers::ENV
        })
        .collect()
}

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
        own_store: false,
    };
    let spec_path = scratch.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap_or_default())
        .map_err(|e| io("cannot write the workers' spec", e))?;
    let placement = match Placement::from_env().filter(|_| n > 1) {
        Some(p) => Some(p?),
        None => None,
    };
    // Workers on other nodes reach the rendezvous at this node's address.
    let bind = if placement.is_some() {
        "0.0.0.0:0"
    } else {
        "127.0.0.1:0"
    };
    let listener =
        std::net::TcpListener::bind(bind).map_err(|e| io("cannot open the rendezvous", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io("cannot open the rendezvous", e))?
        .port();
    let token = blake3::hash(
        format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
    )
    .to_hex()
    .to_string();
    let here = if placement.is_some() { 1 } else { n };
    let threads = (candle_core::utils::get_num_threads() / here).max(1);
    let timeout = collective_timeout();
    let exe = std::env::current_exe().map_err(|e| io("cannot find the ptl binary", e))?;
    let (tx, rx) = mpsc::channel::<Arrival>();
    let tails: Vec<Tail> = (0..n).map(|_| Tail::default()).collect();
    let mut workers = Workers {
        each: Vec::with_capacity(n),
        ray: None,
    };
    // What every worker is told of its group (torch's variables), with its threads.
    let group = |threads: usize| {
        vec![
            ("MASTER_PORT".to_string(), port.to_string()),
            ("WORLD_SIZE".to_string(), n.to_string()),
            ("PTL_GROUP_TOKEN".to_string(), token.clone()),
            ("RAYON_NUM_THREADS".to_string(), threads.to_string()),
        ]
    };
    let mut master = "127.0.0.1".to_string();
    if let Some(p) = &placement {
        let spec = Spec {
            own_store: true,
            ..spec
        };
        let mut env = passed_on_env();
        env.extend(group((p.cpus.floor() as usize).max(1)));
        // The driver names this node's address (the rendezvous's and worker 0's) before anything
        // starts here, and gives it to the workers it places as MASTER_ADDR.
        let driver = Driver::start(
            p,
            &scratch,
            1..n,
            &spec,
            env,
            tx.clone(),
            tails[1..].to_vec(),
        )?;
        master = driver.ip.clone();
        (ctx.log)(&format!(
            "training on {n} workers: worker 0 here on Ray node {} ({}), {threads} thread{}; workers 1..{} in a Ray placement group of {} bundle{} ({} CPU, {} GPU each)",
            driver.node,
            driver.ip,
            if threads == 1 { "" } else { "s" },
            n - 1,
            n - 1,
            if n == 2 { "" } else { "s" },
            p.cpus,
            p.gpus
        ));
        workers.ray = Some(driver);
    }
    let mut group = group(threads);
    group.push(("MASTER_ADDR".to_string(), master));
    for (rank, tail) in tails.iter().enumerate().take(here) {
        workers
            .each
            .push(start_here(&exe, &spec_path, rank, &group, tail, &tx)?);
    }
    for tail in &tails[here..] {
        workers.each.push(Worker {
            child: None,
            stdin: None,
            stderr: tail.clone(),
            ended: false,
        });
    }
    drop(tx);
    let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rendezvous = {
        let abandoned = abandoned.clone();
        std::thread::spawn(move || {
            ring::serve_rendezvous(&listener, n, &token, timeout, &abandoned)
        })
    };
    if placement.is_none() {
        (ctx.log)(&format!(
            "training on {n} workers, {threads} thread{} each",
            if threads == 1 { "" } else { "s" }
        ));
    }
    let outcome = relay(ctx, &mut workers, &rx);
    drop(workers);
    // Workers that never came (Ray could not place them) are not waited for.
    abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
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
    let n = workers.each.len();
    let mut errors: Vec<Option<Relayed>> = vec![None; n];
    let mut stopping = false;
    // Workers that stopped on request: the others are stopping too (worker 0 may be saving a
    // checkpoint), so they are waited for, not ended.
    let mut cancelled = false;
    loop {
        if !stopping && ctx.cancelled() {
            stopping = true;
            for w in &mut workers.each {
                if let Some(stdin) = w.stdin.as_mut() {
                    let _ = stdin.write_all(b"stop\n").and_then(|()| stdin.flush());
                }
            }
            if let Some(driver) = workers.ray.as_mut() {
                driver.stop();
            }
        }
        let arrival = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => a,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // Every pipe closed and every worker accounted for.
            Err(mpsc::RecvTimeoutError::Disconnected) if cancelled => return Err(Error::Cancelled),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // A worker that ended, and how.
        let mut ends = None;
        match arrival {
            Arrival::Line(rank, line) => match serde_json::from_str::<Message>(&line) {
                Ok(Message::Error(e)) => errors[rank] = Some(e),
                // The only lines the others log: where a worker on another node got its inputs.
                Ok(Message::Log { line }) if rank != 0 => {
                    (ctx.log)(&format!("worker {rank}: {line}"))
                }
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
            Arrival::Placed(rank, node) => (ctx.log)(&format!("worker {rank} runs on {node}")),
            Arrival::Failed(why) => return Err(Error::Workers(why)),
            Arrival::Closed(rank) => {
                let Some(child) = workers.each[rank].child.as_mut() else {
                    continue;
                };
                let how = match child.wait() {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => Err(ended(s)),
                    Err(e) => Err(e.to_string()),
                };
                ends = Some((rank, how));
            }
            Arrival::Exited(rank, how) => ends = Some((rank, how)),
        }
        let Some((rank, how)) = ends else {
            continue;
        };
        workers.each[rank].ended = true;
        match finished(&mut errors, rank, n, how, &workers.each[rank].stderr) {
            Finished::Well => {}
            Finished::Cancelled => cancelled = true,
            Finished::Failed(e) => return Err(e),
        }
    }
}

/// What a worker's end means for the stage.
enum Finished {
    Well,
    /// It stopped on request (the others are stopping too).
    Cancelled,
    /// The first worker to fail is the cause; the others are ended with it.
    Failed(Error),
}

fn finished(
    errors: &mut [Option<Relayed>],
    rank: usize,
    n: usize,
    how: Result<(), String>,
    stderr: &Tail,
) -> Finished {
    let Err(how) = how else {
        return Finished::Well;
    };
    if errors[rank]
        .as_ref()
        .is_some_and(|e| e.code == Error::Cancelled.code())
    {
        return Finished::Cancelled;
    }
    Finished::Failed(match errors[rank].take() {
        Some(e) if e.code == Error::Workers(String::new()).code() => {
            Error::Workers(format!("worker {rank}: {}", e.message))
        }
        Some(e) => Error::Relayed(e),
        None => {
            let tail = stderr
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
    })
}

/// The messages a worker prints for its launcher.
pub fn send(message: &Message) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, message);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
