//! Stages on a Ray cluster: each stage to compute becomes one Ray job (the Jobs REST API) that runs
//! `ptl run --only STAGE` of the same pipeline on a worker; the result comes back through the remote
//! store. The job's JSON events stream back as this run's progress and log lines.

use super::ray_workers::Placement;
use super::{Event, Report};
use crate::error::Error;
use crate::lang::value::RayCluster;
use serde_json::{json, Value as Json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a running job's status and logs are read.
const POLL: Duration = Duration::from_millis(500);
/// How many of a failed job's last log lines its failure shows.
const TAIL: usize = 20;

/// A Ray cluster and what every job of one run shares.
pub struct RayExecutor {
    pub cluster: RayCluster,
    /// The pipeline file, as an absolute path (workers see it at the same path).
    pub pipeline: PathBuf,
    /// The run's `--set` overrides, passed on so that workers compute the same keys.
    pub overrides: Vec<String>,
    /// The remote store the workers write to.
    pub remote: String,
}

/// One stage's job: what to run and who to tell.
pub struct StageJob<'a> {
    pub stage: &'a str,
    /// The stage's `workers`: its job (worker 0) asks for `num_cpus` and `num_gpus`, and places
    /// the others in a placement group of a bundle of as much each.
    pub workers: usize,
    pub key: &'a str,
    pub cancel: &'a AtomicBool,
    pub report: Report<'a>,
}

/// A job's state as the Jobs API reports it.
struct JobInfo {
    status: String,
    message: String,
}

/// The executor of a run: `--executor` when given (`local`, or `ray=URL` with `ray()`'s defaults),
/// else `config.executor`; `None` computes here. Ray needs the store's remote tier: the jobs' results
/// come back through it.
pub fn chosen(
    p: &crate::lang::pipeline::Pipeline,
    flag: Option<&str>,
    overrides: &[String],
    store: &crate::store::Store,
) -> Result<Option<RayExecutor>, String> {
    let cluster = match flag {
        Some("local") => None,
        Some(f) => match f.strip_prefix("ray=") {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(RayCluster {
                    address: url.trim_end_matches('/').to_string(),
                    num_cpus: 1.0,
                    num_gpus: 0.0,
                    pending_timeout: 600,
                    ptl: None,
                    python: "python3".into(),
                })
            }
            _ => {
                return Err(format!(
                    "--executor {f}: expected `local` or `ray=http://head:8265`"
                ))
            }
        },
        None => p.ray_executor().cloned(),
    };
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    let Some(remote) = &store.remote else {
        return Err(format!(
            "stages on the Ray cluster {} send their results back through a remote store, and this \
             pipeline has none: add `store {{ remote = \"s3://bucket/prefix\" }}` (or set \
             PTL_REMOTE_STORE)",
            cluster.address
        ));
    };
    let pipeline = std::fs::canonicalize(&p.file)
        .map_err(|e| format!("cannot resolve {}: {e}", p.file.display()))?;
    Ok(Some(RayExecutor {
        cluster,
        pipeline,
        overrides: overrides.to_vec(),
        remote: remote.url().to_string(),
    }))
}

/// `'text'` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl RayExecutor {
    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/jobs/{path}", self.cluster.address)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "cannot reach the Ray cluster at {}: {e}",
            self.cluster.address
        ))
    }

    /// The shell command a worker runs for job `id` of `stage`: this pipeline, only that stage, on
    /// that machine (not Ray again), events as JSON lines, into a store of the job's own that is
    /// removed afterwards (upstream entries come from the remote store, the result goes to it).
    fn entrypoint(&self, id: &str, stage: &str) -> String {
        let ptl = self.ptl();
        let mut cmd = format!(
            "store=\"${{TMPDIR:-/tmp}}/{id}\"; {ptl} run {} --only {} --executor local --format json \
             --store \"$store\" --lock-file \"$store.lock\"",
            quote(&self.pipeline.to_string_lossy()),
            quote(stage),
        );
        for o in &self.overrides {
            cmd.push_str(&format!(" --set {}", quote(o)));
        }
        cmd.push_str("; status=$?; rm -rf \"$store\" \"$store.lock\"; exit $status");
        cmd
    }

    /// The shell command that runs ptl on a node of the cluster.
    fn ptl(&self) -> String {
        match &self.cluster.ptl {
            Some(cmd) => cmd.clone(),
            None => quote(
                &std::env::current_exe()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "ptl".into()),
            ),
        }
    }

    /// The variables of a stage's job: the remote store, and for a data-parallel stage how its
    /// workers beyond the first are placed.
    fn env_vars(&self, job: &StageJob) -> Json {
        let mut vars = json!({"PTL_REMOTE_STORE": self.remote});
        if job.workers > 1 {
            let placement = Placement {
                python: self.cluster.python.clone(),
                ptl: self.ptl(),
                cpus: self.cluster.num_cpus,
                gpus: self.cluster.num_gpus,
                timeout: self.cluster.pending_timeout,
            };
            vars[super::ray_workers::ENV] =
                serde_json::to_string(&placement).unwrap_or_default().into();
        }
        vars
    }

    fn submit(&self, id: &str, job: &StageJob) -> Result<bool, Error> {
        let stage = job.stage;
        let body = json!({
            "entrypoint": self.entrypoint(id, stage),
            "submission_id": id,
            "entrypoint_num_cpus": self.cluster.num_cpus,
            "entrypoint_num_gpus": self.cluster.num_gpus,
            "runtime_env": {"env_vars": self.env_vars(job)},
            "metadata": {"ptl_stage": stage, "ptl_pipeline": self.pipeline.to_string_lossy()},
        });
        let mut r = self
            .agent()
            .post(self.url(""))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| self.unreachable(e))?;
        let text = r.body_mut().read_to_string().unwrap_or_default();
        match r.status().as_u16() {
            200 => Ok(true),
            // The Jobs API answers a submission id it has seen with 500 "... already exists".
            _ if text.contains("already exists") => Ok(false),
            code => Err(Error::Other(format!(
                "the Ray cluster refused the job for {stage} (HTTP {code}): {}",
                text.lines().last().unwrap_or_default()
            ))),
        }
    }

    fn info(&self, id: &str) -> Result<JobInfo, Error> {
        let mut r = self
            .agent()
            .get(self.url(id))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let j: Json = serde_json::from_str(&text)
            .map_err(|e| self.unreachable(format!("job {id}: {e}: {text}")))?;
        Ok(JobInfo {
            status: j["status"].as_str().unwrap_or("UNKNOWN").to_string(),
            message: j["message"].as_str().unwrap_or_default().to_string(),
        })
    }

    fn logs(&self, id: &str) -> Result<String, Error> {
        let mut r = self
            .agent()
            .get(self.url(&format!("{id}/logs")))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let j: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        Ok(j["logs"].as_str().unwrap_or_default().to_string())
    }

    fn stop(&self, id: &str) {
        let _ = self
            .agent()
            .post(self.url(&format!("{id}/stop")))
            .send_empty();
    }

    /// The job that computes `key`: submitted now, or one a previous driver submitted that is still
    /// pending or running. Its id derives from the key and the remote store, so a driver that
    /// crashed and ran again finds its job instead of starting another. (A job that ended is not
    /// followed: the caller looked in the remote store first, and its entry is not there.)
    fn job_for(&self, job: &StageJob) -> Result<String, Error> {
        let remote = blake3::hash(self.remote.as_bytes()).to_hex();
        let base = format!("ptl-{}-{}", &job.key[..job.key.len().min(24)], &remote[..8]);
        for attempt in 0..100 {
            let id = match attempt {
                0 => base.clone(),
                n => format!("{base}-{n}"),
            };
            if self.submit(&id, job)? {
                return Ok(id);
            }
            // Seen before: follow it unless it ended without the entry (then a new attempt).
            match self.info(&id)?.status.as_str() {
                "FAILED" | "STOPPED" | "SUCCEEDED" => continue,
                _ => {
                    (job.report)(&Event::StageLog {
                        stage: job.stage.to_string(),
                        line: format!("following Ray job {id}, submitted earlier"),
                    });
                    return Ok(id);
                }
            }
        }
        Err(Error::Other(format!(
            "100 Ray jobs for {} ended without a result",
            job.stage
        )))
    }

    /// Runs the stage as a Ray job and waits for it; `Ok` once the job succeeded (its entry is then
    /// in the remote store).
    pub fn run(&self, job: &StageJob) -> Result<(), Error> {
        let id = self.job_for(job)?;
        let stage = job.stage.to_string();
        (job.report)(&Event::StageLog {
            stage: stage.clone(),
            line: format!("Ray job {id} on {}", self.cluster.address),
        });
        let started = Instant::now();
        let mut seen = 0usize;
        loop {
            if job.cancel.load(Ordering::Relaxed) {
                self.stop(&id);
                self.wait_stopped(&id);
                return Err(Error::Cancelled);
            }
            let info = self.info(&id)?;
            let logs = self.logs(&id)?;
            let lines: Vec<&str> = logs.lines().collect();
            for line in lines.iter().skip(seen) {
                self.relay(line, job);
            }
            seen = seen.max(lines.len());
            match info.status.as_str() {
                "SUCCEEDED" => return Ok(()),
                "FAILED" => return Err(Error::Other(self.failure(&id, &info, &lines))),
                "STOPPED" => {
                    return Err(Error::Other(format!(
                        "Ray job {id} was stopped from outside ptl"
                    )))
                }
                "PENDING" if started.elapsed().as_secs() >= self.cluster.pending_timeout as u64 => {
                    self.stop(&id);
                    let asks = match job.workers {
                        0 | 1 => format!(
                            "num_cpus = {}, num_gpus = {}",
                            self.cluster.num_cpus, self.cluster.num_gpus
                        ),
                        _ => format!(
                            "num_cpus = {}, num_gpus = {} for its first worker",
                            self.cluster.num_cpus, self.cluster.num_gpus
                        ),
                    };
                    return Err(Error::Other(format!(
                        "Ray job {id} waited {} s without starting: no node of the cluster offers \
                         what it asks for ({asks}); Ray says: {}",
                        self.cluster.pending_timeout, info.message
                    )));
                }
                _ => {}
            }
            std::thread::sleep(POLL);
        }
    }

    fn wait_stopped(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.info(id) {
                Ok(i) if matches!(i.status.as_str(), "STOPPED" | "FAILED" | "SUCCEEDED") => return,
                Err(_) => return,
                _ => std::thread::sleep(POLL),
            }
        }
    }

    /// A line of the job's log: the worker's progress and log events become this run's; the rest
    /// (Ray's own lines) stay in the job's log.
    fn relay(&self, line: &str, job: &StageJob) {
        let Ok(e) = serde_json::from_str::<Json>(line) else {
            return;
        };
        if e["stage"].as_str() != Some(job.stage) {
            return;
        }
        let event = match e["event"].as_str() {
            Some("stage_progress") => Event::StageProgress {
                stage: job.stage.to_string(),
                step: e["step"].as_u64().unwrap_or(0),
                total: e["total"].as_u64().unwrap_or(0),
                note: e["note"].as_str().unwrap_or_default().to_string(),
            },
            Some("stage_log") => Event::StageLog {
                stage: job.stage.to_string(),
                line: e["line"].as_str().unwrap_or_default().to_string(),
            },
            _ => return,
        };
        (job.report)(&event);
    }

    /// A failed job's failure: the stage's own error when the worker reported one, and the log's
    /// last lines.
    fn failure(&self, id: &str, info: &JobInfo, lines: &[&str]) -> String {
        let mut cause = None;
        let mut tail: Vec<String> = Vec::new();
        for line in lines {
            match serde_json::from_str::<Json>(line) {
                Ok(e) if e["event"] == "stage_finished" && e["status"] == "failed" => {
                    cause = e["error"].as_str().map(str::to_string);
                }
                Ok(e) if e["event"] == "stage_log" => {
                    tail.push(e["line"].as_str().unwrap_or_default().to_string())
                }
                Ok(e) if e["event"] == "diagnostics" || e["event"] == "error" => {
                    let text = e["message"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| e["diagnostics"].to_string());
                    tail.push(text);
                }
                Ok(_) => {}
                Err(_) => tail.push(line.to_string()),
            }
        }
        let start = tail.len().saturating_sub(TAIL);
        format!(
            "{} (Ray job {id}: {})\nthe job's last log lines:\n  {}",
            cause.as_deref().unwrap_or("the job failed"),
            info.message,
            tail[start..].join("\n  ")
        )
    }
}
