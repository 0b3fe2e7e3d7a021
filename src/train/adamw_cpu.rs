//! AdamW's update on the CPU as three in-place passes over the moments and the weights, with the
//! arithmetic of the composed tensor ops in [`super::optim`] (the same products, sums and
//! constants, in the variable's own type), so the weights come out bit for bit the same, without a
//! dozen temporaries the size of each variable per step.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

/// Below this many elements a pass stays on the calling thread.
const PARALLEL_FROM: usize = 1 << 15;

/// The constants of one step, as the composed ops apply them (`affine(mul, add)` is `v·mul + add`
/// in the tensor's type, with `mul` and `add` converted from f64).
#[derive(Clone, Copy)]
pub struct StepConstants {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `1 − lr · weight_decay` for a decayed variable, `None` otherwise.
    pub decay: Option<f64>,
    pub lr: f64,
    /// The bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub c1: f64,
    pub c2: f64,
}

/// Whether the in-place passes apply to a variable and its gradient.
pub fn applies(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let dense = |t: &Tensor| t.is_contiguous() && t.device().is_cpu() && t.dtype() == w.dtype();
    matches!(w.dtype(), DType::F32 | DType::F64)
        && [w, g, m, v]
            .iter()
            .all(|t| dense(t) && t.dims() == w.dims())
}

/// m ← β₁·m + (1 − β₁)·g; v ← β₂·v + (1 − β₂)·g²; then the weight update.
pub fn step(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: StepConstants) -> Result<()> {
    m.inplace_op2(g, &Pass::FirstMoment(k))?;
    v.inplace_op2(g, &Pass::SecondMoment(k))?;
    w.inplace_op3(m, v, &Pass::Weights(k))
}

enum Pass {
    FirstMoment(StepConstants),
    SecondMoment(StepConstants),
    Weights(StepConstants),
}

/// `f` over `dst` in chunks, each with the matching offset, on the thread pool when big.
fn chunked<T: Send>(dst: &mut [T], f: impl Fn(usize, &mut [T]) + Send + Sync) {
    const CHUNK: usize = 1 << 14;
    if dst.len() >= PARALLEL_FROM {
        dst.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, d)| f(i * CHUNK, d));
    } else {
        f(0, dst);
    }
}

impl Pass {
    fn run<T: WithDType>(&self, dst: &mut [T], srcs: &[&[T]]) {
        let c = |x: f64| T::from_f64(x);
        let zero = c(0.0);
        match *self {
            Pass::FirstMoment(k) => {
                let (b, a, g) = (c(k.beta1), c(1.0 - k.beta1), srcs[0]);
                chunked(dst, |at, d| {
                    for (m, &g) in d.iter_mut().zip(&g[at..]) {
                        *m = (*m * b + zero) + (g * a + zero);
                    }
                });
            }
            Pass::SecondMoment(k) => {
                let (b, a, g) = (c(k.beta2), c(1.0 - k.beta2), srcs[0]);
                chunked(dst, |at, d| {
                    for (v, &g) in d.iter_mut().zip(&g[at..]) {
                        *v = (*v * b + zero) + ((g * g) * a + zero);
                    }
                });
            }
            Pass::Weights(k) => {
                let (m, v) = (srcs[0], srcs[1]);
                let decay = k.decay.map(c);
                let (over_c1, over_c2, eps, lr, one) =
                    (c(1.0 / k.c1), c(1.0 / k.c2), c(k.eps), c(k.lr), c(1.0));
                chunked(dst, |at, d| {
                    for ((w, &m), &v) in d.iter_mut().zip(&m[at..]).zip(&v[at..]) {
                        let kept = decay.map_or(*w, |f| *w * f + zero);
                        let denom = sqrt(v * over_c2 + zero) * one + eps;
                        let update = (m * over_c1 + zero) / denom;
                        *w = kept - (update * lr + zero);
                    }
                });
            }
        }
    }
}

/// The correctly rounded square root of a float in its own type (as candle's `sqrt`).
fn sqrt<T: WithDType>(x: T) -> T {
    match T::DTYPE {
        DType::F32 => T::from_f64(f64::from((x.to_f64() as f32).sqrt())),
        _ => T::from_f64(x.to_f64().sqrt()),
    }
}

impl Pass {
    /// The pass over `dst` with `srcs` (the gradient; or the two moments).
    fn apply(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        srcs: &[(&CpuStorage, &Layout)],
    ) -> Result<()> {
        macro_rules! typed {
            ($t:ty, $variant:ident) => {{
                let ins = srcs
                    .iter()
                    .map(|(s, l)| crate::model::fused::elements::<$t>(s, l))
                    .collect::<Result<Vec<_>>>()?;
                match (dst, dst_l.contiguous_offsets()) {
                    (CpuStorage::$variant(d), Some((from, to))) => self.run(&mut d[from..to], &ins),
                    _ => candle_core::bail!("adamw: a non-contiguous or mixed-type variable"),
                }
            }};
        }
        match dst.dtype() {
            DType::F32 => typed!(f32, F32),
            DType::F64 => typed!(f64, F64),
            other => candle_core::bail!("adamw: {other:?}"),
        }
        Ok(())
    }
}

impl InplaceOp2 for Pass {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        self.apply(s1, l1, &[(s2, l2)])
    }
}

impl InplaceOp3 for Pass {
    fn name(&self) -> &'static str {
        "adamw-weights"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        self.apply(s1, l1, &[(s2, l2), (s3, l3)])
    }
}
