//! The decoder, ours: one implementation of the Llama / Mistral / Qwen2 / Qwen3 families, built only
//! from candle ops that record a backward (matmul, broadcast arithmetic, exp, sqrt, index_select,
//! cat, narrow), so every weight can receive a gradient. Full-sequence logits; computed in f32.

use super::config::{Activation, Head, ModelConfig};
use super::weights::Weights;
use candle_core::{DType, Device, Tensor, D};
use std::path::Path;

type Result<T> = crate::error::Result<T>;

pub struct Linear {
    /// The weight [out, in]; an empty placeholder when `nf4` holds it (QLoRA).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<super::lora::LoraWeights>,
    /// The frozen weight in NF4 (QLoRA): dequantized inside the matmul, never kept in f32.
    pub nf4: Option<std::sync::Arc<super::nf4::Nf4>>,
    /// Adapters served side by side (`ptl serve`), by adapter number: each row of a batch may use
    /// a different one (`None` where an adapter leaves this projection alone).
    pub served: Vec<Option<super::serving::ServedLora>>,
    /// The served adapters stacked (when their ranks agree), so that every row gathers its own.
    pub served_stack: Option<super::serving::Stack>,
}

impl Linear {
    fn load(w: &mut Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: w.take(&format!("{name}.weight"), &[out, inp])?,
            bias: if bias {
                Some(w.take(&format!("{name}.bias"), &[out])?)
            } else {
                None
            },
            lora: None,
            nf4: None,
            served: Vec::new(),
            served_stack: None,
        })
    }

    /// x [.., in] → [.., out]: W x + b, plus (B (A dropout(x))) · scaling with a LoRA adapter. The
    /// weights compute in x's dtype (mixed precision: an f32 weight is cast, and its gradient comes
    /// back to it in f32).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_routed(x, None)
    }

    /// [`Linear::forward`], plus each row's served adapter where `routing` assigns rows to them.
    pub fn forward_routed(
        &self,
        x: &Tensor,
        routing: Option<&super::serving::Routing>,
    ) -> candle_core::Result<Tensor> {
        let y = self.base_forward(x)?;
        match routing {
            Some(r) if !self.served.is_empty() => {
                r.add_deltas(y, x, &self.served, self.served_stack.as_ref())
            }
            _ => Ok(y),
        }
    }

    fn base_forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let fused = match &self.lora {
            // A decode step takes the composed terms below, each as dot products (no backward).
            Some(l) if !(self.nf4.is_none() && super::skinny::applies(x)) => {
                let base = match &self.nf4 {
                    Some(q) => super::lora_linear::Base::Nf4(q),
                    None => super::lora_linear::Base::Dense(&self.weight),
                };
                super::lora_linear::forward(x, base, l)?
            }
            _ => None,
        };
        if let Some(y) = fused {
            return match &self.bias {
                Some(b) => y.broadcast_add(&in_dtype_of(b, x)?),
                None => Ok(y),
            };
        }
        let y = match &self.nf4 {
            Some(q) => on_rows(x, q.shape.0, |x| super::frozen::nf4_matmul_t(x, q))?,
            None => matmul_t(x, &in_dtype_of(&self.weight, x)?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&in_dtype_of(b, x)?)?,
            None => y,
        };
        match &self.lora {
            Some(l) => y + l.forward(x)?,
            None => Ok(y),
        }
    }
}

pub struct Layer {
    pub input_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Before the MLP (Llama, Qwen, Mistral); after attention, before the residual (Gemma).
    pub post_norm: Tensor,
    /// Gemma: before the MLP, and after it (before the residual).
    pub pre_ff_norm: Option<Tensor>,
    pub post_ff_norm: Option<Tensor>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// The additive attention masks of one forward: for full layers and for sliding-window ones.
#[derive(Clone)]
pub struct Masks {
    pub full: Option<Tensor>,
    pub sliding: Option<Tensor>,
}

impl Masks {
    pub(super) fn for_layer(&self, sliding: bool) -> candle_core::Result<&Tensor> {
        let m = if sliding { &self.sliding } else { &self.full };
        m.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("no attention mask built for this layer kind".into())
        })
    }
}

/// One layer's cached keys and values, the positions already in them, and the buffers' capacity.
type CacheSlot<'a> = (&'a mut (Option<Tensor>, Option<Tensor>), usize, usize);

/// Where a forward's keys and values come from and go.
pub(super) enum Past<'a, 'b> {
    /// Nowhere: the whole sequence is in the batch (training, scoring).
    None,
    /// One cache for the batch, its rows aligned (left-padded prompts).
    Batch(&'a mut KvCache),
    /// A cache per row (continuous batching): one new token per row, each at its own position.
    Rows(&'a mut [&'b mut KvCache]),
}

/// [`Past`] for one layer: its attention mask, or (per-row caches) the layer's index and window.
pub(super) enum LayerPast<'a, 'c> {
    None(&'a Tensor),
    Batch(CacheSlot<'a>, &'a Tensor),
    Rows(&'a mut [&'c mut KvCache], usize, Option<usize>),
}

/// Writes `new` [b, kv heads, t, hd] into a cache buffer of `capacity` positions at `past` (made on
/// first use) and returns the view of the filled positions.
pub(super) fn write_past(
    slot: &mut Option<Tensor>,
    new: &Tensor,
    past: usize,
    capacity: usize,
) -> candle_core::Result<Tensor> {
    let (b, nkv, t, hd) = new.dims4()?;
    if past + t > capacity {
        return Err(candle_core::Error::Msg(format!(
            "the KV cache holds {capacity} positions, not {}",
            past + t
        )));
    }
    let buf = match slot.take() {
        Some(buf) => buf,
        None => Tensor::zeros((b, nkv, capacity, hd), new.dtype(), new.device())?,
    };
    buf.slice_set(&new.contiguous()?, 2, past)?;
    let view = buf.narrow(2, 0, past + t)?;
    *slot = Some(buf);
    Ok(view)
}

/// Keys and values of past positions, per layer ([b, kv heads, capacity, head_dim]): buffers of
/// `capacity` positions, the first `len` filled, written in place step by step (no copy of the past
/// per step).
pub struct KvCache {
    pub layers: Vec<(Option<Tensor>, Option<Tensor>)>,
    pub len: usize,
    pub capacity: usize,
}

pub struct Decoder {
    pub cfg: ModelConfig,
    pub device: Device,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None`: tied to the embedding.
    pub lm_head: Option<Tensor>,
    /// A reward model's scalar head, `score.weight` [1, hidden] (see `score`).
    pub score: Option<Tensor>,
    inv_freq: Vec<f32>,
    /// The sliding layers' rope frequencies when their base differs (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
    /// Whether dropout is active (training) or not (evaluation, scoring).
    pub training: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The generator of LoRA dropout masks (seeded by `apply_tuning`).
    pub dropout_rng: super::lora::DropoutRng,
    /// The dtype activations compute in when it differs from the weights' (mixed precision: f32
    /// weights, bf16 compute); `None`: the weights' dtype.
    pub compute_dtype: Option<DType>,
    /// Mixed precision as autocast on a CPU with the bf16 kernel: activations stay f32 and the
    /// training loop makes products take bf16 operands ([`super::matmul::Autocast`]).
    pub autocast: bool,
    /// Gradient checkpointing: what whole-sequence forwards keep for [`Decoder::backward`].
    pub(super) tape: super::recompute::Tape,
}

/// The rotary tables (cos, sin) of one forward: the full layers', and the sliding layers' where
/// their base differs (Gemma 3).
#[derive(Clone)]
pub(super) struct Ropes {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

impl Ropes {
    pub(super) fn for_layer(&self, sliding: bool) -> &(Tensor, Tensor) {
        match (&self.local, sliding) {
            (Some(local), true) => local,
            _ => &self.global,
        }
    }
}

/// x [.., in] times wᵀ (w [out, in]) as one 2-D matmul over all leading positions: broadcasting w
/// over the batch would copy it per row and make backward form a weight gradient per row.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    on_rows(x, w.dim(0)?, |x| {
        // A decode step's few rows (no gradient is taken while generating).
        if let Some(y) = super::skinny::matmul_t(x, w)? {
            return Ok(y);
        }
        // A weight that does not train gets no gradient formed in backward (a trained weight cast
        // to the compute dtype is not a variable itself but still carries the gradient back to one).
        if w.track_op() {
            super::matmul::matmul(x, &w.t()?)
        } else {
            super::frozen::matmul_t(x, w)
        }
    })
}

/// `f` applied to x [.., in] seen as one matrix [positions, in], its result [positions, out] given
/// x's leading shape back.
pub(super) fn on_rows(
    x: &Tensor,
    out: usize,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let inp = *dims.last().unwrap_or(&1);
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let y = f(&x.reshape((rows, inp))?)?;
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    y.reshape(dims)
}

/// The index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0 as u32
}

/// `w` in `x`'s dtype (the same tensor when they agree): weights kept in f32 compute in the
/// activations' dtype, and the cast carries their gradient back in f32.
pub fn in_dtype_of(w: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    w.to_dtype(x.dtype())
}

/// `x` in f32 when it is in a half-precision dtype (bf16, f16); as it is otherwise (f32, and f64 for
/// gradient checks): where statistics (norms, softmax) are computed.
pub fn at_least_f32(x: &Tensor) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// RMSNorm as transformers computes it: x / sqrt(mean(x²) + eps) in f32, back in x's dtype, times
/// weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if super::fused::fusable(x, weight) {
        return super::fused::rms_norm(x, weight, eps);
    }
    let x32 = at_least_f32(x)?;
    let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
    x32.broadcast_div(&(var + eps)?.sqrt()?)?
        .to_dtype(x.dtype())?
        .broadcast_mul(&in_dtype_of(weight, x)?)
}

/// c·tanh(x / c): Gemma 2's soft-capping of attention scores and logits.
pub fn softcap(x: &Tensor, c: f64) -> candle_core::Result<Tensor> {
    (x / c)?.tanh()? * c
}

/// Softmax over the last dimension, composed (candle's fused one records no backward).
pub fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// log_softmax over the last dimension, composed.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The rotary embedding of queries or keys [b, heads, t, head_dim] with cos and sin [b, 1, t,
/// head_dim]: one fused op on the CPU (the same bits), the composed ops elsewhere.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if super::fused::rope_fusable(x, cos, sin) {
        super::fused::rope(x, cos, sin)
    } else {
        rope_composed(x, cos, sin)
    }
}

/// x·cos + rotate_half(x)·sin, as transformers' `apply_rotary_pos_emb`.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary frequencies, with Llama 3 scaling when configured (transformers' `_compute_llama3_parameters`).
/// Rope frequencies for `theta` (as transformers computes them: 1 / θ^(2i/d)).
fn base_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim)
        .step_by(2)
        .map(|i| 1.0 / (theta as f32).powf(i as f32 / dim as f32))
        .collect()
}

/// The sliding layers' rope frequencies, when they have a base of their own.
fn local_freq(cfg: &ModelConfig) -> Option<Vec<f32>> {
    cfg.rope_theta_local
        .filter(|t| *t != cfg.rope_theta || cfg.rope_linear_factor.is_some())
        .map(|t| base_freq(t, cfg.head_dim))
}

fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let base = base_freq(cfg.rope_theta, cfg.head_dim);
    if let Some(factor) = cfg.rope_linear_factor {
        return base.into_iter().map(|f| f / factor as f32).collect();
    }
    let Some(s) = &cfg.rope_scaling else {
        return base;
    };
    let (factor, low, high, old) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
        s.original_max_position_embeddings as f32,
    );
    let low_freq_wavelen = old / low;
    let high_freq_wavelen = old / high;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_freq_wavelen {
                f / factor
            } else {
                f
            };
            // Frequencies are finite, so "not below and not above" is "within".
            let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            if medium {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

impl Decoder {
    /// Loads an HF model folder; weights that are missing, misshapen or left over are typed errors.
    pub fn load(dir: &Path, device: &Device) -> Result<Decoder> {
        let cfg = ModelConfig::load(dir)?;
        let mut w = Weights::load(dir, device)?;
        let (h, hd, nh, nkv, inter) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let embed = w.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(Layer {
                input_norm: w.take(&format!("{p}.input_layernorm.weight"), &[h])?,
                q: Linear::load(&mut w, &format!("{a}.q_proj"), nh * hd, h, cfg.qkv_bias)?,
                k: Linear::load(&mut w, &format!("{a}.k_proj"), nkv * hd, h, cfg.qkv_bias)?,
                v: Linear::load(&mut w, &format!("{a}.v_proj"), nkv * hd, h, cfg.qkv_bias)?,
                o: Linear::load(&mut w, &format!("{a}.o_proj"), h, nh * hd, cfg.o_bias)?,
                q_norm: if cfg.qk_norm {
                    Some(w.take(&format!("{a}.q_norm.weight"), &[hd])?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(w.take(&format!("{a}.k_norm.weight"), &[hd])?)
                } else {
                    None
                },
                post_norm: w.take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                pre_ff_norm: if cfg.gemma_norms {
                    Some(w.take(&format!("{p}.pre_feedforward_layernorm.weight"), &[h])?)
                } else {
                    None
                },
                post_ff_norm: if cfg.gemma_norms {
                    Some(w.take(&format!("{p}.post_feedforward_layernorm.weight"), &[h])?)
                } else {
                    None
                },
                gate: Linear::load(&mut w, &format!("{m}.gate_proj"), inter, h, cfg.mlp_bias)?,
                up: Linear::load(&mut w, &format!("{m}.up_proj"), inter, h, cfg.mlp_bias)?,
                down: Linear::load(&mut w, &format!("{m}.down_proj"), h, inter, cfg.mlp_bias)?,
            });
        }
        let norm = w.take("model.norm.weight", &[h])?;
        let (lm_head, score) = match cfg.head {
            // A sequence classifier has no output matrix over the vocabulary.
            Head::Score => (None, Some(w.take("score.weight", &[1, h])?)),
            Head::Lm if cfg.tie_word_embeddings && !w.has("lm_head.weight") => (None, None),
            Head::Lm => (Some(w.take("lm_head.weight", &[cfg.vocab_size, h])?), None),
        };
        w.finish()?;
        Ok(Decoder {
            inv_freq: inv_freq(&cfg),
            inv_freq_local: local_freq(&cfg),
            cfg,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            score,
            training: Default::default(),
            dropout_rng: Default::default(),
            compute_dtype: None,
            autocast: false,
            tape: Default::default(),
        })
    }

    /// A randomly initialized model (normal(0, 0.02) weights, unit norms, as transformers initializes),
    /// the same for the same seed.
    pub fn random(cfg: ModelConfig, seed: u64, device: &Device) -> Result<Decoder> {
        let rng = std::cell::RefCell::new(super::lora::Rng::new(seed));
        let normal = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let mut rng = rng.borrow_mut();
            let values: Vec<f32> = (0..n).map(|_| rng.normal() * 0.02).collect();
            Tensor::from_vec(values, shape, device)
        };
        let ones = |n: usize| Tensor::ones(n, DType::F32, device);
        let zeros = |n: usize| Tensor::zeros(n, DType::F32, device);
        let (h, hd, nh, nkv, inter) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let linear = |out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: normal(&[out, inp])?,
                bias: if bias { Some(zeros(out)?) } else { None },
                lora: None,
                nf4: None,
                served: Vec::new(),
                served_stack: None,
            })
        };
        // A norm's weight that computes as 1: Gemma's (1 + w) starts at w = 0.
        let unit = |n: usize| if cfg.gemma_norms { zeros(n) } else { ones(n) };
        let layers = (0..cfg.num_layers)
            .map(|_| {
                Ok(Layer {
                    input_norm: unit(h)?,
                    q: linear(nh * hd, h, cfg.qkv_bias)?,
                    k: linear(nkv * hd, h, cfg.qkv_bias)?,
                    v: linear(nkv * hd, h, cfg.qkv_bias)?,
                    o: linear(h, nh * hd, cfg.o_bias)?,
                    q_norm: if cfg.qk_norm { Some(unit(hd)?) } else { None },
                    k_norm: if cfg.qk_norm { Some(unit(hd)?) } else { None },
                    post_norm: unit(h)?,
                    pre_ff_norm: if cfg.gemma_norms {
                        Some(unit(h)?)
                    } else {
                        None
                    },
                    post_ff_norm: if cfg.gemma_norms {
                        Some(unit(h)?)
                    } else {
                        None
                    },
                    gate: linear(inter, h, cfg.mlp_bias)?,
                    up: linear(inter, h, cfg.mlp_bias)?,
                    down: linear(h, inter, cfg.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            inv_freq: inv_freq(&cfg),
            inv_freq_local: local_freq(&cfg),
            embed: normal(&[cfg.vocab_size, h])?,
            lm_head: if cfg.tie_word_embeddings {
                None
            } else {
                Some(normal(&[cfg.vocab_size, h])?)
            },
            norm: unit(h)?,
            score: None,
            layers,
            cfg,
            device: device.clone(),
            training: Default::default(),
            dropout_rng: Default::default(),
            compute_dtype: None,
            autocast: false,
            tape: Default::default(),
        })
    }

    /// Number of weights (adapters not counted).
    pub fn parameter_count(&mut self) -> usize {
        self.params_mut().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// cos and sin [b, 1, t, head_dim] for the given positions (frequencies repeated, as transformers does).
    fn rope(
        &self,
        freq: &[f32],
        positions: &[u32],
        b: usize,
        t: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let half = freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half * 2);
        let mut sin = Vec::with_capacity(positions.len() * half * 2);
        for &pos in positions {
            let angles: Vec<f32> = freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = (b, 1, t, half * 2);
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype())?,
            Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype())?,
        ))
    }

    /// Additive mask [b, 1, t, past + t]: query i of row r sees key j when j is not later, lies in
    /// the sliding window, and belongs to the same document (`segments`, 0 = padding) of that row.
    fn mask(
        &self,
        b: usize,
        t: usize,
        past: usize,
        segments: Option<&[Vec<u32>]>,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let total = past + t;
        let mut m = Vec::with_capacity(b * t * total);
        for r in 0..b {
            for i in 0..t {
                let qi = past + i;
                for j in 0..total {
                    let mut visible = j <= qi && window.is_none_or(|w| qi - j < w);
                    if let Some(seg) = segments {
                        let (sq, sk) = (seg[r][qi], seg[r][j]);
                        visible &= sk != 0 && (sq == sk || sq == 0);
                        // A padding query still attends to itself, so its row is finite.
                        visible |= sq == 0 && j == qi;
                    }
                    m.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, total), &self.device)?.to_dtype(self.dtype())
    }

    fn attention(
        &self,
        l: &Layer,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        layer: LayerPast,
        routing: Option<&super::serving::Routing>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let (cos, sin) = rope;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2);
        let mut q = heads(l.q.forward_routed(x, routing)?, nh)?;
        let mut k = heads(l.k.forward_routed(x, routing)?, nkv)?;
        let mut v = heads(l.v.forward_routed(x, routing)?, nkv)?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = self.norm_with(&q, qn)?;
            k = self.norm_with(&k, kn)?;
        }
        let q = apply_rope(&q, cos, sin)?;
        k = apply_rope(&k, cos, sin)?;
        let out = match layer {
            LayerPast::None(mask) => self.attend(&q, &k, &v, Some(mask), false)?,
            LayerPast::Batch(((ck, cv), past, capacity), mask) => {
                // Keys and values are written in place into the cache's buffers of `capacity`
                // positions, and the attention reads a view of them (the matmuls take it as it is).
                for (slot, new) in [(&mut *ck, &mut k), (&mut *cv, &mut v)] {
                    *new = write_past(slot, new, past, capacity)?;
                }
                self.attend(&q, &k, &v, Some(mask), true)?
            }
            LayerPast::Rows(rows, i, window) => {
                // One new position per row, each row against its own cache (continuous batching):
                // every earlier position is visible, within the window on a sliding layer. The rows'
                // keys and values are padded to the longest and attended in one batch, the padding
                // masked out.
                let mut views = Vec::with_capacity(b);
                for (r, cache) in rows.iter_mut().enumerate() {
                    let (past, capacity) = (cache.len, cache.capacity);
                    let (ck, cv) = &mut cache.layers[i];
                    let kr = write_past(ck, &k.narrow(0, r, 1)?, past, capacity)?;
                    let vr = write_past(cv, &v.narrow(0, r, 1)?, past, capacity)?;
                    let seen = past + 1;
                    let from = window.map_or(0, |w| seen.saturating_sub(w));
                    views.push((
                        kr.narrow(2, from, seen - from)?,
                        vr.narrow(2, from, seen - from)?,
                    ));
                }
                let widths: Vec<usize> = views
                    .iter()
                    .map(|(k, _)| k.dim(2))
                    .collect::<candle_core::Result<_>>()?;
                let width = widths.iter().copied().max().unwrap_or(0);
                let pad = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                    if n == width {
                        t.contiguous()
                    } else {
                        t.pad_with_zeros(2, 0, width - n)
                    }
                };
                let keys = views
                    .iter()
                    .zip(&widths)
                    .map(|((k, _), &n)| pad(k, n))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let values = views
                    .iter()
                    .zip(&widths)
                    .map(|((_, v), &n)| pad(v, n))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let mask: Vec<f32> = widths
                    .iter()
                    .flat_map(|&n| {
                        (0..width).map(move |j| if j < n { 0.0 } else { f32::NEG_INFINITY })
                    })
                    .collect();
                let mask =
                    Tensor::from_vec(mask, (b, 1, 1, width), &self.device)?.to_dtype(q.dtype())?;
                self.attend(
                    &q,
                    &Tensor::cat(&keys, 0)?,
                    &Tensor::cat(&values, 0)?,
                    Some(&mask),
                    false,
                )?
            }
        };
        l.o.forward_routed(&out, routing)
    }

    /// Attention of queries [b, heads, t, hd] over keys and values [b, kv heads, tk, hd], with an
    /// additive mask (none: every key visible); returns [b, t, heads · hd]. `cache_view`: keys and
    /// values are a prefix view of a cache buffer, which the matmuls read as it is; anything else is
    /// made contiguous first (candle's CPU matmul mis-reads some batched strided layouts).
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        cache_view: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let (nkv, tk) = (k.dim(1)?, k.dim(2)?);
        // Grouped-query attention without copying keys and values per query head: the `rep` query
        // heads that share a key/value head (consecutive, as transformers' repeat_kv orders them)
        // are stacked as rows of one matmul against that head.
        let rep = nh / nkv;
        let grouped = q.contiguous()?.reshape((b, nkv, rep * t, hd))?;
        let (kt, v) = if cache_view {
            (k.t()?, v.clone())
        } else {
            (k.t()?.contiguous()?, v.contiguous()?)
        };
        let mut scores = (super::matmul::matmul(&grouped, &kt)? / self.cfg.attn_scale_dim.sqrt())?
            .reshape((b, nh, t, tk))?;
        if let Some(c) = self.cfg.attn_logit_softcapping {
            scores = softcap(&scores, c)?;
        }
        let probs = match mask {
            Some(m) if super::fused::softmax_fusable(&scores, m) => {
                super::fused::masked_softmax(&scores, m)?
            }
            _ => {
                if let Some(m) = mask {
                    scores = scores.broadcast_add(m)?;
                }
                // The softmax in f32 whatever the compute dtype (as transformers' attention).
                softmax(&at_least_f32(&scores)?)?.to_dtype(v.dtype())?
            }
        };
        super::matmul::matmul(&probs.reshape((b, nkv, rep * t, tk))?, &v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * hd))
    }

    /// The decoder proper: token ids [b, t] at `positions` (b·t), with `masks`, extending `past`,
    /// each row through its served adapter where `routing` says.
    pub(super) fn run(
        &self,
        ids: &Tensor,
        positions: &[u32],
        masks: &Masks,
        mut past: Past,
        routing: Option<&super::serving::Routing>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let mut x = self.embed_ids(ids)?;
        let ropes = Ropes {
            global: self.rope(&self.inv_freq, positions, b, t)?,
            local: match &self.inv_freq_local {
                Some(f) => Some(self.rope(f, positions, b, t)?),
                None => None,
            },
        };
        if matches!(past, Past::None) && routing.is_none() && self.tape.is_on() {
            return self.run_checkpointed(x, ids, ropes, masks);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let sliding = self.cfg.is_sliding(i);
            let layer = match &mut past {
                Past::None => LayerPast::None(masks.for_layer(sliding)?),
                Past::Batch(c) => {
                    let (len, capacity) = (c.len, c.capacity);
                    LayerPast::Batch((&mut c.layers[i], len, capacity), masks.for_layer(sliding)?)
                }
                Past::Rows(rows) => {
                    LayerPast::Rows(rows, i, self.cfg.sliding_window.filter(|_| sliding))
                }
            };
            x = self.layer_forward(l, &x, ropes.for_layer(sliding), layer, routing)?;
        }
        match past {
            Past::None => {}
            Past::Batch(c) => c.len += t,
            Past::Rows(rows) => rows.iter_mut().for_each(|c| c.len += t),
        }
        self.norm_with(&x, &self.norm)
    }

    /// Token embeddings [b, t, hidden] in the compute dtype (Gemma: scaled by √hidden).
    pub(super) fn embed_ids(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))?
            .to_dtype(self.dtype())?;
        match self.cfg.embed_scale {
            Some(s) => {
                // As transformers: the scale in the embeddings' dtype (√hidden rounded in bf16).
                let s = Tensor::new(s as f32, x.device())?.to_dtype(x.dtype())?;
                x.broadcast_mul(&s)
            }
            None => Ok(x),
        }
    }

    /// One decoder layer: attention and MLP with their norms and residuals.
    pub(super) fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        layer: LayerPast,
        routing: Option<&super::serving::Routing>,
    ) -> candle_core::Result<Tensor> {
        let n = self.norm_with(x, &l.input_norm)?;
        let mut h = self.attention(l, &n, rope, layer, routing)?;
        if self.cfg.gemma_norms {
            h = self.norm_with(&h, &l.post_norm)?;
        }
        let x = (x + h)?;
        let n = match &l.pre_ff_norm {
            Some(w) => self.norm_with(&x, w)?,
            None => self.norm_with(&x, &l.post_norm)?,
        };
        let gate = l.gate.forward_routed(&n, routing)?;
        let up = l.up.forward_routed(&n, routing)?;
        let product = match self.cfg.activation {
            Activation::Silu if super::swiglu::fusable(&gate, &up) => {
                super::swiglu::swiglu(&gate, &up)?
            }
            Activation::Silu => (gate.silu()? * up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
        };
        let mut mlp = l.down.forward_routed(&product, routing)?;
        if let Some(w) = &l.post_ff_norm {
            mlp = self.norm_with(&mlp, w)?;
        }
        x + mlp
    }

    /// The state of the generator LoRA dropout draws its masks from (checkpointed, replayed by
    /// gradient checkpointing). The lock guards one integer, so a poisoned lock still holds a whole
    /// state and is read through.
    pub fn dropout_state(&self) -> u64 {
        self.dropout_rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state()
    }

    /// Sets the dropout generator to continue from `state` (see [`Decoder::dropout_state`]).
    pub fn set_dropout_state(&self, state: u64) {
        *self.dropout_rng.lock().unwrap_or_else(|e| e.into_inner()) =
            super::lora::Rng::from_state(state);
    }

    /// RMSNorm with this model's weight convention: x̂ · w, or Gemma's x̂ · (1 + w).
    pub(super) fn norm_with(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        if self.cfg.gemma_norms {
            rms_norm(x, &(at_least_f32(w)? + 1.0)?, self.cfg.rms_norm_eps)
        } else {
            rms_norm(x, w, self.cfg.rms_norm_eps)
        }
    }

    /// The masks a forward needs: without a window for full layers, within `sliding_window` for
    /// sliding ones; `build` makes one for a window.
    pub(super) fn masks(
        &self,
        build: impl Fn(Option<usize>) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Masks> {
        let n = self.cfg.num_layers;
        let any = |sliding: bool| (0..n).any(|i| self.cfg.is_sliding(i) == sliding);
        Ok(Masks {
            full: if any(false) { Some(build(None)?) } else { None },
            sliding: if any(true) {
                Some(build(self.cfg.sliding_window)?)
            } else {
                None
            },
        })
    }

    /// Final hidden states [b, t, hidden] of a batch (for losses that apply the output matrix themselves).
    pub fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let masks = self.masks(|w| self.mask(1, t, 0, None, w))?;
        self.run(ids, &positions, &masks, Past::None, None)
    }

    /// The output matrix [vocab, hidden] (the embedding when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Hidden states [b, t, hidden] → logits [b, t, vocab] (soft-capped where the model says so).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let logits = matmul_t(hidden, &in_dtype_of(self.head(), hidden)?)?;
        match self.cfg.final_logit_softcapping {
            Some(c) => softcap(&logits, c),
            None => Ok(logits),
        }
    }

    /// The dtype activations compute in.
    pub fn dtype(&self) -> DType {
        self.compute_dtype.unwrap_or(self.embed.dtype())
    }

    /// Logits [b, t, vocab] for token ids [b, t] (every row one sequence from position 0).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let masks = self.masks(|w| self.mask(1, t, 0, None, w))?;
        self.logits(&self.run(ids, &positions, &masks, Past::None, None)?)
    }

    /// Logits for a batch of rows padded on the right (`segments` 0) or packed with several documents
    /// (segments 1, 2, ...): no attention across documents or onto padding; positions restart per document.
    pub fn forward_packed(&self, ids: &[Vec<u32>], segments: &[Vec<u32>]) -> Result<Tensor> {
        let hidden = self.hidden_packed(ids, segments)?;
        Ok(self.logits(&hidden)?)
    }

    /// Final hidden states [b, t, hidden] of a padded or packed batch (see `forward_packed`).
    pub fn hidden_packed(&self, ids: &[Vec<u32>], segments: &[Vec<u32>]) -> Result<Tensor> {
        let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
        let mut positions = Vec::with_capacity(b * t);
        for seg in segments {
            let mut pos = 0u32;
            for (i, &s) in seg.iter().enumerate() {
                if i > 0 && s != seg[i - 1] {
                    pos = 0;
                }
                positions.push(pos);
                pos += 1;
            }
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, t), &self.device)?;
        let masks = self.masks(|w| self.mask(b, t, 0, Some(segments), w))?;
        Ok(self.run(&ids, &positions, &masks, Past::None, None)?)
    }

    /// Every weight with its checkpoint name.
    pub fn params_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out: Vec<(String, &mut Tensor)> =
            vec![("model.embed_tokens.weight".into(), &mut self.embed)];
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), &mut l.input_norm));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                &mut l.post_norm,
            ));
            for (name, lin) in [
                ("self_attn.q_proj", &mut l.q),
                ("self_attn.k_proj", &mut l.k),
                ("self_attn.v_proj", &mut l.v),
                ("self_attn.o_proj", &mut l.o),
                ("mlp.gate_proj", &mut l.gate),
                ("mlp.up_proj", &mut l.up),
                ("mlp.down_proj", &mut l.down),
            ] {
                out.push((format!("{p}.{name}.weight"), &mut lin.weight));
                if let Some(b) = &mut lin.bias {
                    out.push((format!("{p}.{name}.bias"), b));
                }
            }
            if let Some(n) = &mut l.q_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), n));
            }
            if let Some(n) = &mut l.k_norm {
                out.push((format!("{p}.self_attn.k_norm.weight"), n));
            }
            if let Some(n) = &mut l.pre_ff_norm {
                out.push((format!("{p}.pre_feedforward_layernorm.weight"), n));
            }
            if let Some(n) = &mut l.post_ff_norm {
                out.push((format!("{p}.post_feedforward_layernorm.weight"), n));
            }
        }
        out.push(("model.norm.weight".into(), &mut self.norm));
        if let Some(h) = &mut self.lm_head {
            out.push(("lm_head.weight".into(), h));
        }
        if let Some(s) = &mut self.score {
            out.push(("score.weight".into(), s));
        }
        out
    }

    /// Converts every weight (and adapter) to `dtype` (f64 for gradient checks).
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        for (_, t) in self.params_mut() {
            *t = t.to_dtype(dtype)?;
        }
        Ok(())
    }

    /// Turns every weight into a trainable variable (full fine-tuning); returns them by name.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, candle_core::Var)>> {
        let mut vars = Vec::new();
        for (name, t) in self.params_mut() {
            let var = candle_core::Var::from_tensor(t)?;
            *t = var.as_tensor().clone();
            vars.push((name, var));
        }
        Ok(vars)
    }

    /// log p(token i+1 | tokens 0..=i) for each i, as a [n − 1, 1] tensor (differentiable).
    fn next_token_logprobs(&self, ids: &[u32]) -> Result<Tensor> {
        // Softmax statistics in f32 whatever the weights' dtype.
        let logits = at_least_f32(&self.forward(&self.ids(ids)?)?.squeeze(0)?)?;
        let lp = log_softmax(&logits.narrow(0, 0, ids.len() - 1)?)?;
        let targets = Tensor::from_vec(ids[1..].to_vec(), (ids.len() - 1, 1), &self.device)?;
        Ok(lp.gather(&targets, 1)?)
    }

    /// Mean negative log-likelihood of each next token (a differentiable scalar).
    pub fn nll(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self.next_token_logprobs(ids)?.mean_all()?.neg()?)
    }

    fn ids(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            ids.to_vec(),
            (1, ids.len()),
            &self.device,
        )?)
    }

    /// log p(token i+1 | tokens 0..=i) for each i.
    pub fn token_logprobs(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            return Ok(vec![]);
        }
        Ok(self
            .next_token_logprobs(ids)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Logits of the last position.
    pub fn last_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let logits = self.forward(&self.ids(ids)?)?;
        Ok(logits
            .squeeze(0)?
            .get(ids.len() - 1)?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    /// `n` greedy tokens after `prompt` (recomputing the whole sequence each step).
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        let mut ids = prompt.to_vec();
        for _ in 0..n {
            ids.push(argmax(&self.last_logits(&ids)?));
        }
        Ok(ids[prompt.len()..].to_vec())
    }
}
