//! Sequence log-probabilities for preference objectives, chunked over positions so that no
//! [tokens, vocab] logits tensor is kept for backward: one pass reads each position's log-probability
//! of its target (no graph), the objective turns their per-sequence sums into a loss and the loss's
//! derivative per sequence, and a second pass forms the gradient of Σ_t w_t · log p_t directly
//! (w_t · (one-hot − softmax) per position), carried into autograd by a surrogate scalar.

use super::target_logps::target_logps;
use crate::model::decoder::{at_least_f32, Decoder};
use crate::model::matmul::matmul;
use candle_core::Tensor;

/// How a chunk's raw logits (h·Wᵀ) become the logits the log-probs are taken of: soft-capped as
/// c·tanh(l / c) (Gemma 2's final soft-capping, part of the model), then divided by a sampling
/// temperature (GRPO, as TRL divides the model's logits).
#[derive(Clone, Copy, Debug)]
pub struct LogitMap {
    pub cap: Option<f64>,
    pub temperature: f64,
}

/// The derivative of mapped logits with respect to the raw ones: (1 − tanh²) under a cap, times
/// 1 / temperature.
pub struct Slope {
    tanh_slope: Option<Tensor>,
    scale: f64,
}

impl Slope {
    /// A gradient with respect to the mapped logits carried back to the raw ones.
    pub fn back(&self, g: Tensor) -> candle_core::Result<Tensor> {
        let g = match &self.tanh_slope {
            Some(s) => (g * s)?,
            None => g,
        };
        if self.scale == 1.0 {
            Ok(g)
        } else {
            g.affine(self.scale, 0.0)
        }
    }
}

impl LogitMap {
    /// The model's own logits (its soft-capping, temperature 1).
    pub fn of(model: &Decoder) -> LogitMap {
        LogitMap {
            cap: model.cfg.final_logit_softcapping,
            temperature: 1.0,
        }
    }

    /// The mapped logits and their slope.
    pub fn apply(self, raw: Tensor) -> candle_core::Result<(Tensor, Slope)> {
        let (logits, tanh_slope) = match self.cap {
            None => (raw, None),
            Some(c) => {
                let t = (raw / c)?.tanh()?;
                let slope = t.sqr()?.affine(-1.0, 1.0)?;
                ((t * c)?, Some(slope))
            }
        };
        let logits = if self.temperature == 1.0 {
            logits
        } else {
            (logits / self.temperature)?
        };
        Ok((
            logits,
            Slope {
                tanh_slope,
                scale: 1.0 / self.temperature,
            },
        ))
    }
}

/// log p(target) at each position: `hidden` [n, h] (final-norm output), `head` [vocab, h], the raw
/// logits mapped by `map`.
pub fn token_logps(
    hidden: &Tensor,
    head: &Tensor,
    map: LogitMap,
    targets: &[u32],
    chunk: usize,
) -> candle_core::Result<Vec<f32>> {
    let h = hidden.detach();
    let w = head.detach().to_dtype(hidden.dtype())?;
    let mut out = Vec::with_capacity(targets.len());
    for start in (0..targets.len()).step_by(chunk.max(1)) {
        let len = chunk.min(targets.len() - start);
        // Softmax statistics in f32 whatever the compute dtype.
        let logits = matmul(&h.narrow(0, start, len)?, &w.t()?)?;
        let (logits, _) = map.apply(at_least_f32(&logits)?)?;
        out.extend(target_logps(&logits, &targets[start..start + len], None)?.logps);
    }
    Ok(out)
}

/// A scalar whose gradient (through `hidden` and `head`) is the gradient of Σ_t weights_t · log p_t.
pub fn weighted_logp_surrogate(
    hidden: &Tensor,
    head: &Tensor,
    map: LogitMap,
    targets: &[u32],
    weights: &[f32],
    chunk: usize,
) -> candle_core::Result<Tensor> {
    let dtype = hidden.dtype();
    let dev = hidden.device();
    let h_detached = hidden.detach();
    // The output matrix computes in the activations' dtype; its gradient sums in its own.
    let w_detached = head.detach().to_dtype(hidden.dtype())?;
    let mut grad_h = Vec::new();
    let mut grad_w = super::head_grad::HeadGrad::new(head)?;
    for start in (0..targets.len()).step_by(chunk.max(1)) {
        let len = chunk.min(targets.len() - start);
        if weights[start..start + len].iter().all(|w| *w == 0.0) {
            grad_h.push(Tensor::zeros((len, h_detached.dim(1)?), dtype, dev)?);
            continue;
        }
        let h = h_detached.narrow(0, start, len)?;
        let (logits, slope) = map.apply(at_least_f32(&matmul(&h, &w_detached.t()?)?)?)?;
        // d(w · log p_target)/d logits = w · (one-hot − softmax): the coefficient is −w.
        let coefs: Vec<f32> = weights[start..start + len].iter().map(|w| -w).collect();
        let g = target_logps(&logits, &targets[start..start + len], Some(&coefs))?
            .grad
            .expect("coefficients give a gradient");
        let g = slope.back(g)?.to_dtype(dtype)?;
        grad_h.push(matmul(&g, &w_detached)?);
        grad_w.add(&g, &h)?;
    }
    grad_w.surrogate(head, hidden, &Tensor::cat(&grad_h, 0)?)
}

/// Positions per chunk of the log-prob passes and the supervised loss: about 16M logits (64 MB in
/// f32; PyTorch keeps all of a batch's). Each chunk multiplies by the whole output matrix, so each
/// packs it again: with 4M (128 positions at a 32k vocabulary) that packing cost a LoRA step 5–16%
/// and a full one 10%, for 100–130 MB less peak memory.
pub fn chunk(model: &Decoder) -> usize {
    ((16 << 20) / model.cfg.vocab_size.max(1)).clamp(16, 8192)
}

/// [`token_logps`] through `model`'s output head (its matrix, its soft-capping, its chunk size), the
/// logits divided by `temperature`.
pub fn model_token_logps(
    model: &Decoder,
    hidden: &Tensor,
    targets: &[u32],
    temperature: f64,
) -> candle_core::Result<Vec<f32>> {
    let map = LogitMap {
        temperature,
        ..LogitMap::of(model)
    };
    token_logps(hidden, model.head(), map, targets, chunk(model))
}

/// [`weighted_logp_surrogate`] through `model`'s output head, the logits divided by `temperature`.
pub fn model_surrogate(
    model: &Decoder,
    hidden: &Tensor,
    targets: &[u32],
    weights: &[f32],
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let map = LogitMap {
        temperature,
        ..LogitMap::of(model)
    };
    weighted_logp_surrogate(hidden, model.head(), map, targets, weights, chunk(model))
}
