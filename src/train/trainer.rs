//! The training loop every objective shares: seeded row order per epoch, micro-batches, gradient
//! accumulation weighted by each micro-batch's share of the loss, clipping, AdamW with a warmup
//! schedule, the non-finite guard, metrics per step, checkpoints (by steps and by time) and resume.
//! What a micro-batch's loss is belongs to the objective (`supervised`, `preference`).

use super::checkpoint::{self, Position};
use super::clip::clip_grad_norm;
use super::collective::Collective;
use super::data_parallel::{self, sum_over_workers, Shares};
use super::objective::{Metric, MicroLoss, Objective, Sharing};
use super::optim::AdamW;
use super::schedule::{warmup_steps, Schedule};
use crate::model::decoder::Decoder;
use crate::model::lora::Rng;
use candle_core::backprop::GradStore;
use candle_core::Var;
use std::path::PathBuf;
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
    /// Checkpoint every N steps into `checkpoints` (0: never).
    pub save_every: usize,
    /// Also checkpoint when this much time has passed since the last checkpoint (or the start).
    pub save_interval: Option<std::time::Duration>,
    /// Steps whose loss or gradient norm is not finite that may be skipped (not applied) before the
    /// stage stops.
    pub skip_nonfinite: usize,
    pub checkpoints: Option<PathBuf>,
    /// Recompute each decoder layer's activations in the backward instead of keeping them.
    pub gradient_checkpointing: bool,
}

pub struct Summary {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// A logged step: the deterministic record (part of the stage's output) and, for a step this run
/// trained (not one a resumed run replays), how fast it went.
pub struct Logged<'a> {
    /// The optimizer step the record is for.
    pub step: usize,
    /// `step`, `loss`, `lr`, `grad_norm`, `epoch`, `tokens`: the same on every run with the same seed.
    pub record: &'a serde_json::Value,
    /// Trained tokens per second of wall-clock time; `None` for a replayed step.
    pub tokens_per_s: Option<f64>,
}

/// What the loop reports to and asks of its caller.
pub struct Hooks<'a> {
    /// One call per logged step (also for the steps a resumed run restored).
    pub metrics: &'a mut dyn FnMut(Logged) -> Result<(), String>,
    pub cancelled: &'a dyn Fn() -> bool,
    /// `step` of `total`, with a note: the step's loss and trained tokens per second.
    pub progress: &'a dyn Fn(u64, u64, &str),
    pub log: &'a dyn Fn(&str),
    /// The stage's other workers when it trains data-parallel (`workers = N`): each takes its
    /// share of every step's micro-batches and the gradients are summed before the update.
    pub group: Option<&'a dyn Collective>,
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

/// The next `n` rows of the data order; a new epoch starts a fresh permutation from the seeded
/// generator (or the rows in order, for an objective that reads them sequentially).
fn pick<'r>(
    pos: &mut Position,
    rng: &mut Rng,
    rows: &'r [Vec<usize>],
    n: usize,
    sequential: bool,
) -> Vec<&'r [usize]> {
    let mut picked = Vec::with_capacity(n);
    while picked.len() < n {
        if pos.cursor == pos.order.len() {
            pos.order = (0..rows.len()).collect();
            let shuffled = if sequential { 0 } else { pos.order.len() };
            for i in (1..shuffled).rev() {
                pos.order
                    .swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            pos.cursor = 0;
        }
        picked.push(rows[pos.order[pos.cursor]].as_slice());
        pos.cursor += 1;
    }
    picked
}

/// Metric sums and the counts they are sums over, by name, in the order first seen.
#[derive(Default)]
struct MetricSums(Vec<(&'static str, f64, f64)>);

impl MetricSums {
    fn add(&mut self, metrics: Vec<Metric>) {
        for m in metrics {
            match self.0.iter_mut().find(|(n, _, _)| *n == m.name) {
                Some((_, sum, count)) => {
                    *sum += m.sum;
                    *count += m.count;
                }
                None => self.0.push((m.name, m.sum, m.count)),
            }
        }
    }

    /// Each metric's Σ sum / Σ count (a metric with no count is left out).
    fn means(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.0
            .iter()
            .filter(|(_, _, count)| *count > 0.0)
            .map(|(name, sum, count)| (*name, sum / count))
    }
}

/// What a loop step's optimizer updates add up to (one update, or an online objective's several).
#[derive(Default)]
struct StepTotals {
    losses: Vec<f64>,
    grad_norms: Vec<f64>,
    tokens: f64,
    metrics: MetricSums,
}

impl StepTotals {
    fn add(&mut self, other: StepTotals) {
        self.losses.extend(other.losses);
        self.grad_norms.extend(other.grad_norms);
        self.tokens += other.tokens;
        self.metrics.add(
            other
                .metrics
                .0
                .into_iter()
                .map(|(name, sum, count)| Metric { name, sum, count })
                .collect(),
        );
    }

    /// The mean over the step's updates.
    fn loss(&self) -> f64 {
        mean(&self.losses)
    }

    fn grad_norm(&self) -> f64 {
        mean(&self.grad_norms)
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Applies optimizer updates: a micro-batch's gradients accumulated, averaged, clipped and applied
/// (or skipped when not finite).
struct Updater<'a> {
    /// The trained model, whose backward runs through what gradient checkpointing recorded.
    model: &'a Decoder,
    vars: &'a [(String, Var)],
    opt: &'a mut AdamW,
    h: &'a Hyper,
    log: &'a dyn Fn(&str),
    /// Steps skipped so far (the checkpointed count).
    skipped: &'a mut usize,
    /// The loop step (0-based) the updates belong to.
    step: usize,
    group: Option<&'a dyn Collective>,
}

impl Updater<'_> {
    /// One optimizer update from `micro_batches`, weighted by each one's share of the loss so that
    /// accumulation equals one big batch.
    fn apply(
        &mut self,
        micro_batches: impl Iterator<Item = crate::error::Result<MicroLoss>>,
        lr: f64,
    ) -> crate::error::Result<StepTotals> {
        let mut grads: Option<GradStore> = None;
        let (mut loss_sum, mut weight) = (0.0, 0.0);
        let mut totals = StepTotals::default();
        for micro in micro_batches {
            let micro = micro?;
            let g = self.model.backward(&micro.surrogate)?;
            accumulate(&mut grads, g, self.vars)?;
            loss_sum += micro.value;
            weight += micro.weight;
            totals.tokens += micro.tokens;
            totals.metrics.add(micro.metrics);
        }
        // A worker can have no micro-batch of an update (fewer of them than workers): it adds
        // nothing to the sums.
        let mut grads = match (grads, self.group) {
            (Some(grads), _) => grads,
            (None, Some(_)) => GradStore::default(),
            (None, None) => return Err("no micro-batch".into()),
        };
        if let Some(group) = self.group {
            let mut mine = Shares {
                loss_sum,
                weight,
                tokens: totals.tokens,
                metrics: std::mem::take(&mut totals.metrics.0)
                    .into_iter()
                    .map(|(name, sum, count)| (name.to_string(), sum, count))
                    .collect(),
                has_grad: Vec::new(),
            };
            sum_over_workers(group, &mut grads, self.vars, &mut mine)?;
            (loss_sum, weight, totals.tokens) = (mine.loss_sum, mine.weight, mine.tokens);
            totals.metrics.add(
                mine.metrics
                    .iter()
                    .map(|(name, sum, count)| Metric {
                        name: super::collective::intern(name),
                        sum: *sum,
                        count: *count,
                    })
                    .collect(),
            );
        }
        for (_, v) in self.vars {
            if let Some(g) = grads.get(v) {
                let mean = (g / weight.max(1.0))?;
                grads.insert(v, mean);
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, self.vars, self.h.max_grad_norm)?;
        let loss = loss_sum / weight.max(1.0);
        // A step that is not finite is never applied: it would turn every weight into NaN.
        let bad = [("loss", loss), ("gradient norm", grad_norm)]
            .into_iter()
            .find(|(_, v)| !v.is_finite());
        if let Some((what, value)) = bad {
            let step = self.step + 1;
            if *self.skipped >= self.h.skip_nonfinite {
                let checkpoint = self
                    .h
                    .checkpoints
                    .as_deref()
                    .and_then(crate::store::checkpoints::latest)
                    .and_then(|dir| crate::store::checkpoints::step_of(&dir));
                return Err(crate::error::Error::NonFinite {
                    step,
                    what,
                    value,
                    checkpoint,
                });
            }
            *self.skipped += 1;
            (self.log)(&format!(
                "step {step}: the {what} is {value}; step skipped ({} of at most {})",
                self.skipped, self.h.skip_nonfinite
            ));
        } else {
            self.opt.step(&grads, lr)?;
        }
        totals.losses.push(loss);
        totals.grad_norms.push(grad_norm);
        Ok(totals)
    }
}

/// Gradient checkpointing on `model` for as long as the loop runs, however it ends.
struct Recording<'a>(&'a Decoder);

impl<'a> Recording<'a> {
    fn start(model: &'a Decoder, on: bool) -> Recording<'a> {
        model.set_gradient_checkpointing(on);
        Recording(model)
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        self.0.set_gradient_checkpointing(false);
    }
}

/// Checkpoints the loop at `pos` into `h.checkpoints`. With several workers every one takes part
/// (their dropout generators are saved too) and worker 0 writes: all hold the same weights and
/// optimizer state.
fn save(
    model: &Decoder,
    vars: &[(String, Var)],
    opt: &AdamW,
    h: &Hyper,
    pos: &mut Position,
    rng: &Rng,
    group: Option<&dyn Collective>,
) -> crate::error::Result<()> {
    let Some(dir) = &h.checkpoints else {
        return Ok(());
    };
    pos.rng = rng.state();
    pos.dropout_rng = model.dropout_state();
    if let Some(g) = group {
        let states = g.gather_u64(pos.dropout_rng)?;
        pos.dropout_rng = states[0];
        pos.worker_dropout_rngs = states[1..].to_vec();
        if g.rank() != 0 {
            return Ok(());
        }
    }
    checkpoint::save(dir, pos, vars, opt)
}

/// Trains `model`'s `vars` on `objective`, resuming from the newest checkpoint when there is one.
pub fn train(
    model: &Decoder,
    vars: &[(String, Var)],
    objective: &dyn Objective,
    h: &Hyper,
    hooks: Hooks,
) -> crate::error::Result<Summary> {
    let rows = objective.rows();
    let (batch_rows, width) = objective.batch_shape(h.batch_size.max(1));
    let group = hooks.group;
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world()));
    super::memory::check(
        &model.cfg,
        batch_rows,
        width,
        h.gradient_checkpointing,
        world,
    )?;
    // Every worker reads the same row order; a step takes `world` times the rows of one worker's.
    let per_step = h.batch_size.max(1) * h.grad_accum.max(1) * world;
    let steps_per_epoch = rows.len().div_ceil(per_step);
    let total = h
        .max_steps
        .unwrap_or(((steps_per_epoch as f64) * h.epochs).ceil().max(1.0) as usize);
    let warmup = warmup_steps(h.warmup_steps, h.warmup_ratio, total);
    let mut opt = AdamW::new(vars, h.betas.0, h.betas.1, h.eps, h.weight_decay)?;
    let mut pos = Position {
        rng: Rng::new(h.seed).state(),
        dropout_rng: model.dropout_state(),
        ..Position::default()
    };
    if let Some(found) = h
        .checkpoints
        .as_deref()
        .and_then(crate::store::checkpoints::latest)
    {
        pos = checkpoint::load(&found, vars, &mut opt)?;
        model.set_dropout_state(match rank {
            0 => pos.dropout_rng,
            r => match pos.worker_dropout_rngs.get(r - 1) {
                Some(&state) => state,
                None => data_parallel::dropout_state(pos.dropout_rng, r),
            },
        });
        (hooks.log)(&format!(
            "resuming from the checkpoint at step {}",
            pos.step
        ));
        for m in &pos.metrics {
            let step = m["step"].as_u64().ok_or_else(|| {
                crate::error::Error::Internal(format!(
                    "a checkpointed metrics line has no step: {m}"
                ))
            })?;
            (hooks.metrics)(Logged {
                step: step as usize,
                record: m,
                tokens_per_s: None,
            })?;
        }
    }
    if let Some(g) = group {
        // Each worker reads the checkpoint on its own disk: they must start at the same step.
        let steps = g.gather_u64(pos.step as u64)?;
        if steps.iter().any(|&s| s != steps[0]) {
            return Err(crate::error::Error::Workers(format!(
                "the workers found checkpoints of different steps (by rank: {steps:?}): each resumes from the stage's checkpoint folder, which they must all see"
            )));
        }
    }
    if pos.step == 0 {
        model.set_dropout_state(data_parallel::dropout_state(pos.dropout_rng, rank));
    }
    let mut rng = Rng::from_state(pos.rng);
    model
        .training
        .store(objective.dropout(), std::sync::atomic::Ordering::Relaxed);
    let _recording = Recording::start(model, h.gradient_checkpointing);
    if h.gradient_checkpointing {
        (hooks.log)(&format!(
            "gradient checkpointing: each of the {} layers is recomputed in the backward",
            model.layers.len()
        ));
    }
    let _autocast = crate::model::matmul::Autocast::start(model.autocast);
    if model.autocast {
        let kernel = if crate::model::gemm_amx::available() {
            "AMX tiles"
        } else {
            "AVX512-BF16"
        };
        (hooks.log)(&format!(
            "bf16 on the CPU: products take bf16 operands ({kernel}), activations and the rest stay f32, as torch.autocast"
        ));
    }
    if let Some(half) = model.compute_dtype.filter(|_| model.device.is_cpu()) {
        (hooks.log)(&format!(
            "{} on the CPU: mixed precision runs slower than f32 for now (candle's half-precision element-wise ops; docs/performance.md)",
            half.as_str()
        ));
    }
    let mut last_save = Instant::now();
    for step in pos.step..total {
        let mut stop = (hooks.cancelled)();
        if let Some(g) = group {
            // A stop any worker was asked for stops them all at the same step.
            stop = g.any(stop)?;
        }
        if stop {
            // Stopped at a step boundary (Ctrl-C, watch mode): keep what was trained for the rerun.
            if pos.step > 0 && h.checkpoints.is_some() {
                save(model, vars, &opt, h, &mut pos, &rng, group)?;
                (hooks.log)(&format!("saved a checkpoint at step {}", pos.step));
            }
            return Err(crate::error::Error::Cancelled);
        }
        let started = Instant::now();
        let lr = h.lr * h.schedule.factor(step, warmup, total);
        let per_micro = h.batch_size.max(1);
        let picked = pick(&mut pos, &mut rng, rows, per_step, objective.sequential());
        let mut updater = Updater {
            model,
            vars,
            opt: &mut opt,
            h,
            log: hooks.log,
            skipped: &mut pos.skipped_nonfinite,
            step,
            group,
        };
        let draw = |micro_index: usize| {
            Rng::new(h.seed ^ ((step as u64) << 20) ^ micro_index as u64).next_u64()
        };
        let totals = match objective.online() {
            None => updater.apply(
                picked
                    .chunks(per_micro)
                    .enumerate()
                    .filter(|(i, _)| data_parallel::is_mine(*i, group))
                    .map(|(i, rows)| objective.micro_batch(model, rows, draw(i))),
                lr,
            )?,
            Some(online) => {
                // One batch of rollouts, then `epochs` passes over it, each a fresh shuffle cut
                // into `mini_batches` optimizer steps of micro-batches. Each worker samples its own
                // micro-batches (the j-th of its own is the step's micro-batch j·N + rank, with that
                // one's seed); its rollouts are its share of every update, or, gathered, the whole
                // batch, of which it trains every N-th micro-batch of each update.
                let mine: Vec<&[usize]> = picked
                    .chunks(per_micro)
                    .enumerate()
                    .filter(|(i, _)| data_parallel::is_mine(*i, group))
                    .flat_map(|(_, rows)| rows.iter().copied())
                    .collect();
                let draw_mine = |j: usize| draw(j * world + rank);
                let batch = online.sample(model, &mine, per_micro, &draw_mine, group)?;
                let gathered = online.sharing() == Sharing::Gathered;
                let n = batch.count();
                let mini = n.div_ceil(online.mini_batches().max(1)).max(1);
                let per_micro = online.slots_per_micro_batch(per_micro).max(1);
                let mut totals = StepTotals::default();
                for _ in 0..online.epochs().max(1) {
                    let mut order: Vec<usize> = (0..n).collect();
                    if online.shuffle() {
                        for i in (1..n).rev() {
                            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                        }
                    }
                    for slots in order.chunks(mini) {
                        let update = updater.apply(
                            slots
                                .chunks(per_micro)
                                .enumerate()
                                .filter(|(i, _)| !gathered || data_parallel::is_mine(*i, group))
                                .map(|(_, micro)| batch.micro_batch(model, micro)),
                            lr,
                        )?;
                        totals.add(update);
                    }
                }
                let batch_metrics = batch.metrics();
                if group.is_some() && !gathered && !batch_metrics.is_empty() {
                    // They would be this worker's alone: an objective whose workers keep their own
                    // rollouts reports their metrics with its updates, which sum them over the
                    // workers (gathered rollouts' metrics are the whole batch's on every worker).
                    return Err(crate::error::Error::Internal(
                        "an online objective's batch metrics on several workers".into(),
                    ));
                }
                totals.metrics.add(batch_metrics);
                totals
            }
        };
        let (loss, grad_norm, tokens) = (totals.loss(), totals.grad_norm(), totals.tokens);
        if loss.is_finite() {
            pos.first_loss.get_or_insert(loss);
            pos.last_loss = Some(loss);
        }
        pos.step = step + 1;
        let tokens_per_s = tokens / started.elapsed().as_secs_f64().max(1e-9);
        if pos.step.is_multiple_of(h.log_every.max(1)) || pos.step == total {
            let mut line = serde_json::json!({
                "step": pos.step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "epoch": pos.step as f64 / steps_per_epoch as f64,
                "tokens": tokens,
            });
            for (name, value) in totals.metrics.means() {
                line[name] = value.into();
            }
            if pos.skipped_nonfinite > 0 {
                line["skipped_nonfinite"] = pos.skipped_nonfinite.into();
            }
            (hooks.metrics)(Logged {
                step: pos.step,
                record: &line,
                tokens_per_s: Some(tokens_per_s),
            })?;
            pos.metrics.push(line);
        }
        if h.checkpoints.is_some() && pos.step < total {
            let by_steps = h.save_every > 0 && pos.step.is_multiple_of(h.save_every);
            let mut by_time = h.save_interval.is_some_and(|d| last_save.elapsed() >= d);
            if let Some(g) = group {
                // Worker 0's clock decides, so that every worker takes part in the same saves.
                by_time = g.first_says(by_time)?;
            }
            if by_steps || by_time {
                save(model, vars, &opt, h, &mut pos, &rng, group)?;
                last_save = Instant::now();
            }
        }
        checkpoint::crash_point(pos.step);
        (hooks.progress)(
            pos.step as u64,
            total as u64,
            &crate::run::training_note(loss, tokens_per_s),
        );
    }
    model
        .training
        .store(false, std::sync::atomic::Ordering::Relaxed);
    Ok(Summary {
        steps: pos.step,
        first_loss: pos.first_loss.unwrap_or(f64::NAN),
        last_loss: pos.last_loss.unwrap_or(f64::NAN),
    })
}
