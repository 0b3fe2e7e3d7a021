//! The supervised loop shared by `pt` and `sft`: seeded row order per epoch, right-padded micro-batches,
//! masked token-mean loss (chunked), gradient accumulation, clipping, AdamW with a warmup schedule,
//! metrics per step. Checkpoints and resume are not built yet.

use super::clip::clip_grad_norm;
use super::loss::chunked_nll;
use super::optim::AdamW;
use super::schedule::{warmup_steps, Schedule};
use crate::model::decoder::Decoder;
use crate::model::lora::Rng;
use candle_core::backprop::GradStore;
use candle_core::Var;
use std::io::Write;
use std::time::Instant;

pub struct Hyper {
    pub lr: f64,
    pub epochs: f64,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub log_every: usize,
}

/// One training sequence: ids and a 0/1 mask of the tokens that count in the loss.
pub struct Sequence {
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
}

pub struct Summary {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Adds `b`'s gradients into `a` (for accumulation over micro-batches).
fn accumulate(
    a: &mut Option<GradStore>,
    b: GradStore,
    vars: &[(String, Var)],
) -> candle_core::Result<()> {
    let Some(acc) = a else {
        *a = Some(b);
        return Ok(());
    };
    for (_, v) in vars {
        if let Some(g) = b.get(v) {
            let sum = match acc.get(v) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            acc.insert(v, sum);
        }
    }
    Ok(())
}

/// Trains `model`'s `vars` on `data`; writes one metrics line per logged step to `metrics`.
pub fn train(
    model: &Decoder,
    vars: &[(String, Var)],
    data: &[Sequence],
    h: &Hyper,
    metrics: &mut dyn Write,
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(u64, u64),
) -> Result<Summary, String> {
    let usable: Vec<&Sequence> = data
        .iter()
        .filter(|s| s.ids.len() >= 2 && s.mask[1..].contains(&1))
        .collect();
    if usable.is_empty() {
        return Err("no row has a token to train on".into());
    }
    let per_step = h.batch_size.max(1) * h.grad_accum.max(1);
    let steps_per_epoch = usable.len().div_ceil(per_step);
    let total = h
        .max_steps
        .unwrap_or(((steps_per_epoch as f64) * h.epochs).ceil().max(1.0) as usize);
    let warmup = warmup_steps(h.warmup_steps, h.warmup_ratio, total);
    let mut opt = AdamW::new(vars, h.betas.0, h.betas.1, h.eps, h.weight_decay).map_err(err)?;
    let mut rng = Rng::new(h.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut cursor = 0;
    let mut summary = Summary {
        steps: 0,
        first_loss: f64::NAN,
        last_loss: f64::NAN,
    };
    model
        .training
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for step in 0..total {
        if cancelled() {
            return Err("cancelled".into());
        }
        let started = Instant::now();
        let mut grads: Option<GradStore> = None;
        let (mut loss_sum, mut tokens) = (0.0, 0.0);
        for _ in 0..h.grad_accum.max(1) {
            let mut batch = Vec::with_capacity(h.batch_size);
            while batch.len() < h.batch_size.max(1) {
                if cursor == order.len() {
                    // A new epoch: a fresh permutation from the seeded generator.
                    order = (0..usable.len()).collect();
                    for i in (1..order.len()).rev() {
                        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                    }
                    cursor = 0;
                }
                batch.push(usable[order[cursor]]);
                cursor += 1;
            }
            let width = batch.iter().map(|s| s.ids.len() - 1).max().unwrap_or(1);
            let mut ids = Vec::new();
            let mut segments = Vec::new();
            let mut targets = Vec::new();
            let mut mask = Vec::new();
            for s in &batch {
                let n = s.ids.len() - 1;
                let mut row = s.ids[..n].to_vec();
                row.resize(width, 0);
                ids.push(row);
                segments.push((0..width).map(|i| u32::from(i < n)).collect::<Vec<u32>>());
                for i in 0..width {
                    targets.push(if i < n { s.ids[i + 1] } else { 0 });
                    mask.push(if i < n { f32::from(s.mask[i + 1]) } else { 0.0 });
                }
            }
            let hidden = model.hidden_packed(&ids, &segments)?;
            let hidden = hidden
                .reshape((batch.len() * width, model.cfg.hidden_size))
                .map_err(err)?;
            let loss = chunked_nll(&hidden, model.head(), &targets, &mask, 1024).map_err(err)?;
            // Micro-batches are weighted by their trained tokens, so accumulation equals one big batch.
            let g = (loss.surrogate * loss.tokens)
                .map_err(err)?
                .backward()
                .map_err(err)?;
            accumulate(&mut grads, g, vars).map_err(err)?;
            loss_sum += loss.value * loss.tokens;
            tokens += loss.tokens;
        }
        let mut grads = grads.expect("one micro-batch");
        for (_, v) in vars {
            if let Some(g) = grads.get(v) {
                let mean = (g / tokens.max(1.0)).map_err(err)?;
                grads.insert(v, mean);
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, vars, h.max_grad_norm).map_err(err)?;
        let lr = h.lr * h.schedule.factor(step, warmup, total);
        opt.step(&grads, lr).map_err(err)?;
        let loss = loss_sum / tokens.max(1.0);
        if step == 0 {
            summary.first_loss = loss;
        }
        summary.last_loss = loss;
        summary.steps = step + 1;
        if (step + 1) % h.log_every.max(1) == 0 || step + 1 == total {
            let line = serde_json::json!({
                "step": step + 1,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens / started.elapsed().as_secs_f64().max(1e-9),
                "epoch": (step + 1) as f64 / steps_per_epoch as f64,
            });
            writeln!(metrics, "{line}").map_err(err)?;
        }
        progress(step as u64 + 1, total as u64);
    }
    model
        .training
        .store(false, std::sync::atomic::Ordering::Relaxed);
    Ok(summary)
}
