//! Continuous batching for one base model: a thread owns the model and decodes every running row one
//! token per step; a request that arrives while others decode is read (prefilled) and joins the
//! batch at the next step, rows of different adapters share each forward, and a row that finishes
//! (or whose client went away) leaves without stalling the others.

use crate::model::decoder::{Decoder, KvCache};
use crate::model::generation::Sampling;
use crate::model::lora::Rng;
use std::sync::mpsc::{Receiver, TryRecvError};
use tokio::sync::mpsc::UnboundedSender;

/// One sequence to generate.
pub struct Job {
    pub prompt: Vec<u32>,
    /// The served adapter, if any.
    pub adapter: Option<usize>,
    pub max_new: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub stop: Vec<u32>,
    /// Alternatives to report per token (`Some(0)`: only the chosen token's log-prob).
    pub top_logprobs: Option<usize>,
    /// Where its events go, tagged with `tag` (the choice it answers).
    pub events: UnboundedSender<(usize, Event)>,
    pub tag: usize,
    /// Set when the answer no longer needs the row (a stop string was met).
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Job {
    fn send(&self, e: Event) -> Result<(), ()> {
        self.events.send((self.tag, e)).map_err(|_| ())
    }
}

/// A token's log-probability and the most likely alternatives (the model's distribution).
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub enum Event {
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    /// The row ended: at a stop token (`true`) or at `max_new` tokens (`false`).
    Done {
        stopped: bool,
    },
    Failed(String),
}

/// A running row.
struct Row {
    job: Job,
    cache: KvCache,
    last: u32,
    generated: usize,
    rng: Rng,
}

/// log-softmax of `logits` at `id`, and the `k` most likely tokens with theirs.
fn logprobs(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        top = order[..k.min(order.len())]
            .iter()
            .map(|&i| (i as u32, logits[i] - lse))
            .collect();
    }
    TokenLogprob {
        logprob: logits[id as usize] - lse,
        top,
    }
}

/// Picks the next token of `row` from `logits` and reports it; `false` when the row is over.
fn advance(row: &mut Row, logits: &[f32]) -> bool {
    if row.job.cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let id = row.job.sampling.pick(logits, &mut row.rng);
    let logprob = row.job.top_logprobs.map(|k| logprobs(logits, id, k));
    row.generated += 1;
    row.last = id;
    if row.job.send(Event::Token { id, logprob }).is_err() {
        // The client went away: free the row.
        return false;
    }
    let stopped = row.job.stop.contains(&id);
    if stopped || row.generated >= row.job.max_new {
        let _ = row.job.send(Event::Done { stopped });
        return false;
    }
    true
}

/// Runs the batching loop until every sender of `jobs` is gone and no row is left.
pub fn run(model: Decoder, jobs: Receiver<Job>, max_batch: usize) {
    let mut rows: Vec<Row> = Vec::new();
    loop {
        // Wait for work when idle; otherwise take what arrived, up to the batch's room.
        let mut fresh = Vec::new();
        if rows.is_empty() {
            match jobs.recv() {
                Ok(job) => fresh.push(job),
                Err(_) => return,
            }
        }
        while rows.len() + fresh.len() < max_batch.max(1) {
            match jobs.try_recv() {
                Ok(job) => fresh.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if rows.is_empty() && fresh.is_empty() => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        admit(&model, fresh, &mut rows);
        if rows.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = rows.iter().map(|r| r.last).collect();
        let adapters: Vec<Option<usize>> = rows.iter().map(|r| r.job.adapter).collect();
        let mut caches: Vec<&mut KvCache> = rows.iter_mut().map(|r| &mut r.cache).collect();
        match model.decode_rows(&tokens, &adapters, &mut caches) {
            Ok(logits) => {
                let mut keep = Vec::with_capacity(rows.len());
                for (mut row, l) in rows.drain(..).zip(&logits) {
                    if advance(&mut row, l) {
                        keep.push(row);
                    }
                }
                rows = keep;
            }
            Err(e) => {
                for row in rows.drain(..) {
                    let _ = row.job.send(Event::Failed(e.to_string()));
                }
            }
        }
    }
}

/// Reads the new jobs' prompts in one forward and emits each one's first token; keeps as rows those
/// not already over.
fn admit(model: &Decoder, jobs: Vec<Job>, rows: &mut Vec<Row>) {
    let (jobs, over): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| j.max_new > 0 && !j.prompt.is_empty());
    for job in over {
        let _ = job.send(Event::Done { stopped: false });
    }
    if jobs.is_empty() {
        return;
    }
    let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.prompt.as_slice()).collect();
    let adapters: Vec<Option<usize>> = jobs.iter().map(|j| j.adapter).collect();
    let capacities: Vec<usize> = jobs.iter().map(|j| j.prompt.len() + j.max_new).collect();
    match model.prefill_rows(&prompts, &adapters, &capacities) {
        Ok((logits, caches)) => {
            for ((job, cache), l) in jobs.into_iter().zip(caches).zip(&logits) {
                let mut row = Row {
                    rng: Rng::new(job.seed),
                    job,
                    cache,
                    last: 0,
                    generated: 0,
                };
                if advance(&mut row, l) {
                    rows.push(row);
                }
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.send(Event::Failed(e.to_string()));
            }
        }
    }
}
