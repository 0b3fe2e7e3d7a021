//! Experiment tracking for `ptl run`: TensorBoard event files and MLflow runs, each optional. Neither
//! can fail or stall training: a sink that fails warns once and is off for the rest of the run.
//!
//! One [`Tracking`] per run of a pipeline (an MLflow parent run named after the pipeline), one
//! [`StageTracker`] per stage that runs (a TensorBoard directory and a nested MLflow run).

mod mlflow;
mod params;
mod rest;
mod tensorboard;

use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Training loss, per optimizer step.
pub const LOSS: &str = "train/loss";
/// Learning rate, per optimizer step.
pub const LR: &str = "train/lr";
/// Gradient norm before clipping, per optimizer step.
pub const GRAD_NORM: &str = "train/grad_norm";
/// Training throughput.
pub const TOKENS_PER_S: &str = "train/tokens_per_s";
/// Fractional epoch.
pub const EPOCH: &str = "train/epoch";

/// The tag of an eval metric: `eval/<metric>`.
pub fn eval_tag(metric: &str) -> String {
    format!("eval/{metric}")
}

/// Where a run's tracking goes: the pipeline's `track` block, completed from MLflow's own
/// environment variables (the block wins where both are set).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Root directory for TensorBoard event files; `None`: off.
    pub tensorboard: Option<PathBuf>,
    /// MLflow tracking URI (`http://host:port` or `https://...`); `None` or empty: off.
    pub mlflow: Option<String>,
    /// MLflow experiment name; `None` or empty: the pipeline's name.
    pub experiment: Option<String>,
    /// Credentials and TLS settings for the MLflow server.
    pub access: Access,
}

/// How to reach an MLflow server besides its URI, as MLflow's clients read it from their environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Access {
    /// `MLFLOW_TRACKING_TOKEN`: sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`: HTTP basic auth (wins over a token,
    /// as in MLflow's client).
    pub basic: Option<(String, String)>,
    /// `MLFLOW_TRACKING_INSECURE_TLS=true`: do not verify the server's certificate.
    pub insecure_tls: bool,
    /// `MLFLOW_TRACKING_SERVER_CERT_PATH`: a PEM file of CA certificates to trust (instead of the
    /// bundled web roots).
    pub ca_cert: Option<PathBuf>,
}

/// MLflow's environment variables, by the names its clients read.
pub mod env {
    pub const TRACKING_URI: &str = "MLFLOW_TRACKING_URI";
    pub const EXPERIMENT_NAME: &str = "MLFLOW_EXPERIMENT_NAME";
    pub const TRACKING_TOKEN: &str = "MLFLOW_TRACKING_TOKEN";
    pub const TRACKING_USERNAME: &str = "MLFLOW_TRACKING_USERNAME";
    pub const TRACKING_PASSWORD: &str = "MLFLOW_TRACKING_PASSWORD";
    pub const TRACKING_INSECURE_TLS: &str = "MLFLOW_TRACKING_INSECURE_TLS";
    pub const TRACKING_SERVER_CERT_PATH: &str = "MLFLOW_TRACKING_SERVER_CERT_PATH";

    /// A variable's value, `None` when unset or blank.
    pub fn get(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Access {
    /// From the process environment.
    pub fn from_env() -> Access {
        let basic = match (
            env::get(env::TRACKING_USERNAME),
            env::get(env::TRACKING_PASSWORD),
        ) {
            (Some(u), Some(p)) => Some((u, p)),
            _ => None,
        };
        Access {
            token: env::get(env::TRACKING_TOKEN),
            basic,
            insecure_tls: env::get(env::TRACKING_INSECURE_TLS)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            ca_cert: env::get(env::TRACKING_SERVER_CERT_PATH).map(PathBuf::from),
        }
    }

    /// The `Authorization` header's value: basic auth when a user and password are set, else the
    /// bearer token.
    fn authorization(&self) -> Option<String> {
        use base64::Engine as _;
        match (&self.basic, &self.token) {
            (Some((user, password)), _) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            (None, Some(token)) => Some(format!("Bearer {token}")),
            (None, None) => None,
        }
    }
}

impl Settings {
    /// A pipeline's `track` block completed from the environment: `MLFLOW_TRACKING_URI` when the
    /// block names no server, `MLFLOW_EXPERIMENT_NAME` when it names no experiment, and the
    /// credentials and TLS variables always.
    pub fn with_env(mut self) -> Settings {
        let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
        if blank(&self.mlflow) {
            self.mlflow = env::get(env::TRACKING_URI);
        }
        if blank(&self.experiment) {
            self.experiment = env::get(env::EXPERIMENT_NAME);
        }
        self.access = Access::from_env();
        self
    }

    /// The MLflow server's URI, when one is set (blank is off).
    fn mlflow_uri(&self) -> Option<&str> {
        self.mlflow
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// The MLflow experiment: the one set, else the pipeline's name.
    fn experiment_or<'a>(&'a self, pipeline: &'a str) -> &'a str {
        match self.experiment.as_deref().map(str::trim) {
            Some(e) if !e.is_empty() => e,
            _ => pipeline,
        }
    }

    /// One line per sink that is on, for the start of a run: `MLflow https://host (experiment x)`.
    /// Credentials in a URI are hidden.
    pub fn describe(&self, pipeline: &str) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(uri) = self.mlflow_uri() {
            let experiment = self.experiment_or(pipeline);
            let auth = match (&self.access.basic, &self.access.token) {
                (Some((user, _)), _) => format!(", as {user}"),
                (None, Some(_)) => ", with a token".to_string(),
                (None, None) => String::new(),
            };
            lines.push(format!(
                "MLflow {} (experiment {experiment}{auth})",
                hide_credentials(uri)
            ));
        }
        if let Some(dir) = &self.tensorboard {
            lines.push(format!("TensorBoard {}", dir.display()));
        }
        lines
    }
}

/// `https://user:secret@host` → `https://user:***@host`.
fn hide_credentials(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => uri.to_string(),
    }
}

/// How a run ended, as MLflow records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Finished,
    Failed,
    /// Interrupted (Ctrl-C).
    Killed,
}

impl Status {
    fn mlflow(self) -> &'static str {
        match self {
            Status::Finished => "FINISHED",
            Status::Failed => "FAILED",
            Status::Killed => "KILLED",
        }
    }
}

/// Receives the one warning each failing sink gives (from any thread: MLflow fails on its own).
pub type Warn = Arc<dyn Fn(&str) + Send + Sync>;

/// Tracking for one run of a pipeline. Dropped without [`Tracking::finish`], it ends as failed.
pub struct Tracking {
    pipeline: String,
    tensorboard: Option<(PathBuf, Arc<SinkState>)>,
    mlflow: Option<mlflow::Sink>,
}

impl Tracking {
    /// Starts the sinks `s` turns on. MLflow's experiment and parent run are created by its
    /// background thread, so this never waits on the network. With both sinks off it does nothing.
    pub fn start(s: &Settings, pipeline: &str, warn: Warn) -> Tracking {
        let tensorboard = s
            .tensorboard
            .clone()
            .map(|dir| (dir, SinkState::new("TensorBoard", warn.clone())));
        let mlflow = s.mlflow_uri().and_then(|uri| {
            mlflow::Sink::start(
                uri,
                &s.access,
                s.experiment_or(pipeline),
                pipeline,
                SinkState::new("MLflow", warn),
            )
        });
        Tracking {
            pipeline: pipeline.to_string(),
            tensorboard,
            mlflow,
        }
    }

    /// Whether any sink is on (a caller may skip computing values only tracking would use).
    pub fn is_on(&self) -> bool {
        self.tensorboard.as_ref().is_some_and(|(_, s)| !s.is_off())
            || self.mlflow.as_ref().is_some_and(|s| !s.is_off())
    }

    /// Tracking for a stage that runs: `kind` is its stage kind, `key` its store key, `params` its
    /// resolved parameters (logged to MLflow flattened, values cut to 6000 characters).
    pub fn stage(&self, stage: &str, kind: &str, key: &str, params: &Value) -> StageTracker {
        let tensorboard = self.tensorboard.as_ref().map(|(dir, state)| {
            tensorboard::StageWriter::open(dir, &self.pipeline, stage, state.clone())
        });
        let mlflow = self.mlflow.as_ref().map(|sink| {
            let tags = vec![
                ("ptl.stage_key".to_string(), key.to_string()),
                ("ptl.kind".to_string(), kind.to_string()),
                (
                    "ptl.version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                ("ptl.pipeline".to_string(), self.pipeline.clone()),
            ];
            sink.stage(stage, tags, params::flatten(params))
        });
        StageTracker {
            tensorboard,
            mlflow,
            relay: None,
        }
    }

    /// Ends the parent run as FINISHED (`ok`) or FAILED and waits, at most 20 s, for MLflow's
    /// thread to send what is queued.
    pub fn finish(self, ok: bool) {
        self.end(if ok { Status::Finished } else { Status::Failed });
    }

    /// Like [`Tracking::finish`] with any status (KILLED for an interrupted run).
    pub fn end(mut self, status: Status) {
        if let Some(sink) = self.mlflow.as_mut() {
            sink.finish(status);
        }
    }
}

/// Values at a step, handed on to another process's tracking (a data-parallel worker's).
pub type Relay = Box<dyn FnMut(u64, &[(&str, f64)]) + Send>;

/// Tracking for one stage. Dropped without [`StageTracker::finish`], its run ends as failed.
pub struct StageTracker {
    tensorboard: Option<tensorboard::StageWriter>,
    mlflow: Option<mlflow::StageRun>,
    relay: Option<Relay>,
}

impl StageTracker {
    /// Tracking that hands every logged value to `relay` (a worker process of a data-parallel
    /// stage sends them to the `ptl run` that launched it, which tracks the stage).
    pub fn relayed(relay: Relay) -> StageTracker {
        StageTracker {
            tensorboard: None,
            mlflow: None,
            relay: Some(relay),
        }
    }

    /// Tracking that keeps nothing.
    pub fn none() -> StageTracker {
        StageTracker {
            tensorboard: None,
            mlflow: None,
            relay: None,
        }
    }

    /// Logs values at `step` under their tags (`train/loss`, `eval/<metric>`, ...). Returns at once:
    /// TensorBoard's writes and MLflow's calls happen on background threads.
    pub fn log(&mut self, step: u64, metrics: &[(&str, f64)]) {
        if let Some(tb) = self.tensorboard.as_mut() {
            tb.log(step, metrics);
        }
        if let Some(run) = &self.mlflow {
            run.log(step, metrics);
        }
        if let Some(relay) = self.relay.as_mut() {
            relay(step, metrics);
        }
    }

    /// Closes the event file and ends the stage's run with `status`.
    pub fn finish(mut self, status: Status) {
        self.end(status);
    }

    fn end(&mut self, status: Status) {
        if let Some(mut tb) = self.tensorboard.take() {
            tb.close();
        }
        if let Some(run) = self.mlflow.take() {
            run.finish(status);
        }
    }
}

impl Drop for StageTracker {
    fn drop(&mut self) {
        self.end(Status::Failed);
    }
}

/// Whether a sink is still on, and its one warning.
pub(crate) struct SinkState {
    name: &'static str,
    off: AtomicBool,
    warn: Warn,
}

impl SinkState {
    fn new(name: &'static str, warn: Warn) -> Arc<SinkState> {
        Arc::new(SinkState {
            name,
            off: AtomicBool::new(false),
            warn,
        })
    }

    fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Turns the sink off; the first call gives the warning.
    fn fail(&self, why: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            let name = self.name;
            (self.warn)(&format!(
                "{name} tracking: {why}; {name} is off for the rest of this run"
            ));
        }
    }
}

/// Milliseconds since the Unix epoch, as MLflow's timestamps.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::{hide_credentials, Access, Settings};

    #[test]
    fn authorization_follows_mlflows_precedence() {
        let token = Access {
            token: Some("tok".into()),
            ..Access::default()
        };
        assert_eq!(token.authorization().as_deref(), Some("Bearer tok"));
        // MLflow's client: a user and password win over a token. base64("alice:s3cret").
        let both = Access {
            basic: Some(("alice".into(), "s3cret".into())),
            ..token
        };
        assert_eq!(
            both.authorization().as_deref(),
            Some("Basic YWxpY2U6czNjcmV0")
        );
        assert_eq!(Access::default().authorization(), None);
    }

    #[test]
    fn descriptions_hide_passwords() {
        assert_eq!(
            hide_credentials("https://bob:pw@mlflow.example:8443/path"),
            "https://bob:***@mlflow.example:8443/path"
        );
        assert_eq!(hide_credentials("http://h:1"), "http://h:1");
        let s = Settings {
            mlflow: Some("http://h:1".into()),
            access: Access {
                basic: Some(("bob".into(), "pw".into())),
                ..Access::default()
            },
            ..Settings::default()
        };
        let lines = s.describe("p");
        assert_eq!(lines, ["MLflow http://h:1 (experiment p, as bob)"]);
    }
}
