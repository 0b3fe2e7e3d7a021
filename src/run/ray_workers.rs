//! Workers 1..N−1 of a data-parallel stage placed by Ray: inside the stage's Ray job (where the
//! launcher and worker 0 run), a Python driver (ray_workers.py) reserves one placement group of
//! a bundle per worker, starts `ptl worker` in an actor on each bundle's node, and relays their
//! output to the launcher as JSON lines.

use super::workers::{io, Arrival, Spec};
use crate::error::Error;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The variable a Ray job of a data-parallel stage carries: its workers beyond the first are placed
/// by Ray, as this says.
pub const ENV: &str = "PTL_RAY_WORKERS";

/// How the job places its other workers (`ray()`'s settings, per worker).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Placement {
    /// The Python with Ray on the cluster's nodes.
    pub python: String,
    /// The shell command that runs ptl on a node.
    pub ptl: String,
    pub cpus: f64,
    pub gpus: f64,
    /// Seconds the group may wait to be placed.
    pub timeout: i64,
}

impl Placement {
    /// The placement the job's environment asks for, if any.
    pub fn from_env() -> Option<Result<Placement, Error>> {
        let v = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
        Some(
            serde_json::from_str(&v)
                .map_err(|e| Error::Workers(format!("{ENV} is not a placement ({e}): {v}"))),
        )
    }
}

/// What the driver is asked to do.
#[derive(Serialize)]
struct Config<'a> {
    ranks: Vec<usize>,
    cpus: f64,
    gpus: f64,
    timeout: i64,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    spec: &'a str,
    /// The stage, in the names of the workers' spec files (`ptl-worker-STAGE-...json`).
    stage: &'a str,
}

/// The running driver; dropping it kills it (Ray then ends its actors and their workers).
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The Ray address of this node, where worker 0 and the rendezvous are.
    pub ip: String,
    pub node: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a stream.
pub type Tail = Arc<Mutex<VecDeque<String>>>;

pub fn push(tail: &Tail, line: String) {
    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
    t.push_back(line);
    if t.len() > super::workers::TAIL {
        t.pop_front();
    }
}

fn joined(tail: &Tail) -> String {
    tail.lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n  "))
        .unwrap_or_default()
}

impl Driver {
    /// Starts the driver for workers `ranks` (each with `env` and `spec`), and waits for it to name
    /// its node. Their lines, ends and stderr arrive through `tx` and `tails` (by rank).
    pub fn start(
        p: &Placement,
        dir: &Path,
        ranks: std::ops::Range<usize>,
        spec: &Spec,
        env: Vec<(String, String)>,
        tx: mpsc::Sender<Arrival>,
        tails: Vec<Tail>,
    ) -> crate::error::Result<Driver> {
        let script = dir.join("ray_workers.py");
        std::fs::write(&script, include_str!("ray_workers.py"))
            .map_err(|e| io("cannot write the Ray driver", e))?;
        let spec_json = serde_json::to_string(spec).unwrap_or_default();
        let config = Config {
            ranks: ranks.clone().collect(),
            cpus: p.cpus,
            gpus: p.gpus,
            timeout: p.timeout,
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("exec {} worker \"$0\"", p.ptl),
            ],
            env,
            spec: &spec_json,
            stage: &spec.stage,
        };
        let config_path = dir.join("ray_workers.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec(&config).unwrap_or_default(),
        )
        .map_err(|e| io("cannot write the Ray driver's settings", e))?;
        let mut child = Command::new(&p.python)
            .arg(&script)
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Workers(format!(
                    "cannot start `{}` to place the workers on Ray: {e} (set `ray(python = ...)` to the cluster's Python with Ray)",
                    p.python
                ))
            })?;
        let own_tail: Tail = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let tail = own_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    push(&tail, line);
                }
            });
        }
        let stdout = child.stdout.take();
        let (first_tx, first_rx) = mpsc::channel::<(String, String)>();
        if let Some(stdout) = stdout {
            let own_tail = own_tail.clone();
            let first = ranks.start;
            std::thread::spawn(move || {
                demux(stdout, first, &tx, &first_tx, &tails, &own_tail);
            });
        }
        let stdin = child.stdin.take();
        let mut driver = Driver {
            child,
            stdin,
            ip: String::new(),
            node: String::new(),
        };
        // `ray.init` takes seconds; a driver that cannot start says why on its stderr.
        match first_rx.recv_timeout(Duration::from_secs(p.timeout.max(60) as u64)) {
            Ok((node, ip)) => {
                driver.node = node;
                driver.ip = ip;
                Ok(driver)
            }
            Err(_) => {
                let _ = driver.child.kill();
                let _ = driver.child.wait();
                Err(Error::Workers(format!(
                    "the Ray driver that places the workers did not start; its last output:\n  {}",
                    joined(&own_tail)
                )))
            }
        }
    }

    /// Passes a stop to every worker it placed.
    pub fn stop(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n").and_then(|()| stdin.flush());
        }
    }
}

/// Turns the driver's lines into arrivals: the first names its node (`first_tx`), then each
/// worker's lines, placement and end; the driver ending before its workers did is a failure.
fn demux(
    stdout: impl std::io::Read,
    first_rank: usize,
    tx: &mpsc::Sender<Arrival>,
    first_tx: &mpsc::Sender<(String, String)>,
    tails: &[Tail],
    own_tail: &Tail,
) {
    let mut running = tails.len();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(r) = serde_json::from_str::<Json>(&line) else {
            push(own_tail, line);
            continue;
        };
        let text = |k: &str| r[k].as_str().map(str::to_string);
        let Some(rank) = r["rank"].as_u64().map(|r| r as usize) else {
            if let Some(why) = text("error") {
                let _ = tx.send(Arrival::Failed(why));
                running = 0;
            } else if let (Some(node), Some(ip)) = (text("node"), text("ip")) {
                let _ = first_tx.send((node, ip));
            }
            continue;
        };
        let Some(tail) = rank.checked_sub(first_rank).and_then(|i| tails.get(i)) else {
            continue;
        };
        let ended = |how: Result<(), String>| {
            let _ = tx.send(Arrival::Exited(rank, how));
        };
        if let Some(out) = text("out") {
            let _ = tx.send(Arrival::Line(rank, out));
        } else if let Some(err) = text("err") {
            push(tail, err);
        } else if let (Some(node), Some(ip)) = (text("node"), text("ip")) {
            let _ = tx.send(Arrival::Placed(rank, format!("Ray node {node} ({ip})")));
        } else if let Some(code) = r["exit"].as_i64() {
            running = running.saturating_sub(1);
            ended(if code == 0 {
                Ok(())
            } else {
                Err(format!("exited with exit status: {code}"))
            });
        } else if let Some(signal) = r["signal"].as_i64() {
            running = running.saturating_sub(1);
            ended(Err(format!("was killed by signal {signal}")));
        } else if let Some(why) = text("lost") {
            running = running.saturating_sub(1);
            ended(Err(format!("was lost with its Ray actor: {why}")));
        }
    }
    if running > 0 {
        let _ = tx.send(Arrival::Failed(format!(
            "the Ray driver that placed the workers ended before them; its last output:\n  {}",
            joined(own_tail)
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver's lines for workers 1 and 2 become their arrivals in order; a worker killed by a
    /// signal, one that exited with an error and one whose actor was lost each end with how.
    #[test]
    fn the_drivers_lines_become_each_workers_arrivals() {
        let lines = [
            r#"{"node": "n0", "ip": "10.0.0.1"}"#,
            r#"{"rank": 1, "node": "n1", "ip": "10.0.0.2"}"#,
            r#"{"rank": 1, "out": "{\"log\":{\"line\":\"hi\"}}"}"#,
            r#"{"rank": 2, "err": "trouble"}"#,
            "not json",
            r#"{"rank": 1, "signal": 9}"#,
            r#"{"rank": 2, "exit": 1}"#,
        ];
        let (tx, rx) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::channel();
        let tails: Vec<Tail> = vec![Tail::default(), Tail::default()];
        let own = Tail::default();
        demux(lines.join("\n").as_bytes(), 1, &tx, &first_tx, &tails, &own);
        assert_eq!(first_rx.try_recv(), Ok(("n0".into(), "10.0.0.1".into())));
        let got: Vec<String> = rx
            .try_iter()
            .map(|a| match a {
                Arrival::Line(r, l) => format!("{r} line {l}"),
                Arrival::Placed(r, at) => format!("{r} placed {at}"),
                Arrival::Exited(r, how) => format!("{r} ended {how:?}"),
                Arrival::Closed(r) => format!("{r} closed"),
                Arrival::Failed(why) => format!("failed {why}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "1 placed Ray node n1 (10.0.0.2)",
                r#"1 line {"log":{"line":"hi"}}"#,
                r#"1 ended Err("was killed by signal 9")"#,
                r#"2 ended Err("exited with exit status: 1")"#,
            ]
        );
        assert_eq!(joined(&tails[1]), "trouble");
        assert_eq!(joined(&own), "not json");
        // The driver ending while a worker still runs fails the stage with its last output.
        let (tx, rx) = mpsc::channel();
        let lost = [r#"{"rank": 1, "lost": "the actor died"}"#];
        demux(lost.join("\n").as_bytes(), 1, &tx, &first_tx, &tails, &own);
        let got: Vec<String> = rx
            .try_iter()
            .map(|a| match a {
                Arrival::Exited(r, how) => format!("{r} ended {how:?}"),
                Arrival::Failed(why) => format!("failed {why}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0],
            r#"1 ended Err("was lost with its Ray actor: the actor died")"#
        );
        assert!(
            got[1].starts_with("failed the Ray driver that placed the workers ended before them")
        );
    }
}
