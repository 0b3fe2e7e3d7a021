//! Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_: every gradient is scaled by
//! max_norm / (total_norm + 1e-6) when the total norm exceeds max_norm.

use candle_core::backprop::GradStore;
use candle_core::Var;

/// Clips in place; returns the total norm before clipping (what trainers log as grad_norm).
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[(String, Var)],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let mut sum = 0.0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v) {
            sum += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sum.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, v) in vars {
            if let Some(g) = grads.get(v) {
                let scaled = (g * scale)?;
                grads.insert(v, scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clips_to_the_global_norm_like_torch() {
        let a = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        // d/da of 3·a = 3, d/db of 4·b = 4: total norm √(9 + 9 + 16) = √34.
        let loss = ((a.as_tensor() * 3.0).unwrap().sum_all().unwrap()
            + (b.as_tensor() * 4.0).unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((norm - 34f64.sqrt()).abs() < 1e-5);
        let after: f64 = vars
            .iter()
            .map(|(_, v)| {
                grads
                    .get(v)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            })
            .sum::<f64>()
            .sqrt();
        assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");
        let unchanged = clip_grad_norm(&mut grads, &vars, 10.0).unwrap();
        assert!((unchanged - after).abs() < 1e-6);
    }
}
