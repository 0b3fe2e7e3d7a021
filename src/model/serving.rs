//! Serving many LoRA adapters on one base (S-LoRA / Punica's idea, on the CPU): each projection
//! keeps every served adapter's A and B beside the base weight, one forward serves rows of different
//! adapters (the base matmul shared, each row's low-rank term computed for its adapter's rows and
//! added back), and continuous batching decodes rows that each own a KV cache, so a row can join or
//! leave between steps.

use super::decoder::{matmul_t, Decoder, KvCache, Masks, Past};
use crate::error::Result;
use candle_core::{DType, Tensor};
use std::path::Path;

/// One served adapter's weights on one projection: Δy = B' (A x), with B' = scaling · B folded once
/// when the adapter is loaded.
#[derive(Clone)]
pub struct ServedLora {
    pub a: Tensor,
    pub b_scaled: Tensor,
}

/// Every served adapter of a projection in one tensor each, slot 0 a zero adapter (rows without
/// one): A transposed [adapters + 1, in, r] and B' transposed [adapters + 1, r, out].
#[derive(Clone)]
pub struct Stack {
    a_t: Tensor,
    b_t: Tensor,
}

impl Stack {
    /// The stack of `served`, when every adapter present has one rank (else `None`: grouped rows).
    fn of(served: &[Option<ServedLora>]) -> candle_core::Result<Option<Stack>> {
        let ranks: Vec<usize> = served
            .iter()
            .flatten()
            .map(|l| l.a.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let Some(&r) = ranks.first() else {
            return Ok(None);
        };
        if ranks.iter().any(|&k| k != r) {
            return Ok(None);
        }
        let Some(first) = served.iter().flatten().next() else {
            return Ok(None);
        };
        let (like, inp, out) = (&first.a, first.a.dim(1)?, first.b_scaled.dim(0)?);
        let zero_a = Tensor::zeros((inp, r), like.dtype(), like.device())?;
        let zero_b = Tensor::zeros((r, out), like.dtype(), like.device())?;
        let mut a_t = vec![zero_a.clone()];
        let mut b_t = vec![zero_b.clone()];
        for l in served {
            match l {
                Some(l) => {
                    a_t.push(l.a.t()?.contiguous()?);
                    b_t.push(l.b_scaled.t()?.contiguous()?);
                }
                None => {
                    a_t.push(zero_a.clone());
                    b_t.push(zero_b.clone());
                }
            }
        }
        Ok(Some(Stack {
            a_t: Tensor::stack(&a_t, 0)?,
            b_t: Tensor::stack(&b_t, 0)?,
        }))
    }
}

/// Which rows of a batch use which served adapter (rows without one use the base alone).
pub struct Routing {
    /// (adapter number, the rows that use it).
    groups: Vec<(usize, Tensor)>,
    /// Each row's slot in a [`Stack`]: its adapter number + 1, or 0.
    slots: Tensor,
    /// Whether to gather from the stack: when many adapters share few rows. Gathering copies each
    /// row's A and B (a cost that grows with the rows); grouping costs a few ops per adapter (a
    /// cost that grows with the adapters). On the bench, with 4 adapters, gathering made mixing
    /// nearly free at 8 rows but cost a fifth of the rate at 32.
    gather: bool,
}

impl Routing {
    /// `rows[i]`: row i's adapter number, if any; `None` when no row uses an adapter.
    pub fn new(rows: &[Option<usize>], device: &candle_core::Device) -> Result<Option<Routing>> {
        let mut ids: Vec<usize> = rows.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(None);
        }
        let groups: Vec<(usize, Tensor)> = ids
            .into_iter()
            .map(|a| {
                let members: Vec<u32> = (0..rows.len())
                    .filter(|&i| rows[i] == Some(a))
                    .map(|i| i as u32)
                    .collect();
                let n = members.len();
                Ok((a, Tensor::from_vec(members, n, device)?))
            })
            .collect::<Result<_>>()?;
        let slots: Vec<u32> = rows.iter().map(|r| r.map_or(0, |a| a as u32 + 1)).collect();
        let slots = Tensor::from_vec(slots, rows.len(), device)?;
        let gather = groups.len() > 1 && rows.len() <= 4 * groups.len();
        Ok(Some(Routing {
            groups,
            slots,
            gather,
        }))
    }

    /// `y` (the base projection of `x`, rows first) plus each row's adapter term: from the stack
    /// (each row gathers its adapter's A and B; one pair of batched matmuls whatever the mix), or
    /// adapter by adapter for the rows that use it.
    pub fn add_deltas(
        &self,
        mut y: Tensor,
        x: &Tensor,
        served: &[Option<ServedLora>],
        stack: Option<&Stack>,
    ) -> candle_core::Result<Tensor> {
        if let Some(st) = stack.filter(|_| self.gather) {
            let a = st.a_t.index_select(&self.slots, 0)?.to_dtype(x.dtype())?;
            let b = st.b_t.index_select(&self.slots, 0)?.to_dtype(x.dtype())?;
            let x3 = if x.rank() == 3 {
                x.clone()
            } else {
                x.unsqueeze(1)?
            };
            let delta = x3
                .contiguous()?
                .matmul(&a)?
                .matmul(&b)?
                .reshape(y.shape())?;
            let delta = delta.to_dtype(y.dtype())?;
            return y + delta;
        }
        for (adapter, rows) in &self.groups {
            let Some(Some(l)) = served.get(*adapter) else {
                continue;
            };
            let xs = x.index_select(rows, 0)?;
            let (a, b) = (l.a.to_dtype(xs.dtype())?, l.b_scaled.to_dtype(xs.dtype())?);
            // Each as one 2-D matmul over the rows' positions (no weight broadcast per row).
            let delta = matmul_t(&matmul_t(&xs, &a)?, &b)?;
            y = y.index_add(rows, &delta.to_dtype(y.dtype())?, 0)?;
        }
        Ok(y)
    }
}

impl Decoder {
    /// Adds a PEFT LoRA adapter to serve beside the others; returns its number. The base weights
    /// are shared: the adapter costs only its A and B.
    pub fn add_served_adapter(&mut self, dir: &Path) -> Result<usize> {
        let number = self.layers.first().map_or(0, |l| l.q.served.len());
        self.load_adapter(dir)?;
        for (_, _, lin) in self.linears_mut() {
            let served = match lin.lora.take() {
                Some(l) => Some(ServedLora {
                    a: l.a.as_tensor().detach(),
                    b_scaled: l.b.as_tensor().detach().affine(l.scaling, 0.0)?,
                }),
                None => None,
            };
            lin.served.push(served);
            lin.served_stack = Stack::of(&lin.served)?;
        }
        Ok(number)
    }

    /// A KV cache for one sequence of up to `capacity` positions.
    pub fn row_cache(&self, capacity: usize) -> KvCache {
        KvCache {
            layers: vec![(None, None); self.cfg.num_layers],
            len: 0,
            capacity,
        }
    }

    /// Reads a prompt into `cache` (through `adapter`, if any) and returns the logits of the token
    /// after it.
    pub fn prefill(
        &self,
        prompt: &[u32],
        adapter: Option<usize>,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let t = prompt.len();
        let ids = Tensor::from_vec(prompt.to_vec(), (1, t), &self.device)?;
        let past = cache.len;
        let positions: Vec<u32> = (past..past + t).map(|p| p as u32).collect();
        let masks = self.masks(|w| self.causal_mask(t, past, w))?;
        let routing = Routing::new(&[adapter], &self.device)?;
        let h = self.run(
            &ids,
            &positions,
            &masks,
            Past::Batch(cache),
            routing.as_ref(),
        )?;
        let logits = self.logits(&h.narrow(1, t - 1, 1)?)?;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }

    /// Reads several prompts in one left-padded forward (each through its adapter) and returns each
    /// one's logits of the next token and its own cache of `capacities[i]` positions, holding the
    /// prompt's keys and values as [`Decoder::prefill`] would.
    pub fn prefill_rows(
        &self,
        prompts: &[&[u32]],
        adapters: &[Option<usize>],
        capacities: &[usize],
    ) -> Result<(Vec<Vec<f32>>, Vec<KvCache>)> {
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let b = prompts.len();
        let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let ids: Vec<u32> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()))
            .collect();
        let positions: Vec<u32> = pads
            .iter()
            .flat_map(|&pad| (0..width).map(move |i| i.saturating_sub(pad) as u32))
            .collect();
        let ids = Tensor::from_vec(ids, (b, width), &self.device)?;
        let masks = self.masks(|w| self.left_padded_mask(&pads, width, 0, w))?;
        let routing = Routing::new(adapters, &self.device)?;
        let mut shared = self.row_cache(width);
        let h = self.run(
            &ids,
            &positions,
            &masks,
            Past::Batch(&mut shared),
            routing.as_ref(),
        )?;
        let logits: Vec<Vec<f32>> = self
            .logits(&h.narrow(1, width - 1, 1)?)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        // Each row's keys and values, without its padding, into a cache of its own.
        let mut caches: Vec<KvCache> = capacities.iter().map(|&c| self.row_cache(c)).collect();
        for (layer, (k, v)) in shared.layers.iter().enumerate() {
            for (r, cache) in caches.iter_mut().enumerate() {
                let (pad, len) = (pads[r], width - pads[r]);
                let (ck, cv) = &mut cache.layers[layer];
                for (slot, all) in [(ck, k), (cv, v)] {
                    let all = all.as_ref().ok_or_else(|| {
                        crate::error::Error::Internal("the prefill cache has no layer".into())
                    })?;
                    let own = all.narrow(0, r, 1)?.narrow(2, pad, len)?;
                    super::decoder::write_past(slot, &own, 0, cache.capacity)?;
                }
            }
        }
        for (cache, p) in caches.iter_mut().zip(prompts) {
            cache.len = p.len();
        }
        Ok((logits, caches))
    }

    /// One decoding step for rows that each own a cache: row i reads `tokens[i]` at the next
    /// position of `caches[i]` through `adapters[i]`; returns each row's logits of the token after.
    pub fn decode_rows(
        &self,
        tokens: &[u32],
        adapters: &[Option<usize>],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Vec<f32>>> {
        let _decoding = super::skinny::Decoding::start();
        let b = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (b, 1), &self.device)?;
        let positions: Vec<u32> = caches.iter().map(|c| c.len as u32).collect();
        let routing = Routing::new(adapters, &self.device)?;
        let none = Masks {
            full: None,
            sliding: None,
        };
        let h = self.run(
            &ids,
            &positions,
            &none,
            Past::Rows(caches),
            routing.as_ref(),
        )?;
        Ok(self
            .logits(&h)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }

    /// Additive causal mask [1, 1, t, past + t] within `window`.
    fn causal_mask(
        &self,
        t: usize,
        past: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let total = past + t;
        let mut m = Vec::with_capacity(t * total);
        for i in 0..t {
            let qi = past + i;
            for j in 0..total {
                let visible = j <= qi && window.is_none_or(|w| qi - j < w);
                m.push(if visible { 0.0f32 } else { f32::NEG_INFINITY });
            }
        }
        Tensor::from_vec(m, (1, 1, t, total), &self.device)?.to_dtype(self.dtype())
    }
}
