//! PPO's measured rollouts shared among the workers of a data-parallel stage: every worker ends
//! with the whole step's samples in the order one process has them.

use super::collective::{Collective, CollectiveError};
use super::completions::Rollout;
use super::ppo::Sample;
use std::collections::VecDeque;

/// A [`Sample`] as the workers exchange it: every float as its bits, so that each worker computes
/// from the same values (a NaN log-prob included).
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    prompt: Vec<u32>,
    completion: Vec<u32>,
    terminated: bool,
    logps: Vec<u32>,
    ref_logps: Vec<u32>,
    values: Vec<u32>,
    score: u64,
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

fn floats(xs: Vec<u32>) -> Vec<f32> {
    xs.into_iter().map(f32::from_bits).collect()
}

impl From<&Sample> for Wire {
    fn from(s: &Sample) -> Wire {
        Wire {
            prompt: s.rollout.prompt.clone(),
            completion: s.rollout.completion.clone(),
            terminated: s.rollout.terminated,
            logps: bits(&s.logps),
            ref_logps: bits(&s.ref_logps),
            values: bits(&s.values),
            score: s.score.to_bits(),
        }
    }
}

impl From<Wire> for Sample {
    fn from(w: Wire) -> Sample {
        Sample {
            rollout: Rollout {
                prompt: w.prompt,
                completion: w.completion,
                terminated: w.terminated,
            },
            logps: floats(w.logps),
            ref_logps: floats(w.ref_logps),
            values: floats(w.values),
            score: f64::from_bits(w.score),
        }
    }
}

/// Every worker's samples in the step's order, from this worker's `mine` (its micro-batches of
/// `per_micro` samples, in order): micro-batch i of the step is worker i mod N's (i div N)-th.
pub fn gather(
    group: &dyn Collective,
    mine: Vec<Sample>,
    per_micro: usize,
) -> Result<Vec<Sample>, CollectiveError> {
    let wire: Vec<Wire> = mine.iter().map(Wire::from).collect();
    let bytes = serde_json::to_vec(&wire)
        .map_err(|e| CollectiveError(format!("encoding this worker's rollouts: {e}")))?;
    let mut workers: Vec<VecDeque<Sample>> = group
        .all_gather(&bytes)?
        .iter()
        .map(|b| {
            serde_json::from_slice::<Vec<Wire>>(b)
                .map(|w| w.into_iter().map(Sample::from).collect())
                .map_err(|e| CollectiveError(format!("a worker sent malformed rollouts: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut all = Vec::with_capacity(workers.iter().map(VecDeque::len).sum());
    while workers.iter().any(|w| !w.is_empty()) {
        for w in &mut workers {
            let take = per_micro.max(1).min(w.len());
            all.extend(w.drain(..take));
        }
    }
    Ok(all)
}
