//! A check before the first step that a micro-batch fits in memory: an allocation that fails aborts
//! the process (Rust cannot recover from it), so a batch that cannot fit is refused up front with the
//! sizes that make it too big. The estimate is a lower bound of what training keeps alive (attention
//! scores and per-layer activations kept for backward), so it never refuses a batch that would fit.

use crate::error::Error;
use crate::model::config::ModelConfig;

/// Bytes a training step needs at least for `batch` rows of `seq` positions.
pub fn estimate(cfg: &ModelConfig, batch: usize, seq: usize) -> u64 {
    let (b, s, l) = (batch as u64, seq as u64, cfg.num_layers as u64);
    let f32 = 4u64;
    // Attention probabilities of every layer, kept for the backward pass.
    let scores = l * b * cfg.num_heads as u64 * s * s * f32;
    // Per layer at least: the input of each norm, q, k, v, the attention output, and the MLP's
    // gate, up and product.
    let per_token = 4 * cfg.hidden_size as u64 + 3 * cfg.intermediate_size as u64;
    let activations = l * b * s * per_token * f32;
    scores.saturating_add(activations)
}

/// Memory the kernel says is available (`MemAvailable`), when it says.
fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a micro-batch of `batch` rows as wide as `seq` that cannot fit in the available memory.
pub fn check(cfg: &ModelConfig, batch: usize, seq: usize) -> Result<(), Error> {
    let needed = estimate(cfg, batch, seq);
    match available() {
        Some(available) if needed > available => Err(Error::OutOfMemory {
            batch_size: batch,
            seq_len: seq,
            needed,
            available,
        }),
        _ => Ok(()),
    }
}
