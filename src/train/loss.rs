//! Token-mean cross-entropy over masked tokens, computed in chunks of positions so that no
//! [tokens, vocab] logits tensor is kept alive for backward: each chunk's gradient with respect to
//! the hidden states and the output matrix is formed at once (softmax − one-hot), and a surrogate
//! scalar carries those gradients into autograd.

use super::target_logps::target_logps;
use crate::model::decoder::at_least_f32;
use crate::model::matmul::matmul;
use candle_core::Tensor;

pub struct ChunkedLoss {
    /// The loss value: Σ mask·nll / Σ mask.
    pub value: f64,
    /// Trained tokens (Σ mask).
    pub tokens: f64,
    /// Backpropagating this gives the gradients of the loss (its own value is not the loss).
    pub surrogate: Tensor,
}

/// `hidden` [n, h] (final-norm output), `head` [vocab, h], the raw logits mapped by `map`,
/// `targets` [n] ids, `mask` [n] (0/1).
pub fn chunked_nll(
    hidden: &Tensor,
    head: &Tensor,
    map: super::logps::LogitMap,
    targets: &[u32],
    mask: &[f32],
    chunk: usize,
) -> candle_core::Result<ChunkedLoss> {
    let n = targets.len();
    let tokens: f64 = mask.iter().map(|&m| m as f64).sum();
    let dtype = hidden.dtype();
    let h_detached = hidden.detach();
    // The output matrix computes in the activations' dtype; its gradient sums in its own.
    let w_detached = head.detach().to_dtype(hidden.dtype())?;
    let mut value = 0.0;
    let mut grad_h = Vec::new();
    let mut grad_w = super::head_grad::HeadGrad::new(head)?;
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.min(n - start);
        let h = h_detached.narrow(0, start, len)?;
        // Softmax statistics in f32 whatever the compute dtype.
        let (logits, slope) = map.apply(at_least_f32(&matmul(&h, &w_detached.t()?)?)?)?;
        let rows = start..start + len;
        // d(mean nll)/d logits = (softmax − onehot) · mask / tokens.
        let coefs: Vec<f32> = mask[rows.clone()]
            .iter()
            .map(|&m| (f64::from(m) / tokens.max(1.0)) as f32)
            .collect();
        let picked = target_logps(&logits, &targets[rows.clone()], Some(&coefs))?;
        value -= picked
            .logps
            .iter()
            .zip(&mask[rows])
            .map(|(&lp, &m)| f64::from(lp) * f64::from(m))
            .sum::<f64>();
        let g = picked.grad.expect("coefficients give a gradient");
        let g = slope.back(g)?.to_dtype(dtype)?;
        grad_h.push(matmul(&g, &w_detached)?);
        grad_w.add(&g, &h)?;
    }
    let surrogate = grad_w.surrogate(head, hidden, &Tensor::cat(&grad_h, 0)?)?;
    Ok(ChunkedLoss {
        value: value / tokens.max(1.0),
        tokens,
        surrogate,
    })
}
