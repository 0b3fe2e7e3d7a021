//! The output matrix's side of the chunked loss passes: its gradient summed over the chunks when
//! it trains, and the surrogate scalar that hands the hidden states' and its gradients to
//! autograd. A frozen head (LoRA, or a frozen tied embedding) gets no gradient product at all:
//! with a 32k vocabulary that product is a sixth of a LoRA step's matmul work.

use crate::model::matmul::matmul;
use candle_core::{Result, Tensor};

/// Σ over chunks of gᵀ·h for a head that trains; nothing for a frozen one.
pub struct HeadGrad(Option<Tensor>);

impl HeadGrad {
    pub fn new(head: &Tensor) -> Result<Self> {
        // A Var, or computed from one: autograd would take a gradient through it.
        Ok(Self(if head.track_op() {
            Some(head.detach().zeros_like()?)
        } else {
            None
        }))
    }

    /// Adds one chunk's gradient: `g` [rows, vocab] of the logits, `h` [rows, hidden].
    pub fn add(&mut self, g: &Tensor, h: &Tensor) -> Result<()> {
        if let Some(sum) = &mut self.0 {
            *sum = (&*sum + matmul(&g.t()?, h)?.to_dtype(sum.dtype())?)?;
        }
        Ok(())
    }

    /// A scalar whose gradient is `grad_h` for `hidden` and the summed gradient for `head`.
    pub fn surrogate(self, head: &Tensor, hidden: &Tensor, grad_h: &Tensor) -> Result<Tensor> {
        let hidden_term = (hidden * grad_h)?.sum_all()?.to_dtype(head.dtype())?;
        match self.0 {
            Some(grad_w) => hidden_term + (head * grad_w)?.sum_all()?,
            None => Ok(hidden_term),
        }
    }
}
