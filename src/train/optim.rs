//! AdamW as torch.optim.AdamW computes it: decoupled weight decay, bias-corrected moments, f32 state
//! per trainable variable (frozen weights have none).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    params: Vec<Param>,
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

impl AdamW {
    /// `vars` with their names; norms and biases get no weight decay.
    pub fn new(
        vars: &[(String, Var)],
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> candle_core::Result<AdamW> {
        let params = vars
            .iter()
            .map(|(name, var)| {
                Ok(Param {
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                    decay: !(name.contains("norm") || name.ends_with(".bias")),
                    var: var.clone(),
                    name: name.clone(),
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            params,
        })
    }

    /// The moments by variable name (`m.<name>`, `v.<name>`), for checkpoints.
    pub fn moments(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.clone()),
                    (format!("v.{}", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments [`moments`](Self::moments) returned and the step count.
    pub fn restore(
        &mut self,
        step: u64,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), String> {
        for p in &mut self.params {
            let get = |k: String| {
                tensors
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| format!("the checkpoint has no `{k}`"))
            };
            p.m = get(format!("m.{}", p.name))?;
            p.v = get(format!("v.{}", p.name))?;
        }
        self.step = step;
        Ok(())
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for p in &mut self.params {
            let Some(g) = grads.get(&p.var) else { continue };
            p.m = ((&p.m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            p.v = ((&p.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mut w = p.var.as_tensor().detach();
            if p.decay && self.weight_decay > 0.0 {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            let denom = ((&p.v / c2)?.sqrt()? + self.eps)?;
            let update = ((&p.m / c1)? / denom)?;
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }
}
