//! SwiGLU's product silu(gate) ⊙ up as one CPU op with a one-pass backward. Composed, it is a silu
//! and a product forward and seven passes backward (silu's derivative alone is an exp, a negation,
//! a reciprocal, two affine maps and two products), each a full [tokens, intermediate] tensor; fused,
//! it is one pass each way, and the graph keeps the gate and up projections only. The arithmetic is
//! the composed ops', step for step, in the tensors' own type: in f64 the results are those ops' bits;
//! in f32 the exp is [`super::exp`]'s (≤ 1 ulp from the exact one, the same on every CPU).

use super::fused::{by_dtype, each_row, elements, PARALLEL_FROM};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// Elements per piece of work: a piece's exps and products stay in L1.
const PIECE: usize = 4096;

/// Whether [`swiglu`] applies to `gate` and `up`.
pub fn fusable(gate: &Tensor, up: &Tensor) -> bool {
    gate.device().is_cpu()
        && gate.dtype() == up.dtype()
        && gate.shape() == up.shape()
        && matches!(gate.dtype(), DType::F32 | DType::F64)
}

/// silu(gate) ⊙ up, with a fused backward.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// The element type's side of the op: exp(−g) over a piece (the arithmetic is the operators').
trait Float:
    candle_core::WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    const ONE: Self;
    /// e[j] ← exp(−g[j]).
    fn exp_neg(g: &[Self], e: &mut [Self]);
}

impl Float for f32 {
    const ONE: Self = 1.0;
    fn exp_neg(g: &[Self], e: &mut [Self]) {
        for (e, g) in e.iter_mut().zip(g) {
            *e = -g;
        }
        super::exp::exp(e);
    }
}

impl Float for f64 {
    const ONE: Self = 1.0;
    fn exp_neg(g: &[Self], e: &mut [Self]) {
        for (e, g) in e.iter_mut().zip(g) {
            *e = (-g).exp();
        }
    }
}

/// silu(g) = g / (1 + exp(−g)), then ⊙ u: candle's silu and product.
fn forward<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = super::fused::unfilled::<T>(g.len());
    each_row(&mut out, PIECE, |i, o| {
        let range = i * PIECE..i * PIECE + o.len();
        let (g, u) = (&g[range.clone()], &u[range]);
        T::exp_neg(g, o);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = *g / (T::ONE + *o) * *u;
        }
    });
    out
}

/// The gradients of g and of u, packed [2, n]: with s = silu(g) and σ = 1 / (exp(−g) + 1), candle's
/// rules give dg = (dy ⊙ u) ⊙ (σ ⊙ (1 − s) + s) and du = dy ⊙ s.
fn backward<T: Float>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = super::fused::unfilled::<T>(2 * n);
    let (dg, du) = out.split_at_mut(n);
    let work = |i: usize, (dg, du): (&mut [T], &mut [T])| {
        let range = i * PIECE..i * PIECE + dg.len();
        let (g, u, dy) = (&g[range.clone()], &u[range.clone()], &dy[range]);
        T::exp_neg(g, dg);
        for ((((dg, du), g), u), dy) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dy) {
            let e = *dg;
            let s = *g / (T::ONE + e);
            let sigma = T::ONE / (e + T::ONE);
            *dg = *dy * *u * (sigma * (T::ONE - s) + s);
            *du = *dy * s;
        }
    };
    if n >= PARALLEL_FROM {
        dg.par_chunks_mut(PIECE)
            .zip(du.par_chunks_mut(PIECE))
            .enumerate()
            .for_each(|(i, pair)| work(i, pair));
    } else {
        dg.chunks_mut(PIECE)
            .zip(du.chunks_mut(PIECE))
            .enumerate()
            .for_each(|(i, pair)| work(i, pair));
    }
    out
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() {
            candle_core::bail!(
                "fused-swiglu: gate {:?} and up {:?}",
                gl.shape(),
                ul.shape()
            )
        }
        let out = by_dtype!(self.name(), gs.dtype(), |T| forward(
            elements::<T>(gs, gl)?,
            elements::<T>(us, ul)?
        ));
        Ok((out, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = gate.contiguous()?.apply_op3_no_bwd(
            &up.contiguous()?,
            &grad.contiguous()?,
            &SwiGluGrad,
        )?;
        let dg = packed.narrow(0, 0, 1)?.reshape(gate.shape())?;
        let du = packed.narrow(0, 1, 1)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// [`backward`] as an op over (gate, up, the output's gradient).
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = gl.shape().elem_count();
        if ul.shape().elem_count() != n || dl.shape().elem_count() != n {
            candle_core::bail!("fused-swiglu-grad: operands of different sizes")
        }
        let out = by_dtype!(self.name(), gs.dtype(), |T| backward(
            elements::<T>(gs, gl)?,
            elements::<T>(us, ul)?,
            elements::<T>(ds, dl)?
        ));
        Ok((out, Shape::from((2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The composed ops and the fused one on the same operands: values and both gradients (through
    /// a weighted sum, so every output's gradient differs).
    fn both(dtype: DType, n: usize) -> [(Tensor, Tensor); 3] {
        let dev = Device::Cpu;
        let g = Var::from_tensor(
            &((Tensor::randn(0f64, 3.0, (n,), &dev).unwrap()).to_dtype(dtype)).unwrap(),
        )
        .unwrap();
        let u = Var::from_tensor(
            &Tensor::randn(0f64, 1.0, (n,), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::randn(0f64, 1.0, (n,), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let run = |fused: bool| {
            let y = if fused {
                swiglu(&g, &u).unwrap()
            } else {
                (g.silu().unwrap() * u.as_tensor()).unwrap()
            };
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y,
                grads.get(&g).unwrap().clone(),
                grads.get(&u).unwrap().clone(),
            )
        };
        let (a, b) = (run(true), run(false));
        [(a.0, b.0), (a.1, b.1), (a.2, b.2)]
    }

    #[test]
    fn fused_swiglu_is_the_composed_ops_bit_for_bit_in_f64() {
        // Sizes on both sides of a piece and of the parallel threshold.
        for n in [1, 4095, 4097, PARALLEL_FROM + 3] {
            for (fused, composed) in both(DType::F64, n) {
                let (f, c) = (
                    fused.to_vec1::<f64>().unwrap(),
                    composed.to_vec1::<f64>().unwrap(),
                );
                assert!(f.iter().zip(&c).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn fused_swiglu_is_within_rounding_of_the_composed_ops_in_f32() {
        for (fused, composed) in both(DType::F32, PARALLEL_FROM + 3) {
            let (f, c) = (
                fused.to_vec1::<f32>().unwrap(),
                composed.to_vec1::<f32>().unwrap(),
            );
            // exp within 1 ulp moves each result by a few ulp of the largest (measured 7.8e-8).
            let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = f
                .iter()
                .zip(&c)
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0f32, f32::max);
            assert!(
                worst < 2e-7,
                "worst difference {worst:e} of the largest value"
            );
        }
    }
}
