//! Fused CPU ops with their own backward, for the decoder's chains of small element-wise ops:
//! RMSNorm, the attention's mask-and-softmax and the rotary embedding, each in one pass forward and
//! one pass backward instead of several composed ops and their backwards (each an allocation, a
//! tensor kept for the backward, and a trip through candle's dispatch). f32 and f64 on the CPU;
//! other dtypes and devices keep the composed path.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;
use std::ops::Neg;

/// Below this many elements a loop over rows stays on the calling thread.
pub(super) const PARALLEL_FROM: usize = 1 << 16;

/// Whether [`rms_norm`] applies to `x` and `w`.
pub fn fusable(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == w.dtype() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// x / √(mean(x²) + eps) · w over the last dimension, with a fused backward.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

/// The elements of a contiguous operand of candle's element type `T` (the fused ops compute in
/// f64 and store back in `T`; the in-place AdamW computes in `T`).
pub(crate) fn elements<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((from, to)) => Ok(&T::cpu_storage_as_slice(s)?[from..to]),
        None => candle_core::bail!("a non-contiguous operand to a fused op"),
    }
}

/// `body` with `$t` the element type of `dtype` (f32 or f64), its result as storage.
macro_rules! by_dtype {
    ($op:expr, $dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                <$t as WithDType>::to_cpu_storage_owned($body)
            }
            DType::F64 => {
                type $t = f64;
                <$t as WithDType>::to_cpu_storage_owned($body)
            }
            other => candle_core::bail!("{}: {other:?}", $op),
        }
    };
}
pub(super) use by_dtype;

/// An output vector before a kernel writes each of its elements: zero-filling it first would be
/// a memset overwritten unread (2–3% of a training step); candle allocates its own outputs so.
/// The kernels that use it (the bf16 products, the fused ops here and in `swiglu`) store every
/// element; their tests start from NaN or compare every element with the composed ops.
#[allow(clippy::uninit_vec)]
pub(crate) fn unfilled<T: Copy>(len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    // SAFETY: T is plain numbers (f32, f64 or bf16: any bit pattern valid); the caller hands the
    // vector to a kernel that writes each element before anything reads it.
    unsafe { out.set_len(len) };
    out
}

/// 1 / √(mean(row²) + eps).
fn inverse_rms<T: WithDType>(row: &[T], eps: f64) -> f64 {
    let ms = super::rowsum::dot(row, row) / row.len() as f64;
    1.0 / (ms + eps).sqrt()
}

/// `f` on each row of `out` with the matching rows of `inputs`, on the thread pool when big.
pub(super) fn each_row<T: WithDType>(
    out: &mut [T],
    h: usize,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    if out.len() >= PARALLEL_FROM {
        out.par_chunks_mut(h).enumerate().for_each(|(i, o)| f(i, o));
    } else {
        out.chunks_mut(h).enumerate().for_each(|(i, o)| f(i, o));
    }
}

struct RmsNorm {
    eps: f64,
}

fn norm_forward<T: WithDType>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut out = unfilled::<T>(x.len());
    each_row(&mut out, h, |i, o| {
        let row = &x[i * h..(i + 1) * h];
        let r = inverse_rms(row, eps);
        for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
            *o = T::from_f64(v.to_f64() * r * w.to_f64());
        }
    });
    out
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = wl.shape().elem_count();
        if xl.shape().dims().last() != Some(&h) {
            candle_core::bail!("fused-rms-norm: x's last dimension is not the weight's {h}")
        }
        let out = by_dtype!(self.name(), xs.dtype(), |T| norm_forward(
            elements::<T>(xs, xl)?,
            elements::<T>(ws, wl)?,
            self.eps
        ));
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let rows = x.elem_count() / h.max(1);
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &RmsNormGrad { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm's gradients in one pass: [rows + 1, h], x's gradient in the first rows and w's in the
/// last. With x̂ = x·r, r = 1/√(mean(x²) + eps) and g the output's gradient:
/// dx = r · (g⊙w − x̂ · mean(g⊙w⊙x̂)), dw = Σ_rows g⊙x̂.
struct RmsNormGrad {
    eps: f64,
}

fn norm_backward<T: WithDType>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let rows = x.len() / h.max(1);
    let mut out = unfilled::<T>(x.len() + h);
    let (dx, dw_row) = out.split_at_mut(x.len());
    each_row(dx, h, |i, o| {
        let (row, grow) = (&x[i * h..(i + 1) * h], &g[i * h..(i + 1) * h]);
        let r = inverse_rms(row, eps);
        let dot = super::rowsum::dot3(grow, w, row) * r / h as f64;
        for (((o, v), g), w) in o.iter_mut().zip(row).zip(grow).zip(w) {
            *o = T::from_f64(r * (g.to_f64() * w.to_f64() - v.to_f64() * r * dot));
        }
    });
    let partial = |range: std::ops::Range<usize>| {
        let mut acc = vec![0f64; h];
        for i in range {
            let (row, grow) = (&x[i * h..(i + 1) * h], &g[i * h..(i + 1) * h]);
            let r = inverse_rms(row, eps);
            for ((a, v), g) in acc.iter_mut().zip(row).zip(grow) {
                *a += g.to_f64() * v.to_f64() * r;
            }
        }
        acc
    };
    let dw = if x.len() >= PARALLEL_FROM {
        let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
        (0..rows.div_ceil(chunk))
            .into_par_iter()
            .map(|c| partial(c * chunk..((c + 1) * chunk).min(rows)))
            .reduce(
                || vec![0f64; h],
                |a, b| a.iter().zip(&b).map(|(a, b)| a + b).collect(),
            )
    } else {
        partial(0..rows)
    };
    for (o, v) in dw_row.iter_mut().zip(dw) {
        *o = T::from_f64(v);
    }
    out
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / h.max(1);
        let out = by_dtype!(self.name(), xs.dtype(), |T| norm_backward(
            elements::<T>(xs, xl)?,
            elements::<T>(ws, wl)?,
            elements::<T>(gs, gl)?,
            self.eps
        ));
        Ok((out, Shape::from((rows + 1, h))))
    }
}

/// Whether [`masked_softmax`] applies: scores [b, h, t, k] and an additive mask [b, 1, t, k] or
/// [1, 1, t, k].
pub fn softmax_fusable(scores: &Tensor, mask: &Tensor) -> bool {
    let (Ok((b, _, t, k)), Ok(m)) = (scores.dims4(), mask.dims4()) else {
        return false;
    };
    scores.device().is_cpu()
        && scores.dtype() == mask.dtype()
        && matches!(scores.dtype(), DType::F32 | DType::F64)
        && (m == (b, 1, t, k) || m == (1, 1, t, k))
}

/// softmax(scores + mask) over the last dimension, the mask shared by every head; its backward
/// reads only the probabilities (the mask takes no gradient).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    scores
        .contiguous()?
        .apply_op2(&mask.contiguous()?, MaskedSoftmax)
}

struct MaskedSoftmax;

/// The mask row of scores row i, which is (batch, head, query): the mask's (batch, query) row, or
/// its (query) row when one mask [t, k] serves every batch row.
fn mask_row<T>(mask: &[T], i: usize, heads: usize, t: usize, k: usize) -> &[T] {
    let batch = if mask.len() == t * k {
        0
    } else {
        i / (heads * t)
    };
    let at = (batch * t + i % t) * k;
    &mask[at..at + k]
}

fn softmax_forward<T: WithDType>(x: &[T], mask: &[T], heads: usize, t: usize, k: usize) -> Vec<T> {
    let mut out = unfilled::<T>(x.len());
    each_row(&mut out, k, |i, o| {
        let m = mask_row(mask, i, heads, t, k);
        let row = &x[i * k..(i + 1) * k];
        let max = row
            .iter()
            .zip(m)
            .map(|(v, m)| v.to_f64() + m.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for ((o, v), m) in o.iter_mut().zip(row).zip(m) {
            let e = (v.to_f64() + m.to_f64() - max).exp();
            sum += e;
            *o = T::from_f64(e);
        }
        for o in o.iter_mut() {
            *o = T::from_f64(o.to_f64() / sum);
        }
    });
    out
}

/// [`softmax_forward`] in f32 for f32 (as transformers computes an f32 softmax), its exp in SIMD
/// lanes ([`super::exp`]); the f64 path stays for the gradient checks.
fn softmax_forward_f32(x: &[f32], mask: &[f32], heads: usize, t: usize, k: usize) -> Vec<f32> {
    let mut out = unfilled::<f32>(x.len());
    each_row(&mut out, k, |i, o| {
        let m = mask_row(mask, i, heads, t, k);
        for ((o, v), m) in o.iter_mut().zip(&x[i * k..(i + 1) * k]).zip(m) {
            *o = v + m;
        }
        let sum = super::exp::exp_sum(o, super::exp::max(o)) as f32;
        for o in o.iter_mut() {
            *o /= sum;
        }
    });
    out
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, heads, t, k) = xl.shape().dims4()?;
        if (xs.dtype(), ms.dtype()) == (DType::F32, DType::F32) {
            let (x, mask) = (elements::<f32>(xs, xl)?, elements::<f32>(ms, ml)?);
            let out = softmax_forward_f32(x, mask, heads, t, k);
            return Ok((CpuStorage::F32(out), xl.shape().clone()));
        }
        let out = by_dtype!(self.name(), xs.dtype(), |T| softmax_forward(
            elements::<T>(xs, xl)?,
            elements::<T>(ms, ml)?,
            heads,
            t,
            k
        ));
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?;
        Ok((Some(dx), None))
    }
}

/// Softmax's input gradient from its output y and the output's gradient g: y ⊙ (g − Σ g⊙y), per row.
struct SoftmaxGrad;

fn softmax_backward<T: WithDType>(y: &[T], g: &[T], k: usize) -> Vec<T> {
    let mut out = unfilled::<T>(y.len());
    each_row(&mut out, k, |i, o| {
        let (yr, gr) = (&y[i * k..(i + 1) * k], &g[i * k..(i + 1) * k]);
        let dot = super::rowsum::dot(yr, gr);
        for ((o, y), g) in o.iter_mut().zip(yr).zip(gr) {
            *o = T::from_f64(y.to_f64() * (g.to_f64() - dot));
        }
    });
    out
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = yl.shape().dims().last().copied().unwrap_or(1).max(1);
        let out = by_dtype!(self.name(), ys.dtype(), |T| softmax_backward(
            elements::<T>(ys, yl)?,
            elements::<T>(gs, gl)?,
            k
        ));
        Ok((out, yl.shape().clone()))
    }
}

/// Whether [`rope`] applies: `x` [b, h, t, d] with an even d, `cos` and `sin` [b or 1, 1, t, d].
pub fn rope_fusable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> bool {
    let (Ok((b, _, t, d)), Ok((cb, one, ct, cd))) = (x.dims4(), cos.dims4()) else {
        return false;
    };
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && cos.dtype() == x.dtype()
        && sin.dtype() == x.dtype()
        && sin.dims() == cos.dims()
        && d % 2 == 0
        && (cb == b || cb == 1)
        && (one, ct, cd) == (1, t, d)
}

/// x·cos + rotate_half(x)·sin, with rotate_half(x) = [−x₂, x₁] over the halves of the last
/// dimension, as transformers' `apply_rotary_pos_emb`. The same products and the same two-term sum
/// as the composed ops, in x's own type, so the value and the gradient are bit for bit the composed
/// ones; only the output is kept, where the composed chain keeps four tensors of x's size.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { inverse: false },
    )
}

/// The rotation (`inverse: false`), or its transpose applied to a gradient (`inverse: true`):
/// g·cos + [g₂·sin₂, −(g₁·sin₁)], which is what the composed chain's backward sums.
struct Rope {
    inverse: bool,
}

fn rope_kernel<T: WithDType + Neg<Output = T>>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    dims: (usize, usize, usize),
    inverse: bool,
) -> Vec<T> {
    let (heads, t, d) = dims;
    let half = d / 2;
    let per_batch = cos.len() > t * d;
    let mut out = vec![T::from_f64(0.0); x.len()];
    each_row(&mut out, d, |i, o| {
        let batch = if per_batch { i / (heads * t) } else { 0 };
        let at = (batch * t + i % t) * d;
        let (c, s) = (&cos[at..at + d], &sin[at..at + d]);
        let v = &x[i * d..(i + 1) * d];
        for j in 0..half {
            if inverse {
                o[j] = v[j] * c[j] + v[j + half] * s[j + half];
                o[j + half] = v[j + half] * c[j + half] + -(v[j] * s[j]);
            } else {
                o[j] = v[j] * c[j] + -v[j + half] * s[j];
                o[j + half] = v[j + half] * c[j + half] + v[j] * s[j + half];
            }
        }
    });
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        if self.inverse {
            "fused-rope-grad"
        } else {
            "fused-rope"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, heads, t, d) = xl.shape().dims4()?;
        let out = by_dtype!(self.name(), xs.dtype(), |T| rope_kernel(
            elements::<T>(xs, xl)?,
            elements::<T>(cs, cl)?,
            elements::<T>(ss, sl)?,
            (heads, t, d),
            self.inverse
        ));
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &Rope { inverse: true },
        )?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)
    }

    /// The largest element-wise |a − b|, in f64.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The fused mask-and-softmax and the composed one agree in value and in the scores' gradient,
    /// in f64, with a causal mask (−∞ above the diagonal) per batch row shared by the heads.
    #[test]
    fn fused_masked_softmax_equals_the_composed_one_with_its_gradient() {
        for (b, h, t) in [(2, 3, 5), (2, 4, 64)] {
            let dev = Device::Cpu;
            let x = Var::from_tensor(
                &(Tensor::randn(0f64, 1.0, (b, h, t, t), &dev).unwrap() * 4.0).unwrap(),
            )
            .unwrap();
            let mask: Vec<f64> = (0..b * t * t)
                .map(|i| {
                    if i % t > (i / t) % t {
                        f64::NEG_INFINITY
                    } else {
                        (i % 3) as f64 * 0.5
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev).unwrap();
            let up = Tensor::randn(0f64, 1.0, (b, h, t, t), &dev).unwrap();
            assert!(softmax_fusable(x.as_tensor(), &mask));
            let fused = masked_softmax(x.as_tensor(), &mask).unwrap();
            let plain =
                crate::model::decoder::softmax(&x.as_tensor().broadcast_add(&mask).unwrap())
                    .unwrap();
            assert!(max_diff(&fused, &plain) < 1e-12);
            let gf = (fused * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gp = (plain * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, c) = (gf.get(&x).unwrap(), gp.get(&x).unwrap());
            assert!(max_diff(a, c) < 1e-12, "{b}×{h}×{t}: {}", max_diff(a, c));
            // One mask for every batch row.
            let first = mask.narrow(0, 0, 1).unwrap();
            let plain =
                crate::model::decoder::softmax(&x.as_tensor().broadcast_add(&first).unwrap());
            let fused = masked_softmax(x.as_tensor(), &first).unwrap();
            assert!(max_diff(&fused, &plain.unwrap()) < 1e-12);
        }
    }

    /// The fused op and the composed one agree in value and in both gradients, in f64, for a small
    /// batch and for one large enough to take the parallel paths.
    #[test]
    fn fused_rms_norm_equals_the_composed_one_with_its_gradients() {
        for (rows, h) in [(6, 8), (300, 256)] {
            let dev = Device::Cpu;
            let x = Var::from_tensor(
                &(Tensor::randn(0f64, 1.0, (rows / 3, 3, h), &dev).unwrap() * 3.0).unwrap(),
            )
            .unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f64, 0.5, h, &dev).unwrap()).unwrap();
            let up = Tensor::randn(0f64, 1.0, (rows / 3, 3, h), &dev).unwrap();
            let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
            let plain = composed(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
            assert!(max_diff(&fused, &plain) < 1e-12);
            let gf = (fused * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gp = (plain * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let (a, b) = (gf.get(v).unwrap(), gp.get(v).unwrap());
                assert!(max_diff(a, b) < 1e-10, "{rows}×{h}: {}", max_diff(a, b));
            }
        }
    }

    /// The fused rotary embedding is the composed one bit for bit, in value and in x's gradient,
    /// in f32 (the training type) and f64, with cos/sin per batch row and shared.
    #[test]
    fn fused_rope_equals_the_composed_one_bit_for_bit() {
        fn check<T: candle_core::WithDType>(dtype: DType) {
            let dev = Device::Cpu;
            let (b, h, t, d) = (2, 3, 5, 8);
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 2.0, (b, h, t, d), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let angles = Tensor::randn(0f32, 3.0, (b, 1, t, d), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let up = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for (c, s) in [
                (cos.clone(), sin.clone()),
                (cos.narrow(0, 1, 1).unwrap(), sin.narrow(0, 1, 1).unwrap()),
            ] {
                assert!(rope_fusable(x.as_tensor(), &c, &s));
                let fused = rope(x.as_tensor(), &c, &s).unwrap();
                let plain = crate::model::decoder::rope_composed(x.as_tensor(), &c, &s).unwrap();
                let bits = |a: &Tensor| a.flatten_all().unwrap().to_vec1::<T>().unwrap();
                assert!(bits(&fused) == bits(&plain), "{dtype:?}: values differ");
                let gf = (fused * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gp = (plain * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(
                    bits(gf.get(&x).unwrap()) == bits(gp.get(&x).unwrap()),
                    "{dtype:?}: gradients differ"
                );
            }
        }
        check::<f32>(DType::F32);
        check::<f64>(DType::F64);
    }
}
