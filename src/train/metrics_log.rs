//! Where a training stage's logged steps go: `metrics.jsonl` in its output (deterministic, hashed, in
//! the lock file) and `timing.jsonl` beside the entry's manifest (wall-clock figures, never hashed).

use super::trainer::Logged;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The timing file's name in a store entry (`<entry>/timing.jsonl`, beside `manifest.json`).
pub const TIMING_FILE: &str = "timing.jsonl";

pub struct MetricsLog {
    metrics: (PathBuf, BufWriter<File>),
    timing: (PathBuf, BufWriter<File>),
}

fn create(path: &Path) -> Result<(PathBuf, BufWriter<File>), String> {
    let f = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok((path.to_path_buf(), BufWriter::new(f)))
}

fn line((path, w): &mut (PathBuf, BufWriter<File>), v: &serde_json::Value) -> Result<(), String> {
    writeln!(w, "{v}")
        .and_then(|_| w.flush())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl MetricsLog {
    /// `metrics`: the output file; `run_dir`: the entry's folder outside its outputs.
    pub fn create(metrics: &Path, run_dir: &Path) -> Result<MetricsLog, String> {
        Ok(MetricsLog {
            metrics: create(metrics)?,
            timing: create(&run_dir.join(TIMING_FILE))?,
        })
    }

    /// Appends a step's record to metrics.jsonl and, for a step this run trained, its speed and the
    /// process's peak resident memory so far to timing.jsonl.
    pub fn write(&mut self, m: &Logged) -> Result<(), String> {
        line(&mut self.metrics, m.record)?;
        if let Some(tps) = m.tokens_per_s {
            let mut timing = serde_json::json!({"step": m.step, "tokens_per_s": tps});
            if let Some(peak) = super::memory::peak_resident_mib() {
                timing["peak_rss_mib"] = (peak.round()).into();
            }
            line(&mut self.timing, &timing)?;
        }
        Ok(())
    }
}
