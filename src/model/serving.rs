//! Serving many LoRA adapters on one base (S-LoRA / Punica's idea, on the CPU): each projection
//! keeps every served adapter's A and B beside the base weight, one forward serves rows of different
//! adapters (the base matmul shared, each row's low-rank term computed for its adapter's rows and
//! added back), and continuous batching decodes rows that each own a KV cache, so a row can join or
//! leave between steps.

use super::decoder::{Decoder, KvCache, Masks, Past};
use crate::error::Result;
use candle_core::{DType, Tensor};
use std::path::Path;

/// One served adapter's weights on one projection: Δy = scaling · B (A x).
#[derive(Clone)]
pub struct ServedLora {
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f64,
}

/// Which rows of a batch use which served adapter (rows without one use the base alone).
pub struct Routing {
    /// (adapter number, the rows that use it).
    groups: Vec<(usize, Tensor)>,
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
        let groups = ids
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
        Ok(Some(Routing { groups }))
    }

    /// `y` (the base projection of `x`, rows first) plus each row's adapter term.
    pub fn add_deltas(
        &self,
        mut y: Tensor,
        x: &Tensor,
        served: &[Option<ServedLora>],
    ) -> candle_core::Result<Tensor> {
        for (adapter, rows) in &self.groups {
            let Some(Some(l)) = served.get(*adapter) else {
                continue;
            };
            let xs = x.index_select(rows, 0)?;
            let (a, b) = (l.a.to_dtype(xs.dtype())?, l.b.to_dtype(xs.dtype())?);
            let delta = xs
                .broadcast_matmul(&a.t()?)?
                .broadcast_matmul(&b.t()?)?
                .affine(l.scaling, 0.0)?;
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
                    b: l.b.as_tensor().detach(),
                    scaling: l.scaling,
                }),
                None => None,
            };
            lin.served.push(served);
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

    /// One decoding step for rows that each own a cache: row i reads `tokens[i]` at the next
    /// position of `caches[i]` through `adapters[i]`; returns each row's logits of the token after.
    pub fn decode_rows(
        &self,
        tokens: &[u32],
        adapters: &[Option<usize>],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Vec<f32>>> {
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
