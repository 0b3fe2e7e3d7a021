//! Gradient checkpointing (`gradient_checkpointing = true`): a whole-sequence training forward keeps
//! each decoder layer's input and nothing from inside the layers; [`Decoder::backward`] then
//! recomputes the layers one at a time, last first, from those inputs (with the dropout masks they
//! drew the first time), so activation memory holds one layer's intermediates instead of every
//! layer's, for about one more forward of compute.

use super::decoder::{Decoder, Layer, LayerPast, Masks, Ropes};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What one checkpointed forward left for the backward.
struct Segment {
    ids: Tensor,
    ropes: Ropes,
    masks: Masks,
    /// Each layer's input (no graph behind it).
    inputs: Vec<Tensor>,
    /// The dropout generator's state as each layer began.
    dropout_states: Vec<u64>,
    /// The last layer's output as a leaf: the loss's backward stops here and leaves its gradient.
    top: Var,
}

/// The forwards recorded since the last backward; off unless a training loop turns it on.
#[derive(Default)]
pub struct Tape {
    on: AtomicBool,
    segments: Mutex<Vec<Segment>>,
}

impl Tape {
    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Layer {
    /// Every tensor of the layer that may train: weights, biases, norms, LoRA factors.
    fn trainable(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.input_norm, &self.post_norm];
        out.extend(
            [
                &self.q_norm,
                &self.k_norm,
                &self.pre_ff_norm,
                &self.post_ff_norm,
            ]
            .into_iter()
            .flatten(),
        );
        for lin in [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ] {
            out.push(&lin.weight);
            out.extend(&lin.bias);
            if let Some(l) = &lin.lora {
                out.extend([l.a.as_tensor(), l.b.as_tensor()]);
            }
        }
        out
    }
}

/// Adds the gradients `part` holds for `tensors` into `into`.
fn add_into(
    into: &mut GradStore,
    part: &mut GradStore,
    tensors: &[&Tensor],
) -> candle_core::Result<()> {
    for t in tensors {
        if let Some(g) = part.remove(t) {
            let sum = match into.get(t) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            into.insert(t, sum);
        }
    }
    Ok(())
}

impl Decoder {
    /// Turns gradient checkpointing on or off for this model's whole-sequence forwards (a training
    /// loop's; forwards with a KV cache are never recorded). Off drops what was recorded.
    pub fn set_gradient_checkpointing(&self, on: bool) {
        self.tape.on.store(on, Ordering::Relaxed);
        if !on {
            self.tape.segments().clear();
        }
    }

    /// The layers from embeddings `x` without keeping their graphs; the final norm of their output.
    pub(super) fn run_checkpointed(
        &self,
        x: Tensor,
        ids: &Tensor,
        ropes: Ropes,
        masks: &Masks,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.detach();
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut dropout_states = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let sliding = self.cfg.is_sliding(i);
            inputs.push(x.clone());
            dropout_states.push(self.dropout_state());
            let past = LayerPast::None(masks.for_layer(sliding)?);
            x = self
                .layer_forward(l, &x, ropes.for_layer(sliding), past, None)?
                .detach();
        }
        let top = Var::from_tensor(&x)?;
        let out = self.norm_with(top.as_tensor(), &self.norm)?;
        self.tape.segments().push(Segment {
            ids: ids.clone(),
            ropes,
            masks: masks.clone(),
            inputs,
            dropout_states,
            top,
        });
        Ok(out)
    }

    /// The gradients of `loss`, through the forwards gradient checkpointing recorded (each layer
    /// recomputed from its input and backpropagated on its own) as through ordinary ones.
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        let mut grads = loss.backward()?;
        let segments = std::mem::take(&mut *self.tape.segments());
        if segments.is_empty() {
            return Ok(grads);
        }
        let resume = self.dropout_state();
        for seg in segments.into_iter().rev() {
            // A forward the loss does not depend on (log-probs taken without gradient).
            let Some(mut g) = grads.remove(seg.top.as_tensor()) else {
                continue;
            };
            for (i, l) in self.layers.iter().enumerate().rev() {
                self.set_dropout_state(seg.dropout_states[i]);
                let x = Var::from_tensor(&seg.inputs[i])?;
                let sliding = self.cfg.is_sliding(i);
                let past = LayerPast::None(seg.masks.for_layer(sliding)?);
                let y =
                    self.layer_forward(l, x.as_tensor(), seg.ropes.for_layer(sliding), past, None)?;
                let mut part = (y * &g)?.sum_all()?.backward()?;
                g = part.remove(x.as_tensor()).ok_or_else(|| {
                    candle_core::Error::Msg(format!("no gradient reached layer {i}'s input"))
                })?;
                add_into(&mut grads, &mut part, &l.trainable())?;
            }
            let x = self.embed_ids(&seg.ids)?;
            let mut part = (x * &g)?.sum_all()?.backward()?;
            add_into(&mut grads, &mut part, &[&self.embed])?;
        }
        self.set_dropout_state(resume);
        Ok(grads)
    }
}
