//! The tracking of one `ptl run`: TensorBoard and MLflow as the pipeline's `track` block asks, started
//! only when a stage actually runs.

use crate::lang::pipeline::Pipeline;
use crate::lang::value::Value;
use crate::track::{self, StageTracker, Tracking};

/// The run's tracking, started when the first stage runs (a run that finds everything cached
/// creates no MLflow run).
pub struct LazyTracking {
    settings: track::Settings,
    pipeline: String,
    cell: std::sync::OnceLock<Tracking>,
}

impl LazyTracking {
    /// From the pipeline's `track` block and MLflow's environment variables; paths are relative to the
    /// pipeline file.
    pub fn new(p: &Pipeline) -> LazyTracking {
        let text = |k: &str| match p.track.get(k) {
            Some(Value::Str(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        };
        LazyTracking {
            settings: track::Settings {
                tensorboard: text("tensorboard").map(|d| p.dir().join(d)),
                mlflow: text("mlflow"),
                experiment: text("experiment"),
                access: track::Access::default(),
            }
            .with_env(),
            pipeline: p.name.clone(),
            cell: std::sync::OnceLock::new(),
        }
    }

    /// Where tracking goes, a line per sink (empty when the run tracks nothing).
    pub fn describe(&self) -> Vec<String> {
        self.settings.describe(&self.pipeline)
    }

    pub fn stage(
        &self,
        stage: &str,
        kind: &str,
        key: &str,
        params: &serde_json::Value,
    ) -> StageTracker {
        self.cell
            .get_or_init(|| {
                let warn: track::Warn =
                    std::sync::Arc::new(|m: &str| eprintln!("warning: tracking: {m}"));
                Tracking::start(&self.settings, &self.pipeline, warn)
            })
            .stage(stage, kind, key, params)
    }

    /// Ends the parent run (if one was started).
    pub fn end(self, status: track::Status) {
        if let Some(t) = self.cell.into_inner() {
            t.end(status);
        }
    }
}
