//! The model's matrix products: candle's, except bf16 on a CPU where [`super::gemm_bf16`] is the
//! faster ([`gemm_bf16::preferred`]): then they go through that kernel forward and backward
//! (candle widens bf16 to f32 and narrows back).

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

/// Whether a product of these operands runs on the bf16 kernel.
fn uses_kernel(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype() && a.device().is_cpu() && b.device().is_cpu() && kernel_for(a.dtype())
}

/// Whether CPU products in `dtype` run on the bf16 kernel (here and in the frozen-weight ops).
pub fn kernel_for(dtype: DType) -> bool {
    dtype == DType::BF16 && gemm_bf16::preferred()
}

/// The product of two bf16 CPU storages as candle lays them out (leading dimensions batch, equal
/// on both sides): the forward of [`Bf16Matmul`] and of the frozen-weight ops.
pub fn cpu_bf16(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (CpuStorage::BF16(av), CpuStorage::BF16(bv)) = (a, b) else {
        candle_core::bail!("bf16 matmul of {:?} and {:?}", a.dtype(), b.dtype())
    };
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
    let mut out = vec![bf16::ZERO; d.batches * d.m * d.n];
    gemm_bf16::matmul(&strided(av, la), &strided(bv, lb), d, &mut out);
    let mut shape = da[..rank - 1].to_vec();
    shape.push(d.n);
    Ok((CpuStorage::BF16(out), Shape::from(shape)))
}

/// A storage read through its layout: one start offset per batch (row-major over the leading
/// dimensions, whatever their strides, 0 for broadcast ones), the last two dimensions' strides.
fn strided<'a>(data: &'a [bf16], l: &Layout) -> Strided<'a> {
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
}
