//! The supervised objective of `pt` and `sft`: padded or packed micro-batches (no attention across
//! documents) and the masked token-mean loss, computed in chunks. The loop is `trainer`'s.

use super::loss::chunked_nll;
use super::objective::{MicroLoss, Objective};
use super::pack;
use crate::model::decoder::Decoder;

/// One training sequence: ids and a 0/1 mask of the tokens that count in the loss.
pub struct Sequence {
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
}

impl Sequence {
    /// Whether it keeps a token to train on (the first token is never predicted).
    pub fn trains(&self) -> bool {
        self.ids.len() >= 2 && self.mask[1..].contains(&1)
    }
}

/// Sequences in (packed) rows, each micro-batch weighted by its trained tokens.
pub struct Supervised<'a> {
    usable: Vec<&'a Sequence>,
    lens: Vec<usize>,
    rows: Vec<Vec<usize>>,
}

impl<'a> Supervised<'a> {
    /// The sequences with a token to train on, packed into rows of `max_len` when `packing`.
    pub fn new(
        data: &'a [Sequence],
        packing: bool,
        max_len: usize,
        log: &dyn Fn(&str),
    ) -> crate::error::Result<Supervised<'a>> {
        let usable: Vec<&Sequence> = data.iter().filter(|s| s.trains()).collect();
        if usable.is_empty() {
            return Err("no row has a token to train on".into());
        }
        let lens: Vec<usize> = usable.iter().map(|s| s.ids.len() - 1).collect();
        let rows = pack::rows(&lens, packing, max_len.max(1));
        if packing {
            log(&format!(
                "packed {} sequences into {} rows of ≤ {max_len} tokens",
                usable.len(),
                rows.len(),
            ));
        }
        Ok(Supervised { usable, lens, rows })
    }
}

impl Objective for Supervised<'_> {
    fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }

    fn batch_shape(&self, batch_size: usize) -> (usize, usize) {
        let widest = self
            .rows
            .iter()
            .map(|r| r.iter().map(|&i| self.lens[i]).sum::<usize>())
            .max()
            .unwrap_or(1);
        (batch_size, widest)
    }

    fn micro_batch(
        &self,
        model: &Decoder,
        rows: &[&[usize]],
        _draw: u64,
    ) -> crate::error::Result<MicroLoss> {
        let picked: Vec<Vec<&Sequence>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| self.usable[i]).collect())
            .collect();
        let loss = batch_loss(model, &batch(&picked))?;
        Ok(MicroLoss {
            surrogate: (loss.surrogate * loss.tokens)?,
            value: loss.value * loss.tokens,
            weight: loss.tokens,
            tokens: loss.tokens,
            metrics: Vec::new(),
        })
    }
}

/// A micro-batch as the model takes it: each row holds one sequence (padded) or several (packed);
/// every document predicts its own next tokens and attends only to itself.
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub segments: Vec<Vec<u32>>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
}

pub fn batch(rows: &[Vec<&Sequence>]) -> Batch {
    let width = rows
        .iter()
        .map(|r| r.iter().map(|s| s.ids.len() - 1).sum::<usize>())
        .max()
        .unwrap_or(1);
    let mut b = Batch {
        ids: Vec::new(),
        segments: Vec::new(),
        targets: Vec::new(),
        mask: Vec::new(),
    };
    for row in rows {
        let (mut ids, mut segments) = (Vec::with_capacity(width), Vec::with_capacity(width));
        for (doc, s) in row.iter().enumerate() {
            let n = s.ids.len() - 1;
            ids.extend_from_slice(&s.ids[..n]);
            segments.extend(std::iter::repeat_n(doc as u32 + 1, n));
            b.targets.extend_from_slice(&s.ids[1..]);
            b.mask.extend(s.mask[1..].iter().map(|&m| f32::from(m)));
        }
        let pad = width - ids.len();
        ids.resize(width, 0);
        segments.resize(width, 0);
        b.targets.extend(std::iter::repeat_n(0, pad));
        b.mask.extend(std::iter::repeat_n(0.0, pad));
        b.ids.push(ids);
        b.segments.push(segments);
    }
    b
}

/// The masked token-mean loss of one batch (and the number of tokens it counts).
pub fn batch_loss(model: &Decoder, b: &Batch) -> crate::error::Result<super::loss::ChunkedLoss> {
    let width = b.ids.first().map_or(0, Vec::len);
    let hidden = model.hidden_packed(&b.ids, &b.segments)?;
    let hidden = hidden.reshape((b.ids.len() * width, model.cfg.hidden_size))?;
    // Chunks of about 16M logits: big vocabularies get short chunks, small ones long.
    let chunk = super::logps::chunk(model);
    Ok(chunked_nll(
        &hidden,
        model.head(),
        super::logps::LogitMap::of(model),
        &b.targets,
        &b.mask,
        chunk,
    )?)
}
