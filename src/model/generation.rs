//! Batched generation: many prompts at once with one KV cache, prompts padded on the left, each row
//! stopping at its own stop token, greedy or sampled (temperature, top-k, top-p, as transformers'
//! warpers) from a generator seeded per row, so a row's tokens do not depend on its batch.

use super::decoder::{argmax, Decoder, KvCache, Past};
use super::lora::Rng;
use crate::error::Result;
use candle_core::{DType, Tensor};

/// How the next token is chosen from a row's logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature` over the `top_k` most likely tokens (0: all), then the smallest
    /// prefix holding `top_p` of the mass.
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
    },
}

impl Sampling {
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        match *self {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
            } => sample(logits, temperature, top_k, top_p, rng),
        }
    }
}

/// What to generate: how many tokens at most, which tokens end a row, how tokens are chosen.
#[derive(Clone, Debug)]
pub struct Generation {
    pub max_new: usize,
    /// A row ends after producing one of these (it is kept in the row's output).
    pub stop: Vec<u32>,
    pub sampling: Sampling,
}

/// Samples from logits with temperature, top-k and top-p (nucleus), as transformers' warpers do.
pub fn sample(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, rng: &mut Rng) -> u32 {
    let mut order: Vec<(usize, f32)> = logits
        .iter()
        .map(|&l| l / temperature.max(1e-6))
        .enumerate()
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let max = order[0].1;
    let mut probs: Vec<f32> = order.iter().map(|(_, l)| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    let mut keep = probs.len();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if acc >= top_p {
            keep = i + 1;
            break;
        }
    }
    let mass: f32 = probs[..keep].iter().sum();
    let mut r = rng.uniform() * mass;
    for (i, p) in probs[..keep].iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return order[i].0 as u32;
        }
    }
    order[keep - 1].0 as u32
}

/// The rows still generating: their index among the prompts, left padding and generator.
#[derive(Clone)]
struct Active {
    row: usize,
    pad: usize,
    rng: Rng,
}

impl Decoder {
    /// Generates up to `g.max_new` tokens after each prompt, all rows in one batch (prompts padded
    /// on the left, so every row's next token comes from the same position); row i draws from
    /// `Rng::new(seeds[i])`. A row leaves the batch when it produces a stop token. Nothing records
    /// gradients; set the model to evaluation first for dropout to be off.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        g: &Generation,
    ) -> Result<Vec<Vec<u32>>> {
        let _decoding = super::skinny::Decoding::start();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if g.max_new == 0 || width == 0 {
            return Ok(out);
        }
        let mut active: Vec<Active> = prompts
            .iter()
            .enumerate()
            .map(|(row, p)| Active {
                row,
                pad: width - p.len(),
                rng: Rng::new(seeds.get(row).copied().unwrap_or(0)),
            })
            .collect();
        let mut cache = KvCache {
            layers: vec![(None, None); self.cfg.num_layers],
            len: 0,
            capacity: width + g.max_new,
        };
        // The first step reads the padded prompts; each later step one token per row.
        let mut step_ids: Vec<u32> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()))
            .collect();
        let mut t = width;
        for _ in 0..g.max_new {
            let b = active.len();
            let past = cache.len;
            let pads: Vec<usize> = active.iter().map(|a| a.pad).collect();
            let positions: Vec<u32> = pads
                .iter()
                .flat_map(|&pad| (past..past + t).map(move |i| i.saturating_sub(pad) as u32))
                .collect();
            let ids = Tensor::from_vec(step_ids, (b, t), &self.device)?;
            let masks = self.masks(|w| self.left_padded_mask(&pads, t, past, w))?;
            let h = self.run(&ids, &positions, &masks, Past::Batch(&mut cache), None)?;
            let logits: Vec<Vec<f32>> = self
                .logits(&h.narrow(1, t - 1, 1)?)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2()?;
            let mut next = Vec::with_capacity(b);
            let mut keep = Vec::with_capacity(b);
            for (i, (a, l)) in active.iter_mut().zip(&logits).enumerate() {
                let token = g.sampling.pick(l, &mut a.rng);
                out[a.row].push(token);
                if !g.stop.contains(&token) {
                    keep.push(i);
                    next.push(token);
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < b {
                active = keep.iter().map(|&i| active[i].clone()).collect();
                cache.keep_rows(&keep, &self.device)?;
            }
            step_ids = next;
            t = 1;
        }
        Ok(out)
    }

    /// Additive mask [b, 1, t, past + t] for left-padded rows: a query sees the keys of its own row
    /// that are not padding, not later, and within `window`; a padding query sees only itself (so
    /// its softmax is finite).
    pub(super) fn left_padded_mask(
        &self,
        pads: &[usize],
        t: usize,
        past: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let total = past + t;
        let mut m = Vec::with_capacity(pads.len() * t * total);
        for &pad in pads {
            for i in 0..t {
                let qi = past + i;
                for j in 0..total {
                    let visible = if qi < pad {
                        j == qi
                    } else {
                        j >= pad && j <= qi && window.is_none_or(|w| qi - j < w)
                    };
                    m.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Tensor::from_vec(m, (pads.len(), 1, t, total), &self.device)?.to_dtype(self.dtype())
    }
}

impl KvCache {
    /// Keeps only the batch rows at `rows` (in that order) in every layer's keys and values.
    fn keep_rows(
        &mut self,
        rows: &[usize],
        device: &candle_core::Device,
    ) -> candle_core::Result<()> {
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            device,
        )?;
        for (k, v) in &mut self.layers {
            for slot in [k, v] {
                if let Some(t) = slot.take() {
                    *slot = Some(t.contiguous()?.index_select(&index, 0)?);
                }
            }
        }
        Ok(())
    }
}
