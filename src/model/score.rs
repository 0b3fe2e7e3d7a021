//! A reward model's scalar head: `score.weight` [1, hidden] read at each sequence's last token that
//! is not padding, as transformers' `*ForSequenceClassification` with one label.

use super::config::Head;
use super::decoder::Decoder;
use candle_core::{Tensor, D};

impl Decoder {
    /// Turns a causal LM into a reward model: the vocabulary head goes, a fresh `score` head
    /// (normal(0, `std`), seeded, as transformers initializes it) reads the last hidden state, and
    /// `pad` becomes the padding token the head skips. A model that already has a head keeps it.
    pub fn add_score_head(
        &mut self,
        seed: u64,
        std: f32,
        pad: Option<u32>,
    ) -> crate::error::Result<()> {
        if self.cfg.pad_token_id.is_none() {
            self.cfg.pad_token_id = pad;
        }
        if self.score.is_some() {
            return Ok(());
        }
        let mut rng = super::lora::Rng::new(seed);
        let h = self.cfg.hidden_size;
        let values: Vec<f32> = (0..h).map(|_| rng.normal() * std).collect();
        self.score = Some(Tensor::from_vec(values, (1, h), &self.device)?);
        self.lm_head = None;
        self.cfg.head = Head::Score;
        Ok(())
    }

    /// Where the head reads each sequence: its rightmost token other than the padding token (the
    /// first position when every token is padding), as transformers locates it.
    pub fn reward_positions(&self, seqs: &[&[u32]]) -> Vec<usize> {
        seqs.iter()
            .map(|ids| match self.cfg.pad_token_id {
                Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
                None => ids.len().saturating_sub(1),
            })
            .collect()
    }

    /// `seqs` right-padded with the padding token: their ids, segments and width.
    fn padded(&self, seqs: &[&[u32]]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, usize) {
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let pad = self.cfg.pad_token_id.unwrap_or(0);
        let (mut ids, mut segments) = (Vec::new(), Vec::new());
        for s in seqs {
            let mut row = s.to_vec();
            row.resize(width, pad);
            ids.push(row);
            let mut seg = vec![1u32; s.len()];
            seg.resize(width, 0);
            segments.push(seg);
        }
        (ids, segments, width)
    }

    fn score_weight(&self) -> crate::error::Result<&Tensor> {
        self.score.as_ref().ok_or_else(|| {
            crate::error::Error::Other(
                "the model has no score head: it is not a reward model".into(),
            )
        })
    }

    /// The score head at every position (a value model's values), [n, width] in f32
    /// (differentiable), and the width: one right-padded forward.
    pub fn values(&self, seqs: &[&[u32]]) -> crate::error::Result<(Tensor, usize)> {
        let score = self.score_weight()?;
        let (ids, segments, width) = self.padded(seqs);
        let hidden = self
            .hidden_packed(&ids, &segments)?
            .reshape((seqs.len() * width, self.cfg.hidden_size))?;
        let values = hidden
            .matmul(&score.to_dtype(hidden.dtype())?.t()?)?
            .reshape((seqs.len(), width))?;
        Ok((values.to_dtype(candle_core::DType::F32)?, width))
    }

    /// The reward of each sequence, [n] (differentiable): one right-padded forward, the final hidden
    /// state at [`Decoder::reward_positions`] times `score.weight`.
    pub fn rewards(&self, seqs: &[&[u32]]) -> crate::error::Result<Tensor> {
        let score = self.score_weight()?;
        let (ids, segments, width) = self.padded(seqs);
        let hidden = self
            .hidden_packed(&ids, &segments)?
            .reshape((seqs.len() * width, self.cfg.hidden_size))?;
        let at: Vec<u32> = self
            .reward_positions(seqs)
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * width + p) as u32)
            .collect();
        let at = Tensor::from_vec(at, seqs.len(), &self.device)?;
        let last = hidden.index_select(&at, 0)?;
        let score = score.to_dtype(last.dtype())?;
        let rewards = last.matmul(&score.t()?)?.squeeze(D::Minus1)?;
        Ok(rewards.to_dtype(candle_core::DType::F32)?)
    }
}
