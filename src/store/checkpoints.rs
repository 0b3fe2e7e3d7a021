//! Where training checkpoints live: `checkpoints/<stage key>/step-N/` in the store, one folder per
//! checkpoint, the newest complete one wins (what a checkpoint holds is `train::checkpoint`'s).

use super::Store;
use std::path::{Path, PathBuf};

impl Store {
    /// The checkpoint folder of the stage with `key` (it survives a killed run).
    pub fn checkpoint_dir(&self, key: &str) -> PathBuf {
        self.root.join("checkpoints").join(key)
    }

    /// The step of the newest checkpoint of the stage with `key`, if it has one.
    pub fn checkpoint_step(&self, key: &str) -> Option<usize> {
        latest(&self.checkpoint_dir(key)).and_then(|c| step_of(&c))
    }
}

/// The folder of the checkpoint at `step` in `dir`.
pub fn slot(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// The newest complete checkpoint in `dir`, if any (folders still being written end in `.tmp`).
pub fn latest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
                && p.join("state.json").is_file()
        })
        .max()
}

/// The step a checkpoint folder (`step-N`) was written at.
pub fn step_of(path: &Path) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}
