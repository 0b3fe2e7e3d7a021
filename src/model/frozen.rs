//! x · wᵀ for a weight that does not train, as a custom op whose backward forms only x's gradient.
//! candle's matmul backward always forms both operands' gradients; with LoRA or freeze tuning that
//! spends a third of the linear layers' work on gradients of weights that are then dropped.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// x [m, k] · wᵀ on the CPU, w [n, k] a tensor on the CPU (the forward of the ops below).
pub(super) fn cpu_matmul_t(
    x: &CpuStorage,
    x_layout: &Layout,
    w: &Tensor,
    op: &str,
) -> Result<(CpuStorage, Shape)> {
    cpu_matmul_w(x, x_layout, w, true, op)
}

/// x [m, k] · w (w [k, n]), or x · wᵀ (w [n, k]) when `transpose`, with w a tensor on the CPU: on
/// the bf16 kernel where products in x's dtype run there ([`super::matmul::kernel_for`]).
pub(super) fn cpu_matmul_w(
    x: &CpuStorage,
    x_layout: &Layout,
    w: &Tensor,
    transpose: bool,
    op: &str,
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = x_layout.shape().dims2()?;
    let (storage, w_layout) = w.storage_and_layout();
    let Storage::Cpu(w) = &*storage else {
        candle_core::bail!("{op}: the weight is not on the CPU")
    };
    let w_layout = if transpose {
        w_layout.transpose(0, 1)?
    } else {
        w_layout.clone()
    };
    let (wk, n) = w_layout.shape().dims2()?;
    if wk != k {
        candle_core::bail!("{op}: x has {k} columns, the weight {wk}")
    }
    if super::matmul::kernel_for(x.dtype()) {
        return super::matmul::cpu_bf16(x, x_layout, w, &w_layout);
    }
    let y = x.matmul(w, (1, m, n, k), x_layout, &w_layout)?;
    Ok((y, Shape::from((m, n))))
}

struct FrozenMatmulT(Tensor);

impl CustomOp1 for FrozenMatmulT {
    fn name(&self) -> &'static str {
        "frozen-matmul-t"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_matmul_t(x, x_layout, &self.0, self.name())
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(super::matmul::matmul(grad, &self.0)?))
    }
}

/// x · wᵀ for an NF4 weight: dequantized (block by block) for the forward and again for the
/// backward, so no f32 copy of the weight outlives the op.
struct Nf4MatmulT(std::sync::Arc<super::nf4::Nf4>);

impl CustomOp1 for Nf4MatmulT {
    fn name(&self) -> &'static str {
        "nf4-matmul-t"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = self.0.tensor(x.dtype(), &candle_core::Device::Cpu)?;
        cpu_matmul_t(x, x_layout, &w, self.name())
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = self.0.tensor(grad.dtype(), grad.device())?;
        Ok(Some(super::matmul::matmul(grad, &w)?))
    }
}

/// x [m, k] · wᵀ for an NF4 weight [n, k] that does not train. Off the CPU the weight is dequantized
/// to a tensor and multiplied by candle's matmul.
pub fn nf4_matmul_t(x: &Tensor, w: &std::sync::Arc<super::nf4::Nf4>) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op1(Nf4MatmulT(w.clone()))
    } else {
        x.matmul(&w.tensor(x.dtype(), x.device())?.t()?)
    }
}

/// x [m, k] · wᵀ (w [n, k]) where only x needs a gradient. On other devices than the CPU it is
/// candle's own matmul (whose backward also forms w's gradient).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && w.device().is_cpu() && x.dtype() == w.dtype() {
        x.apply_op1(FrozenMatmulT(w.clone()))
    } else {
        x.matmul(&w.t()?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn same_values_and_input_gradient_as_matmul_and_none_for_the_weight() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        let plain = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let frozen = super::matmul_t(x.as_tensor(), &w).unwrap();
        let diff = (&plain - &frozen)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let g_plain = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_frozen = frozen.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g_plain.get(&x).unwrap(), g_frozen.get(&x).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        assert!(
            g_frozen.get(&w).is_none(),
            "no gradient is formed for the frozen weight"
        );
    }
}
