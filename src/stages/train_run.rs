//! How `pt` and `sft` run: tokenize the dataset with the model's tokenizer (and the stage's template
//! and mask options), train with the shared supervised loop, write the model (a full HF folder, with
//! the PEFT adapter beside it for LoRA) and metrics.jsonl.

use crate::data::artifact::{self, DataSpec};
use crate::data::encode::{EncodeOptions, Encoded};
use crate::lang::value::{Tuning, Value};
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use crate::track;
use crate::train::metrics_log::MetricsLog;
use crate::train::objective::Objective;
use crate::train::schedule::Schedule;
use crate::train::supervised::{Sequence, Supervised};
use crate::train::trainer::{self, Hyper, Logged};
use candle_core::Var;
use std::path::{Path, PathBuf};

pub fn run_supervised(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = model_dir(ctx)?;
    let (data, format) = ctx.dataset("data")?;
    let template = ctx.path("template");
    let spec = DataSpec {
        data,
        format,
        tokenizer: model_dir.clone(),
        template,
        opts: EncodeOptions::from_stage(ctx.params),
    };
    // The tokenized dataset is a store artifact of its own: shared by every stage that reads the
    // same data the same way, and kept when a stage fails or is killed.
    let tokenized = artifact::cached(ctx.store, &spec)?;
    if tokenized.cached {
        (ctx.log)("tokenized data found in the store");
    }
    let sequences: Vec<Sequence> = tokenized
        .rows
        .into_iter()
        .filter_map(|r| match r.result {
            Ok(Encoded::Sequence { ids, mask, .. }) => Some(Sequence { ids, mask }),
            _ => None,
        })
        .collect();
    super::common::report_malformed(ctx, &tokenized.problems)?;
    (ctx.log)(&format!(
        "{} rows to train on ({} malformed)",
        sequences.len(),
        tokenized.problems.len()
    ));
    if !sequences.iter().any(Sequence::trains) {
        return Err(all_rows_dropped(&spec, sequences.len()));
    }
    let params: TrainingParams = ctx.typed()?;
    let Policy {
        mut model,
        vars,
        tuning,
    } = policy(ctx, &model_dir, params.seed)?;
    let hyper = params.hyper(&ctx.checkpoints);
    let objective = Supervised::new(&sequences, ctx.flag("packing"), params.max_len, ctx.log)?;
    fit(ctx, &model, &vars, &objective, &hyper)?;
    save(ctx, &mut model, &tuning, &model_dir)
}

/// The folder of the stage's starting model.
pub fn model_dir(ctx: &RunContext) -> crate::error::Result<PathBuf> {
    Ok(ctx
        .input("model")
        .ok_or("the stage has no model")?
        .to_path_buf())
}

/// The model a training stage trains: the starting model, its trainable variables, its tuning.
pub struct Policy {
    pub model: Decoder,
    pub vars: Vec<(String, Var)>,
    pub tuning: Tuning,
}

/// The starting model with the stage's tuning applied.
pub fn policy(ctx: &RunContext, model_dir: &Path, seed: u64) -> crate::error::Result<Policy> {
    tuned(ctx, Decoder::load(model_dir, ctx.device())?, seed)
}

/// `model` with the stage's tuning applied, computing in the run's dtype: with bf16 or f16 the
/// weights stay f32 (the optimizer updates them) and each forward casts them (mixed precision). bf16
/// on a CPU with the bf16 kernel is autocast instead: f32 activations, bf16 operands in products.
pub fn tuned(ctx: &RunContext, mut model: Decoder, seed: u64) -> crate::error::Result<Policy> {
    let dtype = ctx.compute.dtype;
    if dtype == candle_core::DType::BF16
        && model.device.is_cpu()
        && crate::model::gemm_bf16::available()
    {
        model.autocast = true;
    } else if dtype != candle_core::DType::F32 {
        model.compute_dtype = Some(dtype);
    }
    let tuning = match ctx.param("tuning") {
        Value::Tuning(t) => t.clone(),
        _ => Tuning::Full,
    };
    let vars = model.apply_tuning(&tuning, seed)?;
    Ok(Policy {
        model,
        vars,
        tuning,
    })
}

/// The loop's fields of a training stage (`common::training`), typed; the schema fills in every
/// default.
#[derive(Debug, serde::Deserialize)]
pub struct TrainingParams {
    pub lr: f64,
    pub epochs: f64,
    pub max_steps: Option<usize>,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_len: usize,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub save_every: usize,
    pub save_minutes: f64,
    pub log_every: usize,
    pub skip_nonfinite: usize,
    pub gradient_checkpointing: bool,
}

impl TrainingParams {
    /// The loop's settings; checkpoints go to `checkpoints`.
    pub fn hyper(&self, checkpoints: &Path) -> Hyper {
        Hyper {
            lr: self.lr,
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            betas: (self.adam_beta1, self.adam_beta2),
            eps: self.adam_eps,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            log_every: self.log_every,
            save_every: self.save_every,
            skip_nonfinite: self.skip_nonfinite,
            save_interval: (self.save_minutes > 0.0)
                .then(|| std::time::Duration::from_secs_f64(self.save_minutes * 60.0)),
            checkpoints: Some(checkpoints.to_path_buf()),
            gradient_checkpointing: self.gradient_checkpointing,
        }
    }
}

/// The loop's settings of a training stage.
pub fn hyper(ctx: &RunContext) -> crate::error::Result<Hyper> {
    Ok(ctx.typed::<TrainingParams>()?.hyper(&ctx.checkpoints))
}

/// Trains with the shared loop, writing metrics.jsonl and timing.jsonl and logging every metric to
/// the trackers as `train/<name>`.
pub fn fit(
    ctx: &mut RunContext,
    model: &Decoder,
    vars: &[(String, Var)],
    objective: &dyn Objective,
    hyper: &Hyper,
) -> crate::error::Result<()> {
    let mut metrics = MetricsLog::create(&ctx.out.join("metrics.jsonl"), &ctx.run_dir)?;
    let tracker = &mut ctx.tracker;
    let mut write_metrics = |m: Logged| -> Result<(), String> {
        let mut values: Vec<(String, f64)> = m
            .record
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "tokens" | "skipped_nonfinite"))
            .filter_map(|(k, v)| v.as_f64().map(|v| (format!("train/{k}"), v)))
            .collect();
        values.extend(m.tokens_per_s.map(|t| (track::TOKENS_PER_S.to_string(), t)));
        let values: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        tracker.log(m.step as u64, &values);
        metrics.write(&m)
    };
    let cancel = ctx.cancel;
    let summary = trainer::train(
        model,
        vars,
        objective,
        hyper,
        trainer::Hooks {
            metrics: &mut write_metrics,
            cancelled: &|| cancel.load(std::sync::atomic::Ordering::Relaxed),
            progress: ctx.progress,
            log: ctx.log,
            group: ctx.group,
        },
    )?;
    (ctx.log)(&format!(
        "{} steps: loss {:.4} → {:.4}",
        summary.steps, summary.first_loss, summary.last_loss
    ));
    Ok(())
}

/// The stage's `save_dtype`.
#[derive(serde::Deserialize)]
struct SaveParams {
    save_dtype: String,
}

/// Writes the trained model (a full HF folder, its weights in `save_dtype`) and, for LoRA, the PEFT
/// adapter beside it (f32, as PEFT saves a float32 adapter). A QLoRA adapter is merged into the
/// unquantized base (read again from `model_dir`), as PEFT users do.
pub fn save(
    ctx: &RunContext,
    model: &mut Decoder,
    tuning: &Tuning,
    model_dir: &Path,
) -> crate::error::Result<()> {
    let params: SaveParams = ctx.typed()?;
    let dtype = super::export::write_dtype(&params.save_dtype, model_dir);
    let adapter = ctx.out.join("adapter");
    if tuning.lora().is_some() {
        model.save_adapter(&adapter, tuning, &model_dir.display().to_string())?;
    }
    if let Tuning::Qlora { .. } = tuning {
        let mut base = Decoder::load(model_dir, ctx.device())?;
        if model.score.is_some() {
            // A head slot for the adapter's trained head (`modules_to_save`) to fill.
            base.add_score_head(0, 0.0, model.cfg.pad_token_id)?;
        }
        base.load_adapter(&adapter)?;
        return base.save_hf_as(model_dir, &ctx.out.join("model"), 2 << 30, dtype);
    }
    model.save_hf_as(model_dir, &ctx.out.join("model"), 2 << 30, dtype)
}

/// No row keeps a trained token within `max_len`: how many tokens the shortest row needs, found by
/// encoding the rows again without a length limit (only on this error path).
fn all_rows_dropped(spec: &DataSpec, rows: usize) -> crate::error::Error {
    let mut whole = spec.clone();
    whole.opts.max_len = usize::MAX;
    let shortest = artifact::tokenize(&whole).ok().and_then(|t| {
        t.rows
            .iter()
            .filter_map(|r| match &r.result {
                // Tokens up to and including the first trained one (never the first token).
                Ok(Encoded::Sequence { mask, .. }) => {
                    mask.iter().skip(1).position(|&m| m == 1).map(|i| i + 2)
                }
                _ => None,
            })
            .min()
    });
    crate::error::Error::AllRowsDropped {
        rows,
        max_len: spec.opts.max_len,
        shortest,
    }
}
