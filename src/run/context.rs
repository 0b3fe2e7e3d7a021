//! What a running stage sees: its parameters, its resolved inputs, an output folder, progress and
//! cancellation.

use crate::lang::value::Value;
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct RunContext<'a> {
    /// The device and dtype the stage computes with (the plan chose them from `config`).
    pub compute: &'a crate::plan::compute::Compute,
    pub stage: &'a str,
    pub params: &'a BTreeMap<String, Value>,
    /// The same parameters as JSON, upstream outputs written `{"stage": .., "output": ..}`.
    pub params_json: serde_json::Value,
    /// TensorBoard / MLflow for this stage (does nothing when the pipeline tracks nothing).
    pub tracker: crate::track::StageTracker,
    /// Field → the local paths its value points at (model directories, dataset files, upstream outputs).
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Where the stage writes its outputs: `<out>/<output name>/...` or `<out>/<output name>.<ext>`.
    pub out: PathBuf,
    /// The entry's folder outside its outputs, for records of this run that are not results (timings):
    /// kept with the entry, never hashed, so they cannot change an output's hash.
    pub run_dir: PathBuf,
    /// A folder for checkpoints that survives a killed run (removed once the stage's entry commits).
    pub checkpoints: PathBuf,
    /// The store the stage's entry goes into (for shared artifacts such as tokenized datasets).
    pub store: &'a Store,
    /// The pipeline file's folder (relative paths in parameters resolve against it).
    pub base_dir: PathBuf,
    pub cancel: &'a AtomicBool,
    /// Reports `step` of `total` with a short note (`loss 1.2345 · 9.1k tok/s`, the model being
    /// scored, or empty), for progress bars, plain progress lines and watch mode.
    pub progress: &'a (dyn Fn(u64, u64, &str) + Sync),
    /// One line of the stage's own output, shown under the stage's name.
    pub log: &'a (dyn Fn(&str) + Sync),
    /// In a worker process of a data-parallel stage: its group (the training loop shares each
    /// step with the other workers). `None` in a stage that runs in one process.
    pub group: Option<&'a dyn crate::train::collective::Collective>,
}

impl RunContext<'_> {
    /// The device the stage's models go on.
    pub fn device(&self) -> &candle_core::Device {
        &self.compute.device
    }

    pub fn param(&self, field: &str) -> &Value {
        self.params.get(field).unwrap_or(&Value::None)
    }

    pub fn input(&self, field: &str) -> Option<&Path> {
        self.inputs
            .get(field)
            .and_then(|v| v.first())
            .map(PathBuf::as_path)
    }

    /// A number field (an int or a float), if it has a value.
    pub fn number(&self, field: &str) -> Option<f64> {
        self.param(field).as_number()
    }

    /// A string field, if it has a value.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.param(field).as_str()
    }

    /// Whether a bool field is true.
    pub fn flag(&self, field: &str) -> bool {
        self.param(field) == &Value::Bool(true)
    }

    /// A path field (a file or folder named relative to the pipeline file), resolved.
    pub fn path(&self, field: &str) -> Option<PathBuf> {
        self.text(field).map(|t| self.base_dir.join(t))
    }

    /// The file and format of the dataset in `field`.
    pub fn dataset(&self, field: &str) -> Result<(PathBuf, crate::lang::types::Format), String> {
        match (self.input(field), self.param(field)) {
            (Some(path), Value::Dataset { format, .. }) => Ok((path.to_path_buf(), *format)),
            _ => Err(format!("the stage has no dataset in `{field}`")),
        }
    }

    /// The stage's parameters as a typed struct: the checker filled in every default from the schema,
    /// so run code never needs one of its own. A field that does not fit is a bug (the schema and the
    /// struct disagree), not a user error.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> crate::error::Result<T> {
        serde_json::from_value(self.params_json.clone()).map_err(|e| {
            crate::error::Error::Internal(format!(
                "stage {}: its parameters do not fit the run's settings: {e}",
                self.stage
            ))
        })
    }

    /// Whether the run was asked to stop; long stages check it between steps.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
