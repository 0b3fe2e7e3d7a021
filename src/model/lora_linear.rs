//! A LoRA-adapted projection on the CPU as one op: y = x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ for a frozen W
//! (dense or NF4) and dropout's multiplier m, with a backward that forms the gradients of x, A and
//! B. Composed from candle's ops, the graph keeps the base product, the adapter's product, its
//! scaled copy, their sum and the masked input until the backward; this op keeps only y, and its
//! backward recomputes the rank-r product (x ⊙ m)·Aᵀ (2·r·in flops a row, r/out of the base's).
//! The adapter's products run in the activations' type on candle's gemm, also under autocast: rank
//! r is too thin for the bf16 kernel's tiles, and x is then rounded once (for the base) not twice.

use super::lora::LoraWeights;
use super::nf4::Nf4;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Storage, Tensor, WithDType};
use std::sync::Arc;

/// The frozen weight under an adapter.
pub enum Base<'a> {
    Dense(&'a Tensor),
    Nf4(&'a Arc<Nf4>),
}

/// y = x·Wᵀ + adapter(x) for x [.., in] through the fused op, or `None` where it does not apply
/// (another device, a dtype other than f32 and f64, a base weight that trains): the caller then
/// composes the same sum from candle's ops.
pub fn forward(x: &Tensor, base: Base, lora: &LoraWeights) -> Result<Option<Tensor>> {
    let fusable = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && match base {
            Base::Dense(w) => !w.track_op() && w.device().is_cpu(),
            Base::Nf4(_) => true,
        };
    if !fusable {
        return Ok(None);
    }
    let base = match base {
        Base::Dense(w) => Frozen::Dense(super::decoder::in_dtype_of(w, x)?),
        Base::Nf4(q) => Frozen::Nf4(q.clone()),
    };
    let (a, b) = lora.factors(x.dtype())?;
    let out = b.dim(0)?;
    super::decoder::on_rows(x, out, |x| {
        let x = x.contiguous()?;
        let op = LoraLinear {
            base,
            mask: lora.dropout_mask(&x)?,
            scaling: lora.scaling,
        };
        x.apply_op3(&a, &b, op)
    })
    .map(Some)
}

/// The frozen weight as the op holds it.
enum Frozen {
    /// In the activations' dtype.
    Dense(Tensor),
    /// Dequantized for each product, never kept.
    Nf4(Arc<Nf4>),
}

impl Frozen {
    fn weight(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => Ok(w.clone()),
            Frozen::Nf4(q) => q.tensor(dtype, &candle_core::Device::Cpu),
        }
    }
}

struct LoraLinear {
    base: Frozen,
    /// Dropout's multiplier for x (contiguous, x's shape and dtype); `None` without dropout.
    mask: Option<Tensor>,
    scaling: f64,
}

/// A strided matrix: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T: WithDType> Mat<'a, T> {
    /// A row-major [rows, cols] matrix.
    fn dense(data: &'a [T], rows: usize, cols: usize) -> Mat<'a, T> {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// A 2-D operand of a custom op as its layout lays it out.
    fn of(s: &'a CpuStorage, l: &Layout) -> Result<Mat<'a, T>> {
        let (rows, cols) = l.shape().dims2()?;
        let (rs, cs) = (l.stride()[0], l.stride()[1]);
        let data = &T::cpu_storage_as_slice(s)?[l.start_offset()..];
        let last = (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
        if rows * cols > 0 && last >= data.len() {
            candle_core::bail!("lora-linear: an operand is shorter than its layout")
        }
        Ok(Mat {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    fn t(self) -> Mat<'a, T> {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// dst [lhs.rows, rhs.cols] (row-major) = s · lhs · rhs, or dst + s · lhs · rhs with `accumulate`,
/// on candle's gemm with candle's threads.
fn product<T: WithDType>(dst: &mut [T], accumulate: bool, lhs: Mat<T>, rhs: Mat<T>, s: f64) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(rhs.rows == k && dst.len() == m * n, "lora-linear: shapes");
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: T is f32 or f64 (the op's dtypes); `Mat::of` and `Mat::dense` keep every element of
    // a view inside its slice, and dst holds m · n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::from_f64(1.0),
            T::from_f64(s),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A row-major copy of an operand, as a matrix of the operand's shape.
fn dense_as<'a, T: WithDType>(data: &'a [T], l: &Layout) -> Result<Mat<'a, T>> {
    let (rows, cols) = l.shape().dims2()?;
    Ok(Mat::dense(data, rows, cols))
}

/// The CPU storage behind a tensor's storage.
fn cpu<'a>(s: &'a Storage, op: &str) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(s) => Ok(s),
        _ => candle_core::bail!("{op}: an operand is not on the CPU"),
    }
}

impl LoraLinear {
    /// x ⊙ m where there is a mask (x contiguous, as `forward` makes it).
    fn masked<T: WithDType>(&self, x: &CpuStorage, l: &Layout) -> Result<Option<Vec<T>>> {
        let Some(mask) = &self.mask else {
            return Ok(None);
        };
        let (ms, ml) = mask.storage_and_layout();
        let m = super::fused::elements::<T>(cpu(&ms, self.name())?, ml)?;
        let x = super::fused::elements::<T>(x, l)?;
        Ok(Some(x.iter().zip(m).map(|(&x, &m)| x * m).collect()))
    }

    fn forward<T: WithDType>(
        &self,
        y: CpuStorage,
        (x, lx): (&CpuStorage, &Layout),
        (a, la): (&CpuStorage, &Layout),
        (b, lb): (&CpuStorage, &Layout),
    ) -> Result<CpuStorage> {
        let mut y = T::cpu_storage_data(y)?;
        let (a, b) = (Mat::<T>::of(a, la)?, Mat::<T>::of(b, lb)?);
        let masked = self.masked::<T>(x, lx)?;
        let x = match &masked {
            Some(v) => dense_as(v, lx)?,
            None => Mat::of(x, lx)?,
        };
        let mut h = vec![T::zero(); x.rows * a.rows];
        product(&mut h, false, x, a.t(), 1.0);
        product(
            &mut y,
            true,
            Mat::dense(&h, x.rows, a.rows),
            b.t(),
            self.scaling,
        );
        Ok(T::to_cpu_storage_owned(y))
    }

    fn backward<T: WithDType>(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = self.name();
        let (gs, gl) = g.storage_and_layout();
        let gs = cpu(&gs, op)?;
        // The base weight's part of x's gradient, on the bf16 kernel under autocast (as the
        // frozen-weight op's backward).
        let w = self.base.weight(g.dtype())?;
        let (dx, _) = super::frozen::cpu_matmul_w(gs, gl, &w, false, op)?;
        let mut dx = T::cpu_storage_data(dx)?;

        let (xs, xl) = x.storage_and_layout();
        let (as_, al) = a.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let xs = cpu(&xs, op)?;
        let (a, b, g) = (
            Mat::<T>::of(cpu(&as_, op)?, al)?,
            Mat::<T>::of(cpu(&bs, op)?, bl)?,
            Mat::<T>::of(gs, gl)?,
        );
        let masked = self.masked::<T>(xs, xl)?;
        let x = match &masked {
            Some(v) => dense_as(v, xl)?,
            None => Mat::of(xs, xl)?,
        };
        let (m, r, out) = (x.rows, a.rows, b.rows);
        let s = self.scaling;
        let mut h = vec![T::zero(); m * r];
        product(&mut h, false, x, a.t(), 1.0);
        let mut dh = vec![T::zero(); m * r];
        product(&mut dh, false, g, b, s);
        let mut da = vec![T::zero(); r * x.cols];
        product(&mut da, false, Mat::dense(&dh, m, r).t(), x, 1.0);
        let mut db = vec![T::zero(); out * r];
        product(&mut db, false, g.t(), Mat::dense(&h, m, r), s);
        match &self.mask {
            None => product(&mut dx, true, Mat::dense(&dh, m, r), a, 1.0),
            Some(mask) => {
                let mut through = vec![T::zero(); m * x.cols];
                product(&mut through, false, Mat::dense(&dh, m, r), a, 1.0);
                let (ms, ml) = mask.storage_and_layout();
                let mask = super::fused::elements::<T>(cpu(&ms, op)?, ml)?;
                for ((d, t), &k) in dx.iter_mut().zip(&through).zip(mask) {
                    *d += *t * k;
                }
            }
        }
        let dev = candle_core::Device::Cpu;
        Ok((
            Tensor::from_vec(dx, (m, x.cols), &dev)?,
            Tensor::from_vec(da, (r, x.cols), &dev)?,
            Tensor::from_vec(db, (out, r), &dev)?,
        ))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, candle_core::Shape)> {
        let w = self.base.weight(x.dtype())?;
        let (y, shape) = super::frozen::cpu_matmul_t(x, lx, &w, self.name())?;
        let operands = ((x, lx), (a, la), (b, lb));
        let y = match x.dtype() {
            DType::F32 => self.forward::<f32>(y, operands.0, operands.1, operands.2)?,
            DType::F64 => self.forward::<f64>(y, operands.0, operands.1, operands.2)?,
            other => candle_core::bail!("{}: {other:?}", self.name()),
        };
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, db) = match x.dtype() {
            DType::F32 => self.backward::<f32>(x, a, b, g)?,
            DType::F64 => self.backward::<f64>(x, a, b, g)?,
            other => candle_core::bail!("{}: {other:?}", self.name()),
        };
        Ok((Some(dx), Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::lora::{LoraWeights, Rng};
    use crate::model::fused::tests::max_diff;
    use candle_core::{DType, Device, Tensor, Var};
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let v: Vec<f64> = (0..shape.0 * shape.1)
            .map(|_| f64::from(rng.normal()))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn adapter(w: &Tensor, dropout: f64) -> LoraWeights {
        let spec = crate::lang::value::Lora {
            rank: 4,
            alpha: 8.0,
            dropout,
            targets: vec!["all-linear".into()],
            rslora: false,
        };
        let l = LoraWeights::new(
            w,
            &spec,
            &mut Rng::new(1),
            Arc::new(AtomicBool::new(true)),
            Arc::new(Mutex::new(Rng::new(2))),
        )
        .unwrap();
        // B starts at zero; a random B makes every gradient term count.
        l.b.set(&random((w.dim(0).unwrap(), 4), 3)).unwrap();
        l
    }

    /// The fused op against the composed ops (x·Wᵀ + the adapter's forward), in f64: the output
    /// and the gradients of x, A and B of a loss that weighs every output differently; with and
    /// without dropout (the same masks: both draw from a generator at the same state).
    #[test]
    fn equals_the_composed_ops_values_and_gradients() {
        for dropout in [0.0, 0.25] {
            let w = random((6, 5), 4);
            let x = Var::from_tensor(&random((7, 5), 5).reshape((1, 7, 5)).unwrap()).unwrap();
            let weights = random((7, 6), 6).reshape((1, 7, 6)).unwrap();
            let run = |fused: bool| {
                let l = adapter(&w, dropout);
                let y = if fused {
                    super::forward(x.as_tensor(), super::Base::Dense(&w), &l)
                        .unwrap()
                        .expect("f64 on the CPU fuses")
                } else {
                    let base = super::super::decoder::matmul_t(x.as_tensor(), &w).unwrap();
                    (base + l.forward(x.as_tensor()).unwrap()).unwrap()
                };
                let loss = (&y * &weights).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                let grads = [x.as_tensor(), l.a.as_tensor(), l.b.as_tensor()]
                    .map(|v| g.get(v).expect("a gradient").clone());
                (y, grads)
            };
            let (y_fused, g_fused) = run(true);
            let (y_composed, g_composed) = run(false);
            assert_eq!(y_fused.dtype(), DType::F64);
            assert!(max_diff(&y_fused, &y_composed) < 1e-12, "dropout {dropout}");
            for (f, c) in g_fused.iter().zip(&g_composed) {
                assert!(max_diff(f, c) < 1e-12, "dropout {dropout}");
                assert!(
                    max_diff(c, &c.zeros_like().unwrap()) > 1e-3,
                    "a gradient that counts"
                );
            }
        }
    }
}
