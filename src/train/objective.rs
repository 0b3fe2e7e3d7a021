//! What a training objective gives the shared loop (`trainer`): the rows it shuffles and batches, and
//! each micro-batch's loss with the surrogate that carries its gradients.

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
