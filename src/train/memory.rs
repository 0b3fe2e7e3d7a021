//! A check before the first step that a micro-batch fits in memory: an allocation that fails aborts
//! the process (Rust cannot recover from it), so a batch that cannot fit is refused up front with the
//! sizes that make it too big. The estimate is a lower bound of what training keeps alive (attention
//! scores and per-layer activations kept for backward), so it never refuses a batch that would fit.

use crate::error::Error;
use crate::model::config::ModelConfig;

/// Bytes a training step needs at least for `batch` rows of `seq` positions; with gradient
/// checkpointing (`recompute`) one layer's activations are alive at a time, plus every layer's input.
pub fn estimate(cfg: &ModelConfig, batch: usize, seq: usize, recompute: bool) -> u64 {
    let (b, s, l) = (batch as u64, seq as u64, cfg.num_layers as u64);
    let f32 = 4u64;
    let kept = if recompute { 1 } else { l };
    // Attention probabilities of every kept layer, for the backward pass.
    let scores = kept * b * cfg.num_heads as u64 * s * s * f32;
    // Per layer at least: the input of each norm, q, k, v, the attention output, and the MLP's
    // gate, up and product.
    let per_token = 4 * cfg.hidden_size as u64 + 3 * cfg.intermediate_size as u64;
    let activations = kept * b * s * per_token * f32;
    let inputs = if recompute {
        l * b * s * cfg.hidden_size as u64 * f32
    } else {
        0
    };
    scores.saturating_add(activations).saturating_add(inputs)
}

/// The KiB figure of the line `key:` in a /proc file (`MemAvailable:  123 kB`), when there is one.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process's peak resident memory so far (`VmHWM`), in MiB, where the kernel says.
pub fn peak_resident_mib() -> Option<f64> {
    Some(proc_kib("/proc/self/status", "VmHWM")? as f64 / 1024.0)
}

/// Memory the kernel says is available (`MemAvailable`), when it says.
fn available() -> Option<u64> {
    Some(proc_kib("/proc/meminfo", "MemAvailable")? * 1024)
}

/// Refuses a micro-batch of `batch` rows as wide as `seq` that cannot fit in the available memory,
/// for each of `workers` processes on this machine (a data-parallel stage's workers share it).
pub fn check(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    recompute: bool,
    workers: usize,
) -> Result<(), Error> {
    let needed = estimate(cfg, batch, seq, recompute);
    match available() {
        Some(available) if needed.saturating_mul(workers.max(1) as u64) > available => {
            Err(Error::OutOfMemory {
                batch_size: batch,
                seq_len: seq,
                needed,
                available,
                workers: workers.max(1),
            })
        }
        _ => Ok(()),
    }
}
