//! The MLflow sink: one background thread per `ptl run` makes every HTTP call (experiment, parent run,
//! one nested run per stage, batched metrics), so logging never waits on the server.

use super::params;
use super::rest::{self, Client, Metric};
use super::{now_ms, SinkState, Status};
use std::collections::{BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages waiting for the thread, at most; past that the server is too slow and the sink goes off.
const QUEUE: usize = 10_000;
/// How long `finish` waits for the thread to send what is queued.
const FINISH_WAIT: Duration = Duration::from_secs(20);
/// The parent run's id in messages; stages count from 1.
const PARENT: u64 = 0;

enum Msg {
    /// Create a nested run (its parent tag is added by the thread, which knows the parent's id).
    Start {
        id: u64,
        name: String,
        start_ms: i64,
        tags: Vec<(String, String)>,
        params: Vec<(String, String)>,
    },
    Metrics {
        id: u64,
        step: i64,
        at_ms: i64,
        values: Vec<(String, f64)>,
    },
    End {
        id: u64,
        status: Status,
        at_ms: i64,
    },
    /// End the parent run (and any stage run still open) and stop the thread.
    Close {
        status: Status,
        at_ms: i64,
    },
}

/// The sink as `Tracking` holds it.
pub(crate) struct Sink {
    tx: SyncSender<Msg>,
    state: Arc<SinkState>,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

/// One stage's run, as its `StageTracker` holds it.
pub(crate) struct StageRun {
    tx: SyncSender<Msg>,
    state: Arc<SinkState>,
    id: u64,
}

impl Sink {
    /// Checks the URI and starts the thread, which creates the experiment (if needed) and the parent
    /// run. `None` (after the one warning) when the URI is unusable.
    pub fn start(
        uri: &str,
        access: &super::Access,
        experiment: &str,
        pipeline: &str,
        state: Arc<SinkState>,
    ) -> Option<Sink> {
        let client = match Client::new(uri, access) {
            Ok(c) => c,
            Err(why) => {
                state.fail(&why);
                return None;
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let setup = Setup {
            client,
            uri: uri.trim().to_string(),
            experiment: experiment.to_string(),
            pipeline: pipeline.to_string(),
        };
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("ptl-mlflow".into())
            .spawn(move || {
                if catch_unwind(AssertUnwindSafe(|| work(setup, rx, &st))).is_err() {
                    st.fail("internal error in the tracking thread");
                }
            });
        match spawned {
            Ok(thread) => Some(Sink {
                tx,
                state,
                next_id: AtomicU64::new(PARENT + 1),
                thread: Some(thread),
            }),
            Err(e) => {
                state.fail(&format!("cannot start the tracking thread: {e}"));
                None
            }
        }
    }

    pub fn is_off(&self) -> bool {
        self.state.is_off()
    }

    /// Opens a nested run for a stage.
    pub fn stage(
        &self,
        name: &str,
        tags: Vec<(String, String)>,
        params: Vec<(String, String)>,
    ) -> StageRun {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let run = StageRun {
            tx: self.tx.clone(),
            state: self.state.clone(),
            id,
        };
        run.send(Msg::Start {
            id,
            name: name.to_string(),
            start_ms: now_ms(),
            tags,
            params,
        });
        run
    }

    /// Ends the parent run and waits (at most [`FINISH_WAIT`]) for the thread to send what is queued.
    pub fn finish(&mut self, status: Status) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Sent even when the sink is off: it wakes a thread that waits for messages.
        let msg = Msg::Close {
            status,
            at_ms: now_ms(),
        };
        match self.tx.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.state.fail(&format!(
                    "the server is too slow ({QUEUE} records waiting); the rest is not sent"
                ));
                return;
            }
        }
        let deadline = Instant::now() + FINISH_WAIT;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                // The thread sees the sink off before its next call and stops by itself.
                self.state.fail(&format!(
                    "still sending after {} s; the rest is not sent",
                    FINISH_WAIT.as_secs()
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.finish(Status::Failed);
    }
}

impl StageRun {
    pub fn log(&self, step: u64, metrics: &[(&str, f64)]) {
        if self.state.is_off() {
            return;
        }
        let values = metrics
            .iter()
            .filter_map(|&(name, v)| Some((params::key(name)?, v)))
            .collect::<Vec<_>>();
        if values.is_empty() {
            return;
        }
        self.send(Msg::Metrics {
            id: self.id,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            at_ms: now_ms(),
            values,
        });
    }

    pub fn finish(&self, status: Status) {
        self.send(Msg::End {
            id: self.id,
            status,
            at_ms: now_ms(),
        });
    }

    fn send(&self, msg: Msg) {
        if self.state.is_off() {
            return;
        }
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.state.fail(&format!(
                "the server is too slow ({QUEUE} records waiting); the rest is not sent"
            )),
            // The thread stopped: after a failure it has already warned.
            Err(TrySendError::Disconnected(_)) => self.state.fail("the tracking thread stopped"),
        }
    }
}

struct Setup {
    client: Client,
    uri: String,
    experiment: String,
    pipeline: String,
}

/// The thread: sets up, then sends messages in order, merging consecutive metrics of one run into
/// one `log-batch` call. Returns at the first failure (after the one warning) or at `Close`.
fn work(setup: Setup, rx: Receiver<Msg>, state: &SinkState) {
    let Setup {
        client,
        uri,
        experiment,
        pipeline,
    } = setup;
    let fail = |e: rest::Error| state.fail(&format!("{uri}: {e}"));
    let parent = client.experiment_id(&experiment).and_then(|exp| {
        let tags = vec![
            (
                "ptl.version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            ("ptl.pipeline".to_string(), pipeline.clone()),
        ];
        let run = client.create_run(&exp, &pipeline, now_ms(), &tags)?;
        Ok((exp, run))
    });
    let (exp, parent) = match parent {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut runs: HashMap<u64, String> = HashMap::new();
    let mut open: BTreeSet<u64> = BTreeSet::new();
    let mut batch = Batch::default();
    loop {
        // Block only when nothing is pending; otherwise send the pending batch first.
        let msg = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(_) if batch.metrics.is_empty() => rx.recv().ok(),
            Err(_) => None,
        };
        if state.is_off() {
            return;
        }
        let Some(msg) = msg else {
            if batch.metrics.is_empty() {
                return; // every sender is gone without `Close`
            }
            if let Err(e) = batch.send(&client, &runs) {
                return fail(e);
            }
            continue;
        };
        if let Msg::Metrics { id, .. } = &msg {
            if batch.id == Some(*id) && batch.metrics.len() < rest::MAX_BATCH_METRICS {
                batch.add(msg);
                continue;
            }
        }
        if let Err(e) = batch.send(&client, &runs) {
            return fail(e);
        }
        let result = match msg {
            Msg::Metrics { .. } => {
                batch.add(msg);
                Ok(())
            }
            Msg::Start {
                id,
                name,
                start_ms,
                mut tags,
                params,
            } => {
                tags.insert(0, ("mlflow.parentRunId".to_string(), parent.clone()));
                client
                    .create_run(&exp, &name, start_ms, &tags)
                    .and_then(|run| {
                        for chunk in params.chunks(rest::MAX_BATCH_PARAMS) {
                            client.log_batch(&run, &[], chunk)?;
                        }
                        runs.insert(id, run);
                        open.insert(id);
                        Ok(())
                    })
            }
            Msg::End { id, status, at_ms } => match runs.get(&id) {
                Some(run) if open.remove(&id) => client.end_run(run, status.mlflow(), at_ms),
                _ => Ok(()),
            },
            Msg::Close { status, at_ms } => {
                // A stage still open when the pipeline ends did not finish.
                let left = if status == Status::Killed {
                    Status::Killed
                } else {
                    Status::Failed
                };
                let result = open
                    .iter()
                    .filter_map(|id| runs.get(id))
                    .try_for_each(|run| client.end_run(run, left.mlflow(), at_ms))
                    .and_then(|()| client.end_run(&parent, status.mlflow(), at_ms));
                if let Err(e) = result {
                    fail(e);
                }
                return;
            }
        };
        if let Err(e) = result {
            return fail(e);
        }
    }
}

/// Consecutive metrics of one run, waiting to go out as one `log-batch` call.
#[derive(Default)]
struct Batch {
    id: Option<u64>,
    metrics: Vec<Metric>,
}

impl Batch {
    fn add(&mut self, msg: Msg) {
        if let Msg::Metrics {
            id,
            step,
            at_ms,
            values,
        } = msg
        {
            self.id = Some(id);
            self.metrics
                .extend(values.into_iter().map(|(key, value)| Metric {
                    key,
                    value,
                    timestamp_ms: at_ms,
                    step,
                }));
        }
    }

    fn send(&mut self, client: &Client, runs: &HashMap<u64, String>) -> Result<(), rest::Error> {
        let id = self.id.take();
        let metrics = std::mem::take(&mut self.metrics);
        // Metrics of a run that was never created (it failed, and the sink is off) are dropped.
        let Some(run) = id.and_then(|id| runs.get(&id)) else {
            return Ok(());
        };
        for chunk in metrics.chunks(rest::MAX_BATCH_METRICS) {
            client.log_batch(run, chunk, &[])?;
        }
        Ok(())
    }
}
