//! log p(target) for each row of a chunk of logits, and the gradient every trainer forms from them:
//! Σ_i c_i · (−log p_i) has gradient c_i · (softmax_i − one-hot_i) with respect to row i. On the CPU
//! in f32 one pass per row does both (the row's max, exp in SIMD lanes, the sum, the scaled
//! probabilities) where the composed ops take a dozen passes over [rows, vocab], several of them on
//! one thread; in f64 (the gradient checks) and on other devices the composed ops.

use crate::model::exp;
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

/// The log-probabilities of the targets, and the gradient where coefficients were given.
pub struct TargetLogps {
    /// log p(target) of each row.
    pub logps: Vec<f32>,
    /// c_i · (softmax_i − one-hot_i), [rows, vocab], in the logits' dtype.
    pub grad: Option<Tensor>,
}

/// `logits` [rows, vocab], `targets` one id per row, `coefs` (with a gradient) one c_i per row.
pub fn target_logps(
    logits: &Tensor,
    targets: &[u32],
    coefs: Option<&[f32]>,
) -> candle_core::Result<TargetLogps> {
    let (rows, vocab) = logits.dims2()?;
    if targets.len() != rows || coefs.is_some_and(|c| c.len() != rows) {
        candle_core::bail!(
            "target_logps: {rows} rows of logits, {} targets",
            targets.len()
        )
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target_logps: target {t} is outside the vocabulary of {vocab}")
    }
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        fused(&logits.contiguous()?, vocab, targets, coefs)
    } else {
        composed(logits, targets, coefs)
    }
}

/// One pass per row, rows shared out to rayon's threads.
fn fused(
    logits: &Tensor,
    vocab: usize,
    targets: &[u32],
    coefs: Option<&[f32]>,
) -> candle_core::Result<TargetLogps> {
    let (storage, layout) = logits.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("target_logps: the logits are not on the CPU")
    };
    let x = crate::model::fused::elements::<f32>(storage, layout)?;
    let row = |i: usize| &x[i * vocab..(i + 1) * vocab];
    // log p_t = (x_t − max) − ln Σ exp(x − max); `buf` takes the exponentials.
    let logp = |i: usize, buf: &mut [f32]| {
        buf.copy_from_slice(row(i));
        let max = exp::max(buf);
        let sum = exp::exp_sum(buf, max);
        let lp = f64::from(row(i)[targets[i] as usize] - max) - sum.ln();
        (lp as f32, sum)
    };
    let Some(coefs) = coefs else {
        let logps = (0..targets.len())
            .into_par_iter()
            .map_init(|| vec![0f32; vocab], |buf, i| logp(i, buf).0)
            .collect();
        return Ok(TargetLogps { logps, grad: None });
    };
    // Each row is written whole: the logits copied in, then scaled (no zero-fill of 16M values).
    let mut grad = crate::model::fused::unfilled::<f32>(x.len());
    let logps = grad
        .par_chunks_mut(vocab.max(1))
        .enumerate()
        .map(|(i, g)| {
            let (lp, sum) = logp(i, g);
            let c = coefs[i];
            let scale = (f64::from(c) / sum) as f32;
            for v in g.iter_mut() {
                *v *= scale;
            }
            g[targets[i] as usize] -= c;
            lp
        })
        .collect();
    let grad = Tensor::from_vec(grad, (targets.len(), vocab), logits.device())?;
    Ok(TargetLogps {
        logps,
        grad: Some(grad),
    })
}

/// The same from candle's ops.
fn composed(
    logits: &Tensor,
    targets: &[u32],
    coefs: Option<&[f32]>,
) -> candle_core::Result<TargetLogps> {
    let (rows, vocab) = logits.dims2()?;
    let (dev, dtype) = (logits.device(), logits.dtype());
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let tgt = Tensor::from_vec(targets.to_vec(), (rows, 1), dev)?;
    let logps = logp
        .gather(&tgt, 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let grad = match coefs {
        None => None,
        Some(c) => {
            let onehot = Tensor::zeros((rows, vocab), dtype, dev)?.scatter_add(
                &tgt,
                &Tensor::ones((rows, 1), dtype, dev)?,
                1,
            )?;
            let c = Tensor::from_vec(c.to_vec(), (rows, 1), dev)?.to_dtype(dtype)?;
            Some((logp.exp()? - onehot)?.broadcast_mul(&c)?)
        }
    };
    Ok(TargetLogps { logps, grad })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The fused f32 pass against the composed ops in f64 on the same logits: log-probs within
    /// 2e-6, gradients within 2e-7 (1.7e-7 measured: an f32 ulp of the coefficients, up to 2, where
    /// the target's p_t·c − c cancels), on rows wide enough for
    /// the SIMD lanes and a remainder, with a target at each end of the vocabulary and a zero
    /// coefficient.
    #[test]
    fn fused_equals_the_composed_ops() {
        let (rows, vocab) = (5, 37);
        let mut rng = crate::model::lora::Rng::new(9);
        let v: Vec<f32> = (0..rows * vocab).map(|_| 4.0 * rng.normal()).collect();
        let targets = [0u32, 36, 7, 20, 3];
        let coefs = [0.5f32, -1.25, 0.0, 2.0, 1.0];
        let f32s = Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap();
        let f64s = f32s.to_dtype(candle_core::DType::F64).unwrap();
        let fused = super::target_logps(&f32s, &targets, Some(&coefs)).unwrap();
        let composed = super::target_logps(&f64s, &targets, Some(&coefs)).unwrap();
        let only = super::target_logps(&f32s, &targets, None).unwrap();
        assert!(only.grad.is_none());
        for ((a, b), c) in fused.logps.iter().zip(&composed.logps).zip(&only.logps) {
            assert!((a - b).abs() < 2e-6, "{a} against {b}");
            assert_eq!(a.to_bits(), c.to_bits());
        }
        let (g, want) = (fused.grad.unwrap(), composed.grad.unwrap());
        let g = g.to_dtype(candle_core::DType::F64).unwrap();
        let diff = (&g - &want).unwrap().abs().unwrap().flatten_all().unwrap();
        let worst = diff.max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(worst < 2e-7, "{worst}");
        let row2 = g.get(2).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(
            row2.to_scalar::<f64>().unwrap(),
            0.0,
            "c = 0 gives no gradient"
        );
        assert!(super::target_logps(&f32s, &[0, 1, 2, 3, 37], None).is_err());
    }
}
