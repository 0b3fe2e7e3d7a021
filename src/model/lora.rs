//! LoRA with PEFT's semantics: y = W x + (B (A dropout(x))) · scaling, scaling = alpha / r (alpha / √r
//! with rsLoRA), A kaiming-uniform (U(−1/√in, 1/√in)), B zero; merge W' = W + scaling · B A.

use candle_core::{Tensor, Var};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct LoraWeights {
    pub a: Var,
    pub b: Var,
    pub scaling: f64,
    pub dropout: f64,
    /// Dropout applies only while training.
    pub training: std::sync::Arc<AtomicBool>,
    /// The model's dropout generator, shared by its adapters (seeded, saved in checkpoints).
    pub rng: DropoutRng,
}

/// One seeded generator for every dropout mask of a model, so a resumed run draws the same masks.
pub type DropoutRng = std::sync::Arc<std::sync::Mutex<Rng>>;

/// A small deterministic generator (splitmix64), so initialization depends only on the seed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The whole state, for checkpoints.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A generator that continues from `state`.
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

impl LoraWeights {
    /// A fresh adapter for `weight` [out, in]: A random, B zero, so it changes nothing yet.
    pub fn new(
        weight: &Tensor,
        spec: &crate::lang::value::Lora,
        rng: &mut Rng,
        training: std::sync::Arc<AtomicBool>,
        dropout_rng: DropoutRng,
    ) -> candle_core::Result<LoraWeights> {
        let (out, inp) = weight.dims2()?;
        let rank = spec.rank.max(1) as usize;
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..rank * inp)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
            .collect();
        let a = Tensor::from_vec(a, (rank, inp), weight.device())?.to_dtype(weight.dtype())?;
        let b = Tensor::zeros((out, rank), weight.dtype(), weight.device())?;
        let scaling = if spec.rslora {
            spec.alpha / (rank as f64).sqrt()
        } else {
            spec.alpha / rank as f64
        };
        Ok(LoraWeights {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scaling,
            dropout: spec.dropout,
            training,
            rng: dropout_rng,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.dropout_mask(x)? {
            Some(keep) => (x * keep)?,
            None => x.clone(),
        };
        let (a, b) = self.factors(x.dtype())?;
        // Each as one 2-D matmul over all positions (no weight broadcast per batch row).
        let h = super::decoder::matmul_t(&x, &a)?;
        super::decoder::matmul_t(&h, &b)?.affine(self.scaling, 0.0)
    }

    /// A and B in the activations' dtype (an f32 variable cast still carries its gradient back).
    pub fn factors(&self, dtype: candle_core::DType) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.a.as_tensor().to_dtype(dtype)?,
            self.b.as_tensor().to_dtype(dtype)?,
        ))
    }

    /// Inverted dropout's multiplier for x (0 or 1 / (1 − p) per element), drawn from the seeded
    /// generator (candle's rand is not seeded); `None` when dropout is off or not training.
    pub fn dropout_mask(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.dropout <= 0.0 || !self.training.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (p, scale) = (self.dropout as f32, 1.0 / (1.0 - self.dropout as f32));
        let keep: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..x.elem_count())
                .map(|_| if rng.uniform() >= p { scale } else { 0.0 })
                .collect()
        };
        Some(Tensor::from_vec(keep, x.shape(), x.device())?.to_dtype(x.dtype())).transpose()
    }

    /// scaling · B A, the change this adapter makes to its weight.
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.b
            .as_tensor()
            .matmul(self.a.as_tensor())?
            .affine(self.scaling, 0.0)
    }
}
