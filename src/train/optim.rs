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
    /// Whether CPU variables update in place ([`super::adamw_cpu`]); the composed ops otherwise
    /// (the same bits: the tests compare the two).
    in_place: bool,
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
            in_place: true,
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
            let w = p.var.as_tensor();
            if self.in_place && super::adamw_cpu::applies(w, g, &p.m, &p.v) {
                let decay = p.decay && self.weight_decay > 0.0;
                let k = super::adamw_cpu::StepConstants {
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    decay: decay.then_some(1.0 - lr * self.weight_decay),
                    lr,
                    c1,
                    c2,
                };
                super::adamw_cpu::step(w, g, &p.m, &p.v, k)?;
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The in-place update and the composed ops give the same weights and moments bit for bit over
    /// several steps, with and without weight decay (norms get none), in f32 and f64.
    #[test]
    fn the_in_place_update_is_the_composed_one_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            let dev = Device::Cpu;
            let shapes = [("w.proj", (300, 129)), ("layer.norm", (1, 7))];
            let make = || -> Vec<(String, Var)> {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(i, (name, shape))| {
                        let t = Tensor::randn(i as f32, 1.0, *shape, &dev)
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap();
                        (name.to_string(), Var::from_tensor(&t).unwrap())
                    })
                    .collect()
            };
            let (a, b) = (make(), make());
            // Same starting weights in both.
            for ((_, va), (_, vb)) in a.iter().zip(&b) {
                vb.set(va.as_tensor()).unwrap();
            }
            let mut fast = AdamW::new(&a, 0.9, 0.999, 1e-8, 0.1).unwrap();
            let mut slow = AdamW::new(&b, 0.9, 0.999, 1e-8, 0.1).unwrap();
            slow.in_place = false;
            let start = a[0].1.as_tensor().copy().unwrap();
            for step in 0..4 {
                let loss = |vars: &[(String, Var)]| {
                    vars.iter()
                        .map(|(_, v)| {
                            (v.as_tensor().sqr().unwrap().sin().unwrap() * (step as f64 + 1.5))
                                .unwrap()
                                .sum_all()
                                .unwrap()
                        })
                        .reduce(|x, y| (x + y).unwrap())
                        .unwrap()
                };
                let grads = loss(&a).backward().unwrap();
                let (w, g) = (a[0].1.as_tensor(), grads.get(&a[0].1).unwrap());
                assert!(
                    super::super::adamw_cpu::applies(w, g, w, w),
                    "not the in-place path"
                );
                fast.step(&grads, 1e-2).unwrap();
                slow.step(&loss(&b).backward().unwrap(), 1e-2).unwrap();
            }
            fn bits(t: &Tensor) -> Vec<u64> {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            }
            for ((_, va), (_, vb)) in a.iter().zip(&b) {
                assert_eq!(bits(va.as_tensor()), bits(vb.as_tensor()), "{dtype:?}");
            }
            for ((_, ma), (_, mb)) in fast.moments().iter().zip(&slow.moments()) {
                assert_eq!(bits(ma), bits(mb), "{dtype:?}");
            }
            // The steps moved the weights (the comparison above is not of untouched tensors).
            assert_ne!(bits(a[0].1.as_tensor()), bits(&start));
        }
    }
}
