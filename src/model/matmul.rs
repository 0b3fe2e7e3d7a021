//! The model's matrix products: candle's, except bf16 on a CPU where [`super::gemm_bf16`] is the
//! faster ([`gemm_bf16::preferred`]): then they go through that kernel forward and backward
//! (candle widens bf16 to f32 and narrows back). Under [`Autocast`] (mixed-precision training on a
//! CPU with the kernel) products of f32 tensors round their operands to bf16 and run on the kernel
//! too, while everything else computes in f32, as `torch.autocast` treats matmuls.

use super::gemm_bf16::{self, Dims, Strided};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;

/// a [.., m, k] · b [.., k, n], the same batch dimensions.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if uses_kernel(a, b) {
        kernel_matmul(a, b)
    } else {
        a.matmul(b)
    }
}

/// [`matmul`] on the AVX512-BF16 kernel whichever is faster here (tests and benches compare the
/// two); an error on a CPU without it.
pub fn kernel_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !gemm_bf16::available() {
        candle_core::bail!("this CPU has no AVX512-BF16")
    }
    a.apply_op2(b, Bf16Matmul)
}

/// As candle's `broadcast_matmul`: the batch dimensions broadcast against each other first.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !uses_kernel(a, b) {
        return a.broadcast_matmul(b);
    }
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        candle_core::bail!("broadcast_matmul of ranks {ra} and {rb}")
    }
    let batch = Shape::from(&a.dims()[..ra - 2])
        .broadcast_shape_binary_op(&Shape::from(&b.dims()[..rb - 2]), "broadcast_matmul")?;
    let full = |t: &Tensor, r: usize| -> Result<Tensor> {
        let mut dims = batch.dims().to_vec();
        dims.extend_from_slice(&t.dims()[r - 2..]);
        t.broadcast_as(dims)
    };
    matmul(&full(a, ra)?, &full(b, rb)?)
}

thread_local! {
    /// Whether f32 products on this thread run on the bf16 kernel ([`Autocast`]).
    static AUTOCAST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While it lives, products of f32 tensors built on this thread (and their backward, which runs
/// on it) take bf16 operands on the kernel: a scope, as `torch.autocast` is one. Without the kernel
/// ([`gemm_bf16::available`]) it changes nothing.
pub struct Autocast {
    before: bool,
}

impl Autocast {
    pub fn start(on: bool) -> Autocast {
        let before = AUTOCAST.with(|a| a.replace(on && gemm_bf16::available()));
        Autocast { before }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.before));
    }
}

/// Whether a product of these operands runs on the bf16 kernel.
fn uses_kernel(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype() && a.device().is_cpu() && b.device().is_cpu() && kernel_for(a.dtype())
}

/// Whether CPU products in `dtype` run on the bf16 kernel (here and in the frozen-weight ops).
pub fn kernel_for(dtype: DType) -> bool {
    match dtype {
        DType::BF16 => gemm_bf16::preferred(),
        DType::F32 => AUTOCAST.with(|a| a.get()),
        _ => false,
    }
}

/// The product of two CPU storages on bf16 operands as candle lays them out (leading dimensions
/// batch, equal on both sides): bf16 · bf16 gives bf16, f32 · f32 (rounded to bf16 as packed) f32.
/// The forward of [`Bf16Matmul`] and of the frozen-weight ops.
pub fn cpu_bf16(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(la, lb)?;
    let mut shape = la.dims()[..la.dims().len() - 1].to_vec();
    shape.push(d.n);
    let out = match (a, b) {
        (CpuStorage::BF16(av), CpuStorage::BF16(bv)) => {
            let mut out = super::fused::unfilled::<bf16>(d.batches * d.m * d.n);
            gemm_bf16::matmul(&strided(av, la), &strided(bv, lb), d, &mut out);
            CpuStorage::BF16(out)
        }
        (CpuStorage::F32(av), CpuStorage::F32(bv)) => {
            let mut out = super::fused::unfilled::<f32>(d.batches * d.m * d.n);
            gemm_bf16::matmul(&strided(av, la), &strided(bv, lb), d, &mut out);
            CpuStorage::F32(out)
        }
        _ => candle_core::bail!("bf16 matmul of {:?} and {:?}", a.dtype(), b.dtype()),
    };
    Ok((out, Shape::from(shape)))
}

/// The product's dimensions from its operands' layouts.
fn dims(la: &Layout, lb: &Layout) -> Result<Dims> {
    let (da, db) = (la.dims(), lb.dims());
    let rank = da.len();
    if rank < 2
        || db.len() != rank
        || da[..rank - 2] != db[..rank - 2]
        || da[rank - 1] != db[rank - 2]
    {
        candle_core::bail!("bf16 matmul of shapes {da:?} and {db:?}")
    }
    let d = Dims {
        batches: da[..rank - 2].iter().product(),
        m: da[rank - 2],
        n: db[rank - 1],
        k: da[rank - 1],
    };
    Ok(d)
}

/// A storage read through its layout: one start offset per batch (row-major over the leading
/// dimensions, whatever their strides, 0 for broadcast ones), the last two dimensions' strides.
fn strided<'a, E: gemm_bf16::Element>(data: &'a [E], l: &Layout) -> Strided<'a, E> {
    let (dims, strides) = (l.dims(), l.stride());
    let rank = dims.len();
    let mut offsets = vec![l.start_offset()];
    for (&dim, &stride) in dims[..rank - 2].iter().zip(strides) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..dim).map(move |i| o + i * stride))
            .collect();
    }
    Strided {
        data,
        offsets,
        rs: strides[rank - 2],
        cs: strides[rank - 1],
    }
}

/// a · b on the bf16 kernel, with its backward on the same kernel: only the gradients of operands
/// that train are formed.
struct Bf16Matmul;

impl CustomOp2 for Bf16Matmul {
    fn name(&self) -> &'static str {
        "bf16-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_bf16(a, la, b, lb)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ga = a
            .track_op()
            .then(|| kernel_matmul(grad, &b.t()?))
            .transpose()?;
        let gb = b
            .track_op()
            .then(|| kernel_matmul(&a.t()?, grad))
            .transpose()?;
        Ok((ga, gb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The product and both gradients equal candle's widening matmul of the same bf16 values up to
    /// the one rounding to bf16 each (the two accumulate in different orders).
    #[test]
    fn forward_and_gradients_match_candles_bf16_matmul() {
        if !gemm_bf16::kernel_testable() {
            return;
        }
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 37, 70), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 70, 45), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 37, 45), &dev).unwrap();
        let run = |mm: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let (ab, bb) = (
                a.as_tensor().to_dtype(DType::BF16).unwrap(),
                b.as_tensor().to_dtype(DType::BF16).unwrap(),
            );
            let y = mm(&ab, &bb).unwrap();
            let loss = (y.to_dtype(DType::F32).unwrap() * &up)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let f = |t: &Tensor| {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            (
                f(&y),
                f(g.get(a.as_tensor()).unwrap()),
                f(g.get(b.as_tensor()).unwrap()),
            )
        };
        let ours = run(&|x, y| kernel_matmul(x, y));
        let theirs = run(&|x, y| x.matmul(y));
        for (name, o, t) in [
            ("y", &ours.0, &theirs.0),
            ("da", &ours.1, &theirs.1),
            ("db", &ours.2, &theirs.2),
        ] {
            assert_eq!(o.len(), t.len());
            for (i, (x, y)) in o.iter().zip(t).enumerate() {
                // Both are f32 sums rounded to bf16 (8 bits): at most one bf16 step apart.
                assert!(
                    (x - y).abs() <= 2f32.powi(-7) * x.abs().max(y.abs()) + 1e-6,
                    "{name}[{i}]: {x} vs {y}"
                );
            }
        }
    }

    /// Under autocast an f32 product and both its gradients are the f32 product of the operands
    /// rounded to bf16 (values bf16-exact here, so only the summation order differs); outside it,
    /// candle's f32 product itself.
    #[test]
    fn autocast_products_take_bf16_operands() {
        if !gemm_bf16::kernel_testable() {
            return;
        }
        let dev = Device::Cpu;
        let bf16_exact = |t: Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 37, 70), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 70, 45), &dev).unwrap()).unwrap();
        let up = bf16_exact(Tensor::randn(0f32, 1.0, (2, 37, 45), &dev).unwrap());
        // The reference multiplies copies rounded beforehand (its gradients are theirs, in f32).
        let rounded = |v: &Var| Var::from_tensor(&bf16_exact(v.as_tensor().clone())).unwrap();
        let (ar, br) = (rounded(&a), rounded(&b));
        let run = |autocast: bool| {
            let _scope = Autocast::start(autocast);
            let (x, y) = if autocast { (&a, &b) } else { (&ar, &br) };
            assert_eq!(uses_kernel(x.as_tensor(), y.as_tensor()), autocast);
            let out = matmul(x.as_tensor(), y.as_tensor()).unwrap();
            let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let f = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                f(&out),
                f(g.get(x.as_tensor()).unwrap()),
                f(g.get(y.as_tensor()).unwrap()),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        for (name, o, t, k) in [
            ("y", &ours.0, &theirs.0, 70.0),
            ("da", &ours.1, &theirs.1, 45.0),
            ("db", &ours.2, &theirs.2, 37.0),
        ] {
            assert_eq!(o.len(), t.len());
            for (i, (x, y)) in o.iter().zip(t).enumerate() {
                // Sums of k exact products of magnitude below ~16: k · 16 · 2⁻²³ covers any order.
                assert!(
                    (x - y).abs() <= k * 16.0 * f32::EPSILON,
                    "{name}[{i}]: {x} vs {y}"
                );
            }
        }
    }
}
