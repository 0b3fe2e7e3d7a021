//! Sequence log-probabilities for preference objectives, chunked over positions so that no
//! [tokens, vocab] logits tensor is kept for backward: one pass reads each position's log-probability
//! of its target (no graph), the objective turns their per-sequence sums into a loss and the loss's
//! derivative per sequence, and a second pass forms the gradient of Σ_t w_t · log p_t directly
//! (w_t · (one-hot − softmax) per position), carried into autograd by a surrogate scalar.

use crate::model::decoder::{at_least_f32, Decoder};
use candle_core::{Tensor, D};

/// Logits of a chunk soft-capped as c·tanh(l / c) (Gemma 2's final soft-capping), and the
/// derivative of the capped logits with respect to the raw ones (1 − tanh²), when there is a cap.
pub fn capped(logits: Tensor, cap: Option<f64>) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    match cap {
        None => Ok((logits, None)),
        Some(c) => {
            let t = (logits / c)?.tanh()?;
            let slope = t.sqr()?.affine(-1.0, 1.0)?;
            Ok(((t * c)?, Some(slope)))
        }
    }
}

/// log p(target) at each position: `hidden` [n, h] (final-norm output), `head` [vocab, h], logits
/// soft-capped at `cap` when given.
pub fn token_logps(
    hidden: &Tensor,
    head: &Tensor,
    cap: Option<f64>,
    targets: &[u32],
    chunk: usize,
) -> candle_core::Result<Vec<f32>> {
    let h = hidden.detach();
    let w = head.detach().to_dtype(hidden.dtype())?;
    let mut out = Vec::with_capacity(targets.len());
    for start in (0..targets.len()).step_by(chunk.max(1)) {
        let len = chunk.min(targets.len() - start);
        // Softmax statistics in f32 whatever the compute dtype.
        let logits = h.narrow(0, start, len)?.matmul(&w.t()?)?;
        let (logits, _) = capped(at_least_f32(&logits)?, cap)?;
        let logp = log_softmax(&logits)?;
        let tgt = Tensor::from_vec(targets[start..start + len].to_vec(), (len, 1), h.device())?;
        out.extend(logp.gather(&tgt, 1)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// A scalar whose gradient (through `hidden` and `head`) is the gradient of Σ_t weights_t · log p_t.
pub fn weighted_logp_surrogate(
    hidden: &Tensor,
    head: &Tensor,
    cap: Option<f64>,
    targets: &[u32],
    weights: &[f32],
    chunk: usize,
) -> candle_core::Result<Tensor> {
    let dtype = hidden.dtype();
    let dev = hidden.device();
    let h_detached = hidden.detach();
    // The output matrix computes in the activations' dtype; its gradient sums in its own.
    let w_detached = head.detach().to_dtype(hidden.dtype())?;
    let vocab = head.dim(0)?;
    let mut grad_h = Vec::new();
    let mut grad_w = head.detach().zeros_like()?;
    for start in (0..targets.len()).step_by(chunk.max(1)) {
        let len = chunk.min(targets.len() - start);
        if weights[start..start + len].iter().all(|w| *w == 0.0) {
            grad_h.push(Tensor::zeros((len, h_detached.dim(1)?), dtype, dev)?);
            continue;
        }
        let h = h_detached.narrow(0, start, len)?;
        let (logits, slope) = capped(at_least_f32(&h.matmul(&w_detached.t()?)?)?, cap)?;
        let probs = log_softmax(&logits)?.exp()?;
        let stat = probs.dtype();
        let tgt = Tensor::from_vec(targets[start..start + len].to_vec(), (len, 1), dev)?;
        let onehot = Tensor::zeros((len, vocab), stat, dev)?.scatter_add(
            &tgt,
            &Tensor::ones((len, 1), stat, dev)?,
            1,
        )?;
        let wt = Tensor::from_vec(weights[start..start + len].to_vec(), (len, 1), dev)?
            .to_dtype(stat)?;
        // d(w · log p_target)/d logits = w · (one-hot − softmax), formed in f32.
        let mut g = (onehot - probs)?.broadcast_mul(&wt)?;
        if let Some(slope) = &slope {
            g = (g * slope)?;
        }
        let g = g.to_dtype(dtype)?;
        grad_h.push(g.matmul(&w_detached)?);
        grad_w = (grad_w + g.t()?.matmul(&h)?.to_dtype(head.dtype())?)?;
    }
    let grad_h = Tensor::cat(&grad_h, 0)?;
    let head_term = (head * grad_w)?.sum_all()?;
    (hidden * grad_h)?.sum_all()?.to_dtype(head_term.dtype())? + head_term
}

/// Positions per chunk of the log-prob passes: about 4M logits, as the supervised loss.
pub fn chunk(model: &Decoder) -> usize {
    ((4 << 20) / model.cfg.vocab_size.max(1)).clamp(16, 8192)
}

/// [`token_logps`] through `model`'s output head: its matrix, its soft-capping, its chunk size.
pub fn model_token_logps(
    model: &Decoder,
    hidden: &Tensor,
    targets: &[u32],
) -> candle_core::Result<Vec<f32>> {
    token_logps(
        hidden,
        model.head(),
        model.cfg.final_logit_softcapping,
        targets,
        chunk(model),
    )
}

/// [`weighted_logp_surrogate`] through `model`'s output head.
pub fn model_surrogate(
    model: &Decoder,
    hidden: &Tensor,
    targets: &[u32],
    weights: &[f32],
) -> candle_core::Result<Tensor> {
    weighted_logp_surrogate(
        hidden,
        model.head(),
        model.cfg.final_logit_softcapping,
        targets,
        weights,
        chunk(model),
    )
}
