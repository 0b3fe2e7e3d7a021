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
    /// Metrics summed over units (TRL's names), logged as Σ / Σ weight.
    pub metrics: Vec<(&'static str, f64)>,
}

pub trait Objective {
    /// Groups of example indices (a packed row, a preference pair): the loop's unit of data order.
    fn rows(&self) -> &[Vec<usize>];
    /// The largest micro-batch of `batch_size` rows as the model sees it: (sequences, positions).
    fn batch_shape(&self, batch_size: usize) -> (usize, usize);
    /// The loss of a micro-batch of rows.
    fn micro_batch(&self, model: &Decoder, rows: &[&[usize]]) -> crate::error::Result<MicroLoss>;
}
