//! PPO's online objective: each loop step samples one response per prompt from the policy (dropout
//! off, no graph), measures it (the policy's and the reference's log-probs, the value model's
//! values, the reward model's score), builds the advantages (`ppo::Buffer`), and the loop then
//! trains `epochs` passes of mini-batches on it, the policy and the value model together.

use super::collective::Collective;
use super::completions::{completion_logps, sample};
use super::objective::{Metric, MicroLoss, Objective, Online, Rollouts};
use super::ppo::{micro_loss, Buffer, PpoSettings, Sample};
use super::ppo_gather::gather;
use crate::model::decoder::Decoder;
use crate::model::generation::{Generation, Sampling};

/// The models a PPO stage reads besides the policy.
pub struct PpoModels {
    /// The frozen reference of the KL penalty.
    pub reference: Decoder,
    /// The frozen reward model (a score head).
    pub reward: Decoder,
    /// The value model, trained with the policy (a score head read at every position).
    pub critic: Decoder,
}

pub struct Ppo {
    /// Each prompt's token ids.
    pub prompts: Vec<Vec<u32>>,
    pub stop: Vec<u32>,
    pub models: PpoModels,
    pub settings: PpoSettings,
    pub response_length: usize,
    pub epochs: usize,
    pub mini_batches: usize,
    rows: Vec<Vec<usize>>,
}

impl Ppo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        prompts: Vec<Vec<u32>>,
        stop: Vec<u32>,
        models: PpoModels,
        settings: PpoSettings,
        response_length: usize,
        epochs: usize,
        mini_batches: usize,
    ) -> Ppo {
        let rows = (0..prompts.len()).map(|i| vec![i]).collect();
        Ppo {
            prompts,
            stop,
            models,
            settings,
            response_length,
            epochs,
            mini_batches,
            rows,
        }
    }

    /// Measures sampled rollouts: log-probs under the policy and the reference, the value model's
    /// values, the reward model's scores (all without a graph).
    pub fn measure(
        &self,
        policy: &Decoder,
        rollouts: Vec<super::completions::Rollout>,
    ) -> crate::error::Result<Vec<Sample>> {
        let t = self.settings.logit_temperature();
        let logps = completion_logps(policy, &rollouts, t)?;
        let ref_logps = completion_logps(&self.models.reference, &rollouts, t)?;
        let seqs: Vec<Vec<u32>> = rollouts
            .iter()
            .map(|r| [r.prompt.as_slice(), r.completion.as_slice()].concat())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let scores: Vec<f32> = self.models.reward.rewards(&refs)?.detach().to_vec1()?;
        let (values, width) = self.models.critic.values(&refs)?;
        let values: Vec<f32> = values.detach().flatten_all()?.to_vec1()?;
        Ok(rollouts
            .into_iter()
            .zip(logps)
            .zip(ref_logps)
            .enumerate()
            .map(|(k, ((rollout, logps), ref_logps))| {
                // The value before each response token, and after the last one.
                let start = k * width + rollout.prompt.len() - 1;
                let values = values[start..=start + rollout.completion.len()].to_vec();
                Sample {
                    rollout,
                    logps,
                    ref_logps,
                    values,
                    score: scores[k] as f64,
                }
            })
            .collect())
    }
}

/// One step's scored rollouts and the models that train on them.
struct Step<'a> {
    buffer: Buffer,
    ppo: &'a Ppo,
}

impl Rollouts for Step<'_> {
    fn count(&self) -> usize {
        self.buffer.samples.len()
    }

    fn micro_batch(&self, model: &Decoder, slots: &[usize]) -> crate::error::Result<MicroLoss> {
        micro_loss(
            model,
            &self.ppo.models.critic,
            &self.buffer,
            slots,
            &self.ppo.settings,
        )
    }

    fn metrics(&self) -> Vec<Metric> {
        self.buffer.metrics()
    }
}

impl Online for Ppo {
    fn epochs(&self) -> usize {
        self.epochs
    }

    fn mini_batches(&self) -> usize {
        self.mini_batches
    }

    fn sample<'s>(
        &'s self,
        model: &Decoder,
        rows: &[&[usize]],
        batch_size: usize,
        draw: &dyn Fn(usize) -> u64,
        group: Option<&dyn Collective>,
    ) -> crate::error::Result<Box<dyn Rollouts + 's>> {
        let generation = Generation {
            max_new: self.response_length,
            stop: self.stop.clone(),
            // TRL samples from the whole distribution at its temperature (top_k 0, top_p 1).
            sampling: Sampling::Sample {
                temperature: self.settings.logit_temperature() as f32,
                top_k: 0,
                top_p: 1.0,
            },
        };
        // Each micro-batch is sampled from its own seed and measured on its own, so that a
        // worker's micro-batches are the same bits as one process's.
        let mut samples = Vec::with_capacity(rows.len());
        for (i, micro) in rows.chunks(batch_size.max(1)).enumerate() {
            let prompts: Vec<Vec<u32>> = micro
                .iter()
                .flat_map(|r| r.iter().map(|&p| self.prompts[p].clone()))
                .collect();
            let rollouts = sample(model, prompts, draw(i), &generation)?;
            samples.extend(self.measure(model, rollouts)?);
        }
        if let Some(group) = group {
            samples = gather(group, samples, batch_size)?;
        }
        Ok(Box::new(Step {
            buffer: Buffer::new(samples, &self.settings),
            ppo: self,
        }))
    }
}

impl Objective for Ppo {
    fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }

    fn batch_shape(&self, batch_size: usize) -> (usize, usize) {
        let longest = self.prompts.iter().map(Vec::len).max().unwrap_or(0);
        (batch_size, longest + self.response_length)
    }

    fn dropout(&self) -> bool {
        false
    }

    fn online(&self) -> Option<&dyn Online> {
        Some(self)
    }

    fn micro_batch(
        &self,
        _model: &Decoder,
        _rows: &[&[usize]],
        _draw: u64,
    ) -> crate::error::Result<MicroLoss> {
        Err(crate::error::Error::Internal(
            "PPO trains on its rollouts (`Online`), not on rows".into(),
        ))
    }
}
