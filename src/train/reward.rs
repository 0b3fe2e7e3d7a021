//! The reward model's objective (TRL 1.16's RewardTrainer): chosen and rejected sequences of a
//! micro-batch go through the model in one forward (rows [chosen…; rejected…]), the score head reads
//! one reward per sequence, and the loss is Bradley–Terry, −logσ(r_c − r_r − margin), plus
//! `center_rewards_coefficient` · (r_c + r_r)² when set (../shared/reference/losses-and-formats.md §5).

use super::objective::{metrics_over, MicroLoss, Objective};
use crate::model::decoder::Decoder;
use candle_core::Tensor;

/// One preference row as the reward model reads it: the whole chosen and rejected sequences.
pub struct ScoredPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// The row's `margin` column, if it has one.
    pub margin: Option<f64>,
}

/// The reward model's own field of the stage (the schema holds its default).
#[derive(Debug, serde::Deserialize)]
pub struct RewardSettings {
    pub center_rewards_coefficient: f64,
}

/// What the reward model logs per step besides the loss, by TRL's names.
pub const REWARD_METRICS: [&str; 3] = ["accuracy", "margin", "mean_reward"];

struct RewardObjective {
    pairs: Vec<ScoredPair>,
    settings: RewardSettings,
    rows: Vec<Vec<usize>>,
}

/// Bradley–Terry over `pairs`, one pair per unit of the loop's data order.
pub fn bradley_terry(pairs: Vec<ScoredPair>, settings: RewardSettings) -> impl Objective {
    let rows = (0..pairs.len()).map(|i| vec![i]).collect();
    RewardObjective {
        pairs,
        settings,
        rows,
    }
}

/// −logσ(x) = softplus(−x), stable for large |x|.
fn softplus_neg(x: &Tensor) -> candle_core::Result<Tensor> {
    x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

impl Objective for RewardObjective {
    fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }

    fn batch_shape(&self, batch_size: usize) -> (usize, usize) {
        let widest = self
            .pairs
            .iter()
            .map(|p| p.chosen.len().max(p.rejected.len()))
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
        let seqs: Vec<&[u32]> = ids
            .iter()
            .map(|&i| self.pairs[i].chosen.as_slice())
            .chain(ids.iter().map(|&i| self.pairs[i].rejected.as_slice()))
            .collect();
        let rewards = model.rewards(&seqs)?;
        let (chosen, rejected) = (rewards.narrow(0, 0, n)?, rewards.narrow(0, n, n)?);
        // Without a margin TRL's loss is −logσ(r_c − r_r): nothing is subtracted.
        let margin = |i: usize| self.pairs[i].margin.unwrap_or_default();
        let margins: Vec<f32> = ids.iter().map(|&i| margin(i) as f32).collect();
        let margins = Tensor::from_vec(margins, n, &model.device)?;
        let gap = ((&chosen - &rejected)? - margins)?;
        let coef = self.settings.center_rewards_coefficient;
        let mut surrogate = softplus_neg(&gap)?.sum_all()?;
        if coef != 0.0 {
            surrogate = (surrogate + ((&chosen + &rejected)?.sqr()?.sum_all()? * coef)?)?;
        }
        let r: Vec<f32> = rewards.to_vec1()?;
        let mut value = 0.0;
        let mut sums = [0.0f64; 3];
        for (k, &i) in ids.iter().enumerate() {
            let (rc, rr) = (r[k] as f64, r[n + k] as f64);
            let d = rc - rr - margin(i);
            value += (-d).max(0.0) + (-d.abs()).exp().ln_1p() + coef * (rc + rr).powi(2);
            sums[0] += f64::from(u8::from(rc > rr));
            sums[1] += rc - rr;
            sums[2] += (rc + rr) / 2.0;
        }
        Ok(MicroLoss {
            surrogate,
            value,
            weight: n as f64,
            tokens: seqs.iter().map(|s| s.len() as f64).sum(),
            metrics: metrics_over(&REWARD_METRICS, &sums, n as f64),
        })
    }
}
