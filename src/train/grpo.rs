//! GRPO, as TRL's GRPOTrainer computes it: `num_generations` sampled completions per prompt, each
//! scored by the weighted sum of the reward functions; advantages are the reward less its group's
//! mean, divided by the group's (or the batch's) standard deviation + 1e-4; the per-token loss is
//! −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A) + β·KL with ρ = exp(log π − log π_old) and the k3 estimate
//! KL = exp(ref − log π) − (ref − log π) − 1, multiplied by ρ (TRL's default
//! `use_bias_correction_kl`: 1 in value, but its gradient adds KL·∇log π); log-probs are taken at
//! the sampling temperature.
//! With `num_iterations` 1 a step's completions train once, so π_old is π (detached) and ρ is 1 in
//! value, its gradient what trains; with more, later updates take ρ against the log-probs the
//! completions were sampled with.

use super::completions::Forward;
pub use super::completions::{completion_logps, Rollout};
use super::logps::model_surrogate;
use super::objective::{Metric, MicroLoss};
use crate::model::decoder::Decoder;

/// How the per-token losses of a batch become one number (TRL's `loss_type`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Σ over every completion token of the step / their number.
    Dapo,
    /// Each completion's token mean, then the mean over completions.
    Grpo,
    /// Σ over tokens / (completions × max_completion_length).
    DrGrpo,
    /// The token mean of each micro-batch, then the mean over micro-batches.
    Bnpo,
}

/// What the reward less its group's mean is divided by (TRL's `scale_rewards`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    Group,
    Batch,
    None,
}

#[derive(Clone, Debug)]
pub struct GrpoSettings {
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f64,
    pub beta: f64,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    pub loss_type: LossType,
    pub scale_rewards: ScaleRewards,
    /// Completions that hit `max_completion_length` without a stop token train nothing.
    pub mask_truncated_completions: bool,
    /// Updates per batch of completions (TRL's `num_iterations`).
    pub num_iterations: usize,
}

/// The standard deviation with Bessel's correction (0 for fewer than two values).
fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    var.sqrt()
}

/// Advantages of rewards in consecutive groups of `group`, and the standard deviation each was
/// scaled by (for `frac_reward_zero_std`).
pub fn advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> (Vec<f64>, Vec<f64>) {
    let group = group.max(1);
    let batch_std = std(rewards);
    let mut adv = Vec::with_capacity(rewards.len());
    let mut stds = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let s = match scale {
            ScaleRewards::Batch => batch_std,
            ScaleRewards::Group | ScaleRewards::None => std(g),
        };
        for r in g {
            adv.push(match scale {
                ScaleRewards::None => r - mean,
                _ => (r - mean) / (s + 1e-4),
            });
            stds.push(s);
        }
    }
    (adv, stds)
}

/// The metrics a GRPO step logs besides the loss and the rewards (TRL's names).
pub const LOSS_METRICS: [&str; 2] = ["kl", "clip_ratio/region_mean"];

/// The loss of a micro-batch of scored rollouts: `advantages` one per rollout, `reference` the
/// reference model's completion log-probs (when β ≠ 0), `old` the log-probs the completions were
/// sampled with when an earlier optimizer step already trained on them (`num_iterations` > 1;
/// `None`: π_old is π). Its `value` and `weight` follow `loss_type` so that the step's
/// Σ value / Σ weight is TRL's loss over the step.
pub fn rollout_loss(
    model: &Decoder,
    rollouts: &[Rollout],
    advantages: &[f64],
    reference: Option<&[Vec<f32>]>,
    old: Option<&[Vec<f32>]>,
    s: &GrpoSettings,
) -> crate::error::Result<MicroLoss> {
    let f = Forward::new(model, rollouts, s.temperature, s.mask_truncated_completions)?;
    let mut weights = vec![0f32; f.targets.len()];
    let (mut total, mut tokens) = (0.0, 0.0);
    let (mut kl_sum, mut clipped) = (0.0, 0.0);
    let mut per_rollout = Vec::with_capacity(rollouts.len());
    for (i, r) in rollouts.iter().enumerate() {
        let span = f.span(i, r);
        let a = advantages[i];
        let (mut sum, mut grads, mut n) = (0.0, Vec::with_capacity(span.len()), 0.0);
        for (k, t) in span.clone().enumerate() {
            let m = f.mask[t] as f64;
            let logp = f.logps[t] as f64;
            // ρ = e^(log π − log π_old) (1 in value when π_old is π); −ρ·A's derivative in log π is
            // −ρ·A, and the clipped branch's is 0 outside the clip range (inside, both are equal).
            let ratio = old.map_or(1.0, |o| (logp - o[i][k] as f64).exp());
            let clip = ratio.clamp(1.0 - s.epsilon_low, 1.0 + s.epsilon_high);
            let (unclipped, bounded) = (ratio * a, clip * a);
            let mut loss = -unclipped.min(bounded);
            let mut grad = if unclipped <= bounded || clip == ratio {
                -ratio * a
            } else {
                0.0
            };
            let low = ratio < 1.0 - s.epsilon_low && a < 0.0;
            let high = ratio > 1.0 + s.epsilon_high && a > 0.0;
            clipped += m * f64::from(u8::from(low || high));
            if s.beta != 0.0 {
                let reference =
                    reference.ok_or("GRPO with beta ≠ 0 needs the reference's log-probs")?;
                let d = reference[i][k] as f64 - logp;
                let kl = d.exp() - d - 1.0;
                // ∂(KL·ρ)/∂log π = (1 − e^d)·ρ + KL·ρ.
                loss += s.beta * kl * ratio;
                grad += s.beta * (1.0 - d.exp() + kl) * ratio;
                kl_sum += m * kl;
            }
            sum += m * loss;
            n += m;
            grads.push((t, m * grad));
        }
        per_rollout.push((sum, n, grads));
        total += sum;
        tokens += n;
    }
    let count = rollouts.len() as f64;
    // How each rollout's summed loss enters `value` (and its gradient), and `weight`.
    let (value, weight) = match s.loss_type {
        LossType::Dapo => (total, tokens),
        LossType::Bnpo => (total / tokens.max(1.0), 1.0),
        LossType::Grpo => (
            per_rollout.iter().map(|(sum, n, _)| sum / n.max(1.0)).sum(),
            count,
        ),
        LossType::DrGrpo => (total / s.max_completion_length.max(1) as f64, count),
    };
    for (_, n, grads) in &per_rollout {
        let scale = match s.loss_type {
            LossType::Dapo => 1.0,
            LossType::Bnpo => 1.0 / tokens.max(1.0),
            LossType::Grpo => 1.0 / n.max(1.0),
            LossType::DrGrpo => 1.0 / s.max_completion_length.max(1) as f64,
        };
        for (t, g) in grads {
            weights[*t] = (g * scale) as f32;
        }
    }
    let surrogate = model_surrogate(model, &f.hidden, &f.targets, &weights, s.temperature)?;
    let mut metrics = vec![Metric {
        name: LOSS_METRICS[1],
        sum: clipped / tokens.max(1.0),
        count: 1.0,
    }];
    if s.beta != 0.0 {
        metrics.push(Metric {
            name: LOSS_METRICS[0],
            sum: kl_sum / tokens.max(1.0),
            count: 1.0,
        });
    }
    Ok(MicroLoss {
        surrogate,
        value,
        weight,
        tokens,
        metrics,
    })
}
