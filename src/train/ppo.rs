//! PPO as TRL's experimental PPOTrainer computes it (../shared/reference/losses-and-formats.md §6).
//! A batch of sampled responses becomes per-token rewards (−kl_coef·KL against the reference, plus
//! the reward model's score one past the response's last token), GAE advantages (whitened over the
//! batch's response tokens) and returns; each micro-batch's loss is the clipped policy loss plus
//! vf_coef times the clipped value loss, under the policy and value model as they now are.
//!
//! Positions follow TRL's padded tensors of width L (the batch's longest response): a response of
//! n tokens has log-probs at 0..n, values at 0..min(n + 1, L) (the value model reads one position
//! past the last token where the batch is wider), and its score lands at n (or n − 1 when n = L).

use super::completions::{Forward, Rollout};
use super::logps::model_surrogate;
use super::objective::{metrics_over, Metric, MicroLoss};
use crate::model::decoder::Decoder;
use candle_core::Tensor;

/// How the per-token KL to the reference is estimated (TRL's `kl_estimator`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// log π − log π_ref.
    K1,
    /// (e^r − 1) − r with r = log π_ref − log π: non-negative, lower variance.
    K3,
}

#[derive(Clone, Debug)]
pub struct PpoSettings {
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// The sampling temperature; log-probs are taken at it plus 1e-7, as TRL divides by it.
    pub temperature: f64,
    /// Subtracted from the score of a response without a stop token.
    pub missing_eos_penalty: Option<f64>,
}

impl PpoSettings {
    /// What TRL divides the logits by.
    pub fn logit_temperature(&self) -> f64 {
        self.temperature + 1e-7
    }
}

/// A sampled response and what the rollout phase measured of it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The query and the response up to and including its first stop token.
    pub rollout: Rollout,
    /// The policy's log-probs of the response tokens when it was sampled.
    pub logps: Vec<f32>,
    /// The reference's.
    pub ref_logps: Vec<f32>,
    /// The value model's values at the response's positions and one past its last token.
    pub values: Vec<f32>,
    /// The reward model's score of query + response.
    pub score: f64,
}

/// One response's training targets.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Whitened advantages, one per response token.
    pub advantages: Vec<f64>,
    /// The values TRL clips around and the returns they regress to, one per value position.
    pub values: Vec<f64>,
    pub returns: Vec<f64>,
    /// GAE before whitening, one per value position (what the fixture compares).
    pub raw_advantages: Vec<f64>,
}

/// A batch of scored samples with their advantages and returns.
pub struct Buffer {
    pub samples: Vec<Sample>,
    pub targets: Vec<Targets>,
    /// L: the longest response of the batch.
    pub width: usize,
    /// The scores after the missing-EOS penalty.
    pub scores: Vec<f64>,
    metrics: Vec<Metric>,
}

/// The metrics of the rollouts, logged once per step (TRL's names).
pub const ROLLOUT_METRICS: [&str; 6] = [
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "val/num_eos_tokens",
];

/// The metrics of each optimizer pass, averaged over the step's micro-batches (TRL's names).
pub const LOSS_METRICS: [&str; 6] = [
    "loss/policy_avg",
    "loss/value_avg",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "val/clipfrac_avg",
    "val/ratio",
];

/// Mean and unbiased variance of `xs` (TRL's masked_mean / masked_var).
fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n.max(1.0);
    let bessel = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    (mean, var * bessel)
}

impl Buffer {
    pub fn new(samples: Vec<Sample>, s: &PpoSettings) -> Buffer {
        let width = samples
            .iter()
            .map(|x| x.rollout.completion.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut scores = Vec::with_capacity(samples.len());
        let mut raw = Vec::with_capacity(samples.len());
        let (mut kl_total, mut entropy) = (0.0, 0.0);
        for x in &samples {
            let n = x.rollout.completion.len();
            let mut score = x.score;
            if !x.rollout.terminated {
                score -= s.missing_eos_penalty.unwrap_or(0.0);
            }
            scores.push(score);
            let kl: Vec<f64> = x
                .logps
                .iter()
                .zip(&x.ref_logps)
                .map(|(&lp, &rp)| {
                    let logr = rp as f64 - lp as f64;
                    match s.kl_estimator {
                        KlEstimator::K1 => -logr,
                        KlEstimator::K3 => logr.exp() - 1.0 - logr,
                    }
                })
                .collect();
            kl_total += kl.iter().sum::<f64>();
            // TRL sums −log π over the padded width, where a padded log-prob is 1.
            entropy += -x.logps.iter().map(|&l| l as f64).sum::<f64>() - (width - n) as f64;
            let nv = (n + 1).min(width);
            let values: Vec<f64> = x.values[..nv].iter().map(|&v| v as f64).collect();
            let mut rewards: Vec<f64> = (0..nv)
                .map(|t| kl.get(t).map_or(0.0, |k| -s.kl_coef * k))
                .collect();
            rewards[if n < width { n } else { n - 1 }] += score;
            let mut adv = vec![0.0; nv];
            let mut last = 0.0;
            for t in (0..nv).rev() {
                let next = values.get(t + 1).copied().unwrap_or(0.0);
                let delta = rewards[t] + s.gamma * next - values[t];
                last = delta + s.gamma * s.lam * last;
                adv[t] = last;
            }
            raw.push((adv, values));
        }
        // Whitened over every response token of the batch (not the extra value position).
        let tokens: Vec<f64> = samples
            .iter()
            .zip(&raw)
            .flat_map(|(x, (adv, _))| adv[..x.rollout.completion.len()].iter().copied())
            .collect();
        let (mean, var) = mean_var(&tokens);
        let scale = 1.0 / (var + 1e-8).sqrt();
        let targets = samples
            .iter()
            .zip(raw)
            .map(|(x, (adv, values))| Targets {
                advantages: adv[..x.rollout.completion.len()]
                    .iter()
                    .map(|a| (a - mean) * scale)
                    .collect(),
                returns: adv.iter().zip(&values).map(|(a, v)| a + v).collect(),
                values,
                raw_advantages: adv,
            })
            .collect();
        let rows = samples.len().max(1) as f64;
        let score_mean = scores.iter().sum::<f64>() / rows;
        let non_score = -s.kl_coef * kl_total / rows;
        let eos = samples.iter().filter(|x| x.rollout.terminated).count() as f64;
        let values = [
            kl_total / rows,
            entropy / rows,
            non_score,
            non_score + score_mean,
            score_mean,
            eos,
        ];
        let metrics = metrics_over(&ROLLOUT_METRICS, &values, 1.0);
        Buffer {
            samples,
            targets,
            width,
            scores,
            metrics,
        }
    }

    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics.clone()
    }
}

/// The value of max(a, b) and its derivative from the derivatives of a and b, as torch's maximum
/// backpropagates: to the larger, split evenly on a tie.
fn max_slope(a: f64, da: f64, b: f64, db: f64) -> (f64, f64) {
    if a > b {
        (a, da)
    } else if b > a {
        (b, db)
    } else {
        (a, 0.5 * (da + db))
    }
}

/// The derivative of clamp(x, lo, hi) in x (1 inside the closed range, as torch's clamp).
fn clamp_slope(x: f64, lo: f64, hi: f64) -> f64 {
    f64::from(u8::from(x >= lo && x <= hi))
}

/// The loss of the samples at `slots` under `policy` and the value model `critic` as they now are:
/// pg + vf_coef·vf with TRL's clipped objectives, each a mean over the micro-batch's positions.
pub fn micro_loss(
    policy: &Decoder,
    critic: &Decoder,
    buffer: &Buffer,
    slots: &[usize],
    s: &PpoSettings,
) -> crate::error::Result<MicroLoss> {
    let rollouts: Vec<Rollout> = slots
        .iter()
        .map(|&i| buffer.samples[i].rollout.clone())
        .collect();
    let temperature = s.logit_temperature();
    let f = Forward::new(policy, &rollouts, temperature, false)?;
    let mut weights = vec![0f32; f.targets.len()];
    let tokens: usize = rollouts.iter().map(|r| r.completion.len()).sum();
    let n_pg = tokens.max(1) as f64;
    let (mut pg, mut pg_clipped, mut kl2, mut ratios) = (0.0, 0.0, 0.0, 0.0);
    for (k, (&i, r)) in slots.iter().zip(&rollouts).enumerate() {
        let (x, t) = (&buffer.samples[i], &buffer.targets[i]);
        for (j, pos) in f.span(k, r).enumerate() {
            let diff = f.logps[pos] as f64 - x.logps[j] as f64;
            let ratio = diff.exp();
            let a = t.advantages[j];
            let (lo, hi) = (1.0 - s.cliprange, 1.0 + s.cliprange);
            // d/d log π of −A·ρ and of −A·clamp(ρ): ρ = e^(log π − log π_old).
            let (loss, slope) = max_slope(
                -a * ratio,
                -a * ratio,
                -a * ratio.clamp(lo, hi),
                -a * ratio * clamp_slope(ratio, lo, hi),
            );
            pg += loss;
            pg_clipped += f64::from(u8::from(-a * ratio.clamp(lo, hi) > -a * ratio));
            kl2 += diff * diff;
            ratios += ratio;
            weights[pos] = (slope / n_pg) as f32;
        }
    }
    let seqs: Vec<Vec<u32>> = rollouts
        .iter()
        .map(|r| [r.prompt.as_slice(), r.completion.as_slice()].concat())
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let (vpred, width) = critic.values(&refs)?;
    let vpred = vpred.flatten_all()?;
    let read: Vec<f32> = vpred.to_vec1()?;
    let (mut at, mut slopes) = (Vec::new(), Vec::new());
    let (mut vf, mut vf_clipped) = (0.0, 0.0);
    for (k, (&i, r)) in slots.iter().zip(&rollouts).enumerate() {
        let t = &buffer.targets[i];
        for (j, (&old, &ret)) in t.values.iter().zip(&t.returns).enumerate() {
            let p = k * width + r.prompt.len() - 1 + j;
            let v = read[p] as f64;
            let (lo, hi) = (old - s.cliprange_value, old + s.cliprange_value);
            let clipped = v.clamp(lo, hi);
            let (loss, slope) = max_slope(
                (v - ret).powi(2),
                2.0 * (v - ret),
                (clipped - ret).powi(2),
                2.0 * (clipped - ret) * clamp_slope(v, lo, hi),
            );
            vf += loss;
            vf_clipped += f64::from(u8::from((clipped - ret).powi(2) > (v - ret).powi(2)));
            at.push(p as u32);
            slopes.push(slope);
        }
    }
    let n_vf = at.len().max(1) as f64;
    let vf_loss = 0.5 * vf / n_vf;
    let pg_loss = pg / n_pg;
    let dev = &policy.device;
    let slopes: Vec<f32> = slopes
        .iter()
        .map(|g| (s.vf_coef * 0.5 * g / n_vf) as f32)
        .collect();
    let value_term = (vpred.index_select(&Tensor::from_vec(at.clone(), at.len(), dev)?, 0)?
        * Tensor::from_vec(slopes, at.len(), dev)?)?
    .sum_all()?;
    let policy_term = model_surrogate(policy, &f.hidden, &f.targets, &weights, temperature)?;
    let value_term = value_term.to_dtype(policy_term.dtype())?;
    let surrogate = (policy_term + value_term)?;
    // TRL's approxkl and ratio mean run over the padded [micro-batch, L] grid, where the
    // log-prob difference is 0 and the ratio 1.
    let grid = (slots.len() * buffer.width).max(1) as f64;
    let padded = grid - tokens as f64;
    let values = [
        pg_loss,
        vf_loss,
        0.5 * kl2 / grid,
        pg_clipped / n_pg,
        vf_clipped / n_vf,
        (ratios + padded) / grid,
    ];
    Ok(MicroLoss {
        surrogate,
        value: pg_loss + s.vf_coef * vf_loss,
        weight: 1.0,
        tokens: tokens as f64,
        metrics: metrics_over(&LOSS_METRICS, &values, 1.0),
    })
}
