//! What a training objective gives the shared loop (`trainer`): the rows it shuffles and batches, and
//! each micro-batch's loss with the surrogate that carries its gradients.

use super::collective::Collective;
use crate::model::decoder::Decoder;
use candle_core::Tensor;

/// One micro-batch's share of a step.
pub struct MicroLoss {
    /// Backpropagating this gives the gradient of `value` (its own value is not the loss).
    pub surrogate: Tensor,
    /// The loss summed over the micro-batch's units (trained tokens, pairs).
    pub value: f64,
    /// How many units: the step's loss is Σ value / Σ weight, and its gradient likewise.
    pub weight: f64,
    /// Tokens trained on, for tokens/s.
    pub tokens: f64,
    /// Metrics (TRL's names): each a sum and the count it is a sum over, logged as Σ sum / Σ count
    /// over the step's micro-batches (a metric with no count in the step is not logged).
    pub metrics: Vec<Metric>,
}

/// One metric's share of a micro-batch.
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub sum: f64,
    pub count: f64,
}

/// `names` paired with `sums`, every one over the same `count` units.
pub fn metrics_over(names: &[&'static str], sums: &[f64], count: f64) -> Vec<Metric> {
    names
        .iter()
        .zip(sums)
        .map(|(&name, &sum)| Metric { name, sum, count })
        .collect()
}

pub trait Objective {
    /// Groups of example indices (a packed row, a preference pair): the loop's unit of data order.
    fn rows(&self) -> &[Vec<usize>];
    /// The largest micro-batch of `batch_size` rows as the model sees it: (sequences, positions).
    fn batch_shape(&self, batch_size: usize) -> (usize, usize);
    /// Whether the loop reads rows in their order every epoch instead of a seeded shuffle (KTO: its
    /// mismatched pairs are built from neighbouring rows, as TRL's sequential sampler reads them).
    fn sequential(&self) -> bool {
        false
    }
    /// Whether the model's dropout is on while it trains (PPO turns it off in every model, as TRL
    /// does: its ratios compare log-probs of one deterministic policy).
    fn dropout(&self) -> bool {
        true
    }
    /// An online objective that samples rollouts once per step and trains several optimizer steps
    /// on them (PPO); `None` for one optimizer step of `micro_batch`es per loop step.
    fn online(&self) -> Option<&dyn Online> {
        None
    }
    /// The loss of a micro-batch of rows. `draw` seeds whatever the objective samples (an online
    /// objective's completions): the loop derives it from the stage's seed, the step and the
    /// micro-batch, so a resumed run draws the same.
    fn micro_batch(
        &self,
        model: &Decoder,
        rows: &[&[usize]],
        draw: u64,
    ) -> crate::error::Result<MicroLoss>;
}

/// An objective whose loop step samples a batch of rollouts from the policy and then makes
/// `epochs` passes over it, each a fresh shuffle of the batch cut into `mini_batches` optimizer
/// steps (PPO). Rollouts live within one loop step, so a checkpoint (taken between steps) never
/// needs them.
pub trait Online {
    fn epochs(&self) -> usize;
    fn mini_batches(&self) -> usize;
    /// Whether each pass reads the rollouts in a fresh shuffle (PPO) or in their order (GRPO).
    fn shuffle(&self) -> bool {
        true
    }
    /// How the workers of a data-parallel stage share a step's rollouts.
    fn sharing(&self) -> Sharing {
        if self.mini_batches() == 1 && !self.shuffle() {
            Sharing::Own
        } else {
            Sharing::Gathered
        }
    }
    /// Slots per micro-batch when the stage's micro-batch is `batch_size` rows.
    fn slots_per_micro_batch(&self, batch_size: usize) -> usize {
        batch_size
    }
    /// The rollouts of `rows` (one loop step's, `batch_size` per micro-batch); `draw(i)` seeds the
    /// sampling of the step's micro-batch i. On a worker of `group` the rows are the worker's
    /// micro-batches, and an objective of [`Sharing::Gathered`] returns the whole step's rollouts.
    fn sample<'s>(
        &'s self,
        model: &Decoder,
        rows: &[&[usize]],
        batch_size: usize,
        draw: &dyn Fn(usize) -> u64,
        group: Option<&dyn Collective>,
    ) -> crate::error::Result<Box<dyn Rollouts + 's>>;
}

/// How the workers of a data-parallel stage divide an online objective's step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sharing {
    /// Each worker samples and trains on the rollouts of its own micro-batches: every update takes
    /// the whole batch in its order (one mini-batch, no shuffle), so a worker's share of each update
    /// is all of its own rollouts, and nothing is computed over the whole batch (the rollouts'
    /// metrics come with the updates, [`Rollouts::metrics`] empty). GRPO.
    Own,
    /// Each worker samples and measures its own micro-batches, then the workers gather them, so
    /// that every worker holds the whole batch in its one-process order: its batch-wide statistics
    /// (PPO's whitened advantages, the width of its padded grid) and metrics, and its shuffle (the
    /// workers' data-order generators agree). Micro-batch i of each update is worker i mod N's.
    Gathered,
}

/// One loop step's rollouts, read by slot.
pub trait Rollouts {
    /// How many rollouts (slots 0..count).
    fn count(&self) -> usize;
    /// The loss of the rollouts at `slots`, under the policy as it now is.
    fn micro_batch(&self, model: &Decoder, slots: &[usize]) -> crate::error::Result<MicroLoss>;
    /// What the rollouts themselves measure (rewards, KL), logged once per step.
    fn metrics(&self) -> Vec<Metric>;
}
