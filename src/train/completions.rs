//! A prompt with a completion sampled for it (GRPO's and PPO's rollouts): sampling them in one
//! batch from the policy, and their per-token log-probs under a model at the sampling temperature.

use super::logps::model_token_logps;
use super::supervised::{batch, Sequence};
use crate::model::decoder::Decoder;
use crate::model::generation::Generation;

/// A prompt and one completion sampled for it.
#[derive(Clone, Debug)]
pub struct Rollout {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// It ended with a stop token (not cut at `max_completion_length`).
    pub terminated: bool,
}

impl Rollout {
    /// Whether its tokens count in the loss (`mask_truncated`: not when it was cut short).
    pub fn trains(&self, mask_truncated: bool) -> bool {
        !self.completion.is_empty() && (self.terminated || !mask_truncated)
    }

    pub fn sequence(&self, mask_truncated: bool) -> Sequence {
        let on = u8::from(self.trains(mask_truncated));
        let mut ids = self.prompt.clone();
        ids.extend(&self.completion);
        let mut mask = vec![0; self.prompt.len()];
        mask.extend(std::iter::repeat_n(on, self.completion.len()));
        Sequence { ids, mask }
    }
}

/// Per-token log-probs (at `temperature`) of each rollout's completion, without a graph, in order.
pub fn completion_logps(
    model: &Decoder,
    rollouts: &[Rollout],
    temperature: f64,
) -> crate::error::Result<Vec<Vec<f32>>> {
    let f = Forward::new(model, rollouts, temperature, false)?;
    Ok(rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| f.completion(i, r).to_vec())
        .collect())
}

/// One padded forward of a micro-batch's rollouts at the sampling temperature; the completions that
/// train nothing (`mask_truncated` and cut short) are masked out.
pub struct Forward {
    pub hidden: candle_core::Tensor,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub logps: Vec<f32>,
    width: usize,
}

impl Forward {
    pub fn new(
        model: &Decoder,
        rollouts: &[Rollout],
        temperature: f64,
        mask_truncated: bool,
    ) -> crate::error::Result<Forward> {
        let seqs: Vec<Sequence> = rollouts
            .iter()
            .map(|r| r.sequence(mask_truncated))
            .collect();
        let rows: Vec<Vec<&Sequence>> = seqs.iter().map(|q| vec![q]).collect();
        let b = batch(&rows);
        let width = b.ids.first().map_or(0, Vec::len);
        let hidden = model
            .hidden_packed(&b.ids, &b.segments)?
            .reshape((b.ids.len() * width, model.cfg.hidden_size))?;
        // As TRL: the model's logits (soft-capped where it caps them) divided by the temperature.
        let logps = model_token_logps(model, &hidden, &b.targets, temperature)?;
        Ok(Forward {
            hidden,
            targets: b.targets,
            mask: b.mask,
            logps,
            width,
        })
    }

    /// The positions of rollout `i`'s completion tokens (as targets).
    pub fn span(&self, i: usize, r: &Rollout) -> std::ops::Range<usize> {
        let start = i * self.width + r.prompt.len() - 1;
        start..start + r.completion.len()
    }

    pub fn completion(&self, i: usize, r: &Rollout) -> &[f32] {
        &self.logps[self.span(i, r)]
    }
}

/// Completions of `prompts` sampled from `model` in one batch (dropout off, no graph), row k from
/// the generator seeded by `draw + k`; a completion is `terminated` when it ends with a stop token.
pub fn sample(
    model: &Decoder,
    prompts: Vec<Vec<u32>>,
    draw: u64,
    generation: &Generation,
) -> crate::error::Result<Vec<Rollout>> {
    let seeds: Vec<u64> = (0..prompts.len() as u64)
        .map(|k| draw.wrapping_add(k))
        .collect();
    let training = model
        .training
        .swap(false, std::sync::atomic::Ordering::Relaxed);
    let completions = model.generate(&prompts, &seeds, generation);
    model
        .training
        .store(training, std::sync::atomic::Ordering::Relaxed);
    Ok(completions?
        .into_iter()
        .zip(prompts)
        .map(|(completion, prompt)| Rollout {
            terminated: completion
                .last()
                .is_some_and(|t| generation.stop.contains(t)),
            prompt,
            completion,
        })
        .collect())
}
