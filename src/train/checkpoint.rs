//! Training checkpoints: the trainable weights, AdamW's moments, the generators' states, the data
//! order and cursor, written atomically every `save_every` steps so a killed stage resumes where it
//! stopped and ends with the same weights as a run that was never interrupted.

use super::optim::AdamW;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Where the loop stands: everything besides tensors that the next step depends on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Position {
    /// Optimizer steps done.
    pub step: usize,
    /// This epoch's row order and how far into it the loop is.
    pub order: Vec<usize>,
    pub cursor: usize,
    /// The data-order generator's state.
    pub rng: u64,
    /// The dropout generator's state.
    pub dropout_rng: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// The metrics logged so far (rewritten to metrics.jsonl on resume).
    pub metrics: Vec<serde_json::Value>,
    /// Steps skipped because their loss or gradient norm was not finite (`skip_nonfinite`).
    #[serde(default)]
    pub skipped_nonfinite: usize,
    /// The dropout generators of workers 1.. of a data-parallel stage (worker 0's is `dropout_rng`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_dropout_rngs: Vec<u64>,
}

/// A checkpoint that cannot be written or read: the disk or the store, not the pipeline.
fn err(e: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::Store(format!("checkpoint: {e}"))
}

/// Writes a checkpoint for `pos` into `dir/step-N` (via a temporary folder renamed into place) and
/// removes older ones.
pub fn save(
    dir: &Path,
    pos: &Position,
    vars: &[(String, Var)],
    opt: &AdamW,
) -> crate::error::Result<()> {
    let tmp = dir.join(format!("step-{:08}.tmp", pos.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(err)?;
    let mut tensors: HashMap<String, Tensor> = opt.moments().into_iter().collect();
    for (name, var) in vars {
        tensors.insert(format!("w.{name}"), var.as_tensor().detach());
    }
    let weights = tmp.join("state.safetensors");
    crate::model::tuning::write_safetensors(&tensors, &weights)?;
    let json = serde_json::json!({"position": pos, "adam_step": opt.step});
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_vec(&json).map_err(err)?,
    )
    .map_err(err)?;
    for f in ["state.safetensors", "state.json"] {
        std::fs::File::open(tmp.join(f))
            .and_then(|f| f.sync_all())
            .map_err(err)?;
    }
    let done = crate::store::checkpoints::slot(dir, pos.step);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&tmp, &done).map_err(err)?;
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    for e in std::fs::read_dir(dir).map_err(err)?.flatten() {
        if e.path() != done {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Loads the checkpoint at `path` into `vars` and `opt`; returns the loop's position.
pub fn load(
    path: &Path,
    vars: &[(String, Var)],
    opt: &mut AdamW,
) -> crate::error::Result<Position> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("state.json")).map_err(err)?)
            .map_err(err)?;
    let pos: Position = serde_json::from_value(json["position"].clone()).map_err(err)?;
    let device = vars
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    let tensors =
        candle_core::safetensors::load(path.join("state.safetensors"), &device).map_err(err)?;
    for (name, var) in vars {
        let t = tensors
            .get(&format!("w.{name}"))
            .ok_or_else(|| err(format!("no weights for `{name}`")))?;
        var.set(&t.to_dtype(var.dtype()).map_err(err)?)
            .map_err(err)?;
    }
    let adam_step = json["adam_step"].as_u64().unwrap_or(pos.step as u64);
    opt.restore(adam_step, &tensors)?;
    Ok(pos)
}

/// Test-only crash injection: `PTL_FAULT=crash_after_step:N` aborts the process (as `kill -9` would)
/// once step N is done and checkpointed.
pub fn crash_point(step: usize) {
    #[cfg(feature = "test-kinds")]
    if std::env::var("PTL_FAULT").is_ok_and(|f| f == format!("crash_after_step:{step}")) {
        std::process::abort();
    }
    #[cfg(not(feature = "test-kinds"))]
    let _ = step;
}
