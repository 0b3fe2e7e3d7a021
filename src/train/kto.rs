//! KTO on unpaired rows (TRL 1.16's KTOTrainer, `loss_type = "kto"`): the KL estimate comes from
//! mismatched pairs, each row's prompt with the completion of its neighbour (completions rotated by
//! one inside each batch of consecutive rows), summed completion log-probs of the policy (no
//! gradient) minus the reference's, averaged over the micro-batch and clamped at 0; a desirable row's
//! loss is λD·(1 − σ(β(logratio − kl))), an undesirable one's λU·(1 − σ(β(kl − logratio)))
//! (../shared/reference/losses-and-formats.md §4).

use super::logps::model_surrogate;
use super::objective::{Metric, MicroLoss, Objective};
use super::preference::{forward, sigmoid};
use super::supervised::Sequence;
use crate::model::decoder::Decoder;

/// One KTO row, encoded: a prompt, a completion, and whether the completion is desirable.
pub struct Unpaired {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    pub label: bool,
}

/// KTO's fields of the stage (the schema holds their defaults).
#[derive(Debug, serde::Deserialize)]
pub struct KtoSettings {
    pub beta: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
}

/// What KTO logs per step besides the loss, by TRL's names (rewards and logps are means over the
/// desirable, resp. undesirable, rows of each micro-batch).
pub const KTO_METRICS: [&str; 6] = [
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

/// The row whose completion each row's mismatched pair borrows: TRL rotates completions by one inside
/// each run of `batch_size` consecutive rows ((x1, yn), (x2, y1), …).
pub fn kl_partners(rows: usize, batch_size: usize) -> Vec<usize> {
    let b = batch_size.max(1);
    (0..rows)
        .map(|i| {
            let start = i - i % b;
            let len = b.min(rows - start);
            start + (i - start + len - 1) % len
        })
        .collect()
}

fn sequence(prompt: &[u32], completion: &[u32]) -> Sequence {
    let mut mask = vec![0u8; prompt.len()];
    mask.resize(prompt.len() + completion.len(), 1);
    Sequence {
        ids: [prompt, completion].concat(),
        mask,
    }
}

/// A micro-batch's sequences: [matched rows…; mismatched rows…].
fn sequences(rows: &[Unpaired], partners: &[usize], ids: &[usize]) -> Vec<Sequence> {
    let matched = ids
        .iter()
        .map(|&i| sequence(&rows[i].prompt, &rows[i].completion));
    let mismatched = ids
        .iter()
        .map(|&i| sequence(&rows[i].prompt, &rows[partners[i]].completion));
    matched.chain(mismatched).collect()
}

/// Summed completion log-probs under the reference, (matched, mismatched) per row, `batch_size` rows
/// at a time.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Reference {
    pub matched: Vec<f64>,
    pub mismatched: Vec<f64>,
}

pub fn reference_logps(
    model: &Decoder,
    rows: &[Unpaired],
    partners: &[usize],
    batch_size: usize,
) -> crate::error::Result<Reference> {
    let all: Vec<usize> = (0..rows.len()).collect();
    let mut r = Reference {
        matched: Vec::with_capacity(rows.len()),
        mismatched: Vec::with_capacity(rows.len()),
    };
    for ids in all.chunks(batch_size.max(1)) {
        let f = forward(model, &sequences(rows, partners, ids))?;
        r.matched.extend(&f.sums[..ids.len()]);
        r.mismatched.extend(&f.sums[ids.len()..]);
    }
    Ok(r)
}

struct Kto {
    data: Vec<Unpaired>,
    partners: Vec<usize>,
    reference: Reference,
    settings: KtoSettings,
    rows: Vec<Vec<usize>>,
}

/// KTO against reference log-probs computed before training, with each row's mismatched pair
/// ([`kl_partners`]); rows are read in order, as TRL's sequential sampler reads them.
pub fn kto(
    data: Vec<Unpaired>,
    partners: Vec<usize>,
    reference: Reference,
    settings: KtoSettings,
) -> impl Objective {
    let rows = (0..data.len()).map(|i| vec![i]).collect();
    Kto {
        data,
        partners,
        reference,
        settings,
        rows,
    }
}

/// Sums and counts of one side's rewards and log-probs.
#[derive(Default)]
struct Side {
    rewards: f64,
    logps: f64,
    count: f64,
}

impl Side {
    fn mean(&self, sum: f64) -> Option<f64> {
        (self.count > 0.0).then(|| sum / self.count)
    }
}

impl Objective for Kto {
    fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }

    fn sequential(&self) -> bool {
        true
    }

    /// Each row goes through the model twice: matched and mismatched.
    fn batch_shape(&self, batch_size: usize) -> (usize, usize) {
        let longest = self
            .data
            .iter()
            .map(|r| r.completion.len())
            .max()
            .unwrap_or(0);
        let widest = self
            .data
            .iter()
            .map(|r| r.prompt.len() + longest)
            .max()
            .unwrap_or(1);
        (2 * batch_size, widest)
    }

    fn micro_batch(
        &self,
        model: &Decoder,
        rows: &[&[usize]],
        _draw: u64,
    ) -> crate::error::Result<MicroLoss> {
        let ids: Vec<usize> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let n = ids.len();
        let f = forward(model, &sequences(&self.data, &self.partners, &ids))?;
        let KtoSettings {
            beta,
            desirable_weight,
            undesirable_weight,
        } = self.settings;
        // The KL estimate carries no gradient (TRL computes it under no_grad and detaches it).
        let kl = (ids
            .iter()
            .enumerate()
            .map(|(k, &i)| f.sums[n + k] - self.reference.mismatched[i])
            .sum::<f64>()
            / n.max(1) as f64)
            .max(0.0);
        let mut coef = vec![0.0f64; 2 * n];
        let mut value = 0.0;
        let (mut chosen, mut rejected) = (Side::default(), Side::default());
        for (k, &i) in ids.iter().enumerate() {
            let logratio = f.sums[k] - self.reference.matched[i];
            // loss = w·(1 − σ(z)), z = ±β(logratio − kl); d loss / d logratio = ∓w·β·σ(z)·σ(−z).
            let (w, sign, side) = if self.data[i].label {
                (desirable_weight, 1.0, &mut chosen)
            } else {
                (undesirable_weight, -1.0, &mut rejected)
            };
            let z = sign * beta * (logratio - kl);
            value += w * (1.0 - sigmoid(z));
            coef[k] = -sign * w * beta * sigmoid(z) * sigmoid(-z);
            side.rewards += beta * logratio;
            side.logps += f.sums[k];
            side.count += 1.0;
        }
        let weights: Vec<f32> = (0..f.targets.len())
            .map(|t| (coef[t / f.width] * f.mask[t] as f64) as f32)
            .collect();
        let surrogate = model_surrogate(model, &f.hidden, &f.targets, &weights, 1.0)?;
        // As TRL: each metric is this micro-batch's mean (absent when it has no row of that side),
        // averaged over the step's micro-batches.
        let margin = chosen
            .mean(chosen.rewards)
            .zip(rejected.mean(rejected.rewards))
            .map(|(c, r)| c - r);
        let values = [
            Some(kl),
            chosen.mean(chosen.rewards),
            rejected.mean(rejected.rewards),
            margin,
            chosen.mean(chosen.logps),
            rejected.mean(rejected.logps),
        ];
        let metrics = KTO_METRICS
            .iter()
            .zip(values)
            .filter_map(|(&name, v)| {
                v.map(|sum| Metric {
                    name,
                    sum,
                    count: 1.0,
                })
            })
            .collect();
        Ok(MicroLoss {
            surrogate,
            value,
            weight: n as f64,
            tokens: f.mask[..n * f.width].iter().map(|&m| m as f64).sum(),
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_pairs_rotate_inside_each_batch() {
        assert_eq!(kl_partners(4, 4), [3, 0, 1, 2]);
        assert_eq!(kl_partners(5, 2), [1, 0, 3, 2, 4]);
        assert_eq!(kl_partners(3, 1), [0, 1, 2]);
    }
}
