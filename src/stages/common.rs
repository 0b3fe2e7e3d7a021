//! Fields and rules every training stage kind shares (names and defaults follow TRL / transformers).

use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};
use crate::lang::value::{Tuning, Value};

pub const SCHEDULES: &[&str] = &["constant", "linear", "cosine"];

/// `model`, `data` (in the given formats) and `tuning`.
pub fn inputs(data: &'static [Format], data_doc: &'static str) -> Vec<FieldSchema> {
    vec![
        required(
            "model",
            Type::Model,
            "the model to start from: `hf_model(...)` or an upstream `stage.model`",
        ),
        required("data", Type::Dataset(data), data_doc),
        field(
            "tuning",
            Type::Tuning,
            Default::Value(Value::Tuning(Tuning::Full)),
            "which weights train: `full`, `freeze(...)`, `lora(...)` or `qlora(...)`",
        ),
    ]
}

/// The optimizer, schedule and loop fields, with this kind's default learning rate.
pub fn training(lr: f64, max_len: i64) -> Vec<FieldSchema> {
    vec![
        float(
            "epochs",
            3.0,
            "passes over the data (ignored when `max_steps` is set)",
        ),
        optional(
            "max_steps",
            Type::Int,
            "stop after this many optimizer steps",
        ),
        float("lr", lr, "peak learning rate (AdamW)"),
        choice(
            "schedule",
            SCHEDULES,
            "linear",
            "learning-rate schedule after warmup",
        ),
        float(
            "warmup_ratio",
            0.0,
            "fraction of the steps spent warming up linearly from 0",
        ),
        int(
            "warmup_steps",
            0,
            "warmup steps (instead of `warmup_ratio`)",
        ),
        int("batch_size", 8, "sequences per micro-batch"),
        int("grad_accum", 1, "micro-batches per optimizer step"),
        int(
            "max_len",
            max_len,
            "tokens per sequence; longer rows are truncated",
        ),
        float(
            "weight_decay",
            0.0,
            "AdamW decoupled weight decay (never applied to norms and biases)",
        ),
        float("adam_beta1", 0.9, "AdamW beta1"),
        float("adam_beta2", 0.999, "AdamW beta2"),
        float("adam_eps", 1e-8, "AdamW epsilon"),
        float(
            "max_grad_norm",
            1.0,
            "clip gradients to this global norm (0: no clipping)",
        ),
        boolean(
            "gradient_checkpointing",
            false,
            "keep only each decoder layer's input in the forward and recompute the layer in the backward: activation memory of one layer instead of all, for about one more forward of compute",
        ),
        field(
            "workers",
            Type::Int,
            Default::Config("workers"),
            "processes that train the stage together, data-parallel (default: config.workers): each takes `batch_size` rows of every micro-batch and their gradients are summed, so a step sees `workers × batch_size × grad_accum` rows and equals one process's step with `batch_size` × `workers`",
        ),
        field(
            "seed",
            Type::Int,
            Default::Config("seed"),
            "seed for initialization and data order (default: config.seed)",
        ),
        int(
            "save_every",
            100,
            "checkpoint every N steps so a killed run resumes (0: by time only)",
        ),
        float(
            "save_minutes",
            10.0,
            "also checkpoint when this many minutes passed since the last one (0: by steps only)",
        ),
        choice(
            "save_dtype",
            crate::lang::settings::DTYPES,
            "auto",
            "dtype of the saved model's weights (auto: the input checkpoint's, as its config.json records it; f32 when it records none)",
        ),
        int("log_every", 1, "log metrics every N steps"),
        int(
            "skip_nonfinite",
            0,
            "steps whose loss or gradient norm is NaN or infinite that may be skipped (not applied, counted in the log and metrics) before the stage stops",
        ),
        skip_malformed(),
    ]
    .into_iter()
    .chain(crate::plan::compute::stage_fields())
    .collect()
}

/// `skip_malformed`: whether rows that do not parse stop the stage (the default) or are skipped.
pub fn skip_malformed() -> FieldSchema {
    boolean(
        "skip_malformed",
        false,
        "skip rows that are not valid JSON or lack their format's fields (counted in the log) instead of failing",
    )
}

/// The outputs of a training stage: `model` and `metrics`, with this kind's descriptions.
pub fn outputs(model: &'static str, metrics: &'static str) -> Vec<OutputSchema> {
    vec![
        output("model", Type::Model, model),
        output("metrics", Type::Metrics, metrics),
    ]
}

/// Range rules for the fields of [`training`] and the tuning spec.
pub fn training_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::device(s, d);
    rules::positive(s, d, "lr");
    rules::positive(s, d, "epochs");
    rules::positive(s, d, "max_steps");
    rules::positive(s, d, "batch_size");
    rules::positive(s, d, "grad_accum");
    rules::positive(s, d, "max_len");
    rules::within(s, d, "warmup_ratio", 0.0, 1.0, false);
    rules::non_negative(s, d, "warmup_steps");
    rules::exclusive(s, d, "warmup_ratio", "warmup_steps");
    rules::non_negative(s, d, "weight_decay");
    rules::within(s, d, "adam_beta1", 0.0, 1.0, false);
    rules::within(s, d, "adam_beta2", 0.0, 1.0, false);
    rules::positive(s, d, "adam_eps");
    rules::non_negative(s, d, "max_grad_norm");
    rules::non_negative(s, d, "save_every");
    rules::non_negative(s, d, "save_minutes");
    rules::positive(s, d, "log_every");
    rules::non_negative(s, d, "skip_nonfinite");
    // (A `config.workers` out of range is the `config` block's error, not every stage's.)
    if s.locs.contains_key("workers") {
        rules::positive(s, d, "workers");
    }
    workers_rules(s, d);
}

/// Where `workers` > 1 cannot train yet: CUDA (the NCCL collective is not built).
fn workers_rules(s: &StageView, d: &mut Vec<Diag>) {
    let Some(n) = s.num("workers").filter(|n| *n > 1.0) else {
        return;
    };
    let problem = s
        .str("device")
        .filter(|d| d.starts_with("cuda"))
        .map(|_| "workers on CUDA need the NCCL collective, which is not built yet: data-parallel stages run on the CPU");
    if let Some(problem) = problem {
        let origin = if s.locs.contains_key("workers") {
            "set here"
        } else {
            "from config.workers"
        };
        d.push(
            Diag::error(
                "ptl::workers_unsupported",
                format!("stage `{}` cannot train on {n} workers: {problem}", s.name),
            )
            .label(s.loc("workers"), format!("workers = {n}, {origin}"))
            .help("set `workers = 1` on this stage"),
        );
    }
}

/// Fields of preference-optimization kinds: `beta` and `label_smoothing`.
pub fn beta(default: f64, doc: &'static str) -> FieldSchema {
    float("beta", default, doc)
}

/// Names TRL, transformers and LLaMA-Factory users write, and the ptl field each one means.
pub const ALIASES: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("num_train_epochs", "epochs"),
    ("num_epochs", "epochs"),
    ("per_device_train_batch_size", "batch_size"),
    ("train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
    ("max_length", "max_len"),
    ("max_seq_length", "max_len"),
    ("cutoff_len", "max_len"),
    ("lr_scheduler_type", "schedule"),
    ("scheduler", "schedule"),
    ("save_steps", "save_every"),
    ("logging_steps", "log_every"),
    ("loss_type", "loss"),
    ("simpo_gamma", "gamma"),
    ("ref_model", "reference"),
    ("model_name_or_path", "model"),
    ("dataset", "data"),
    ("train_dataset", "data"),
    ("finetuning_type", "tuning"),
    ("peft_config", "tuning"),
    ("reward_model", "reward"),
    ("kl_penalty", "kl_estimator"),
    ("init_kl_coef", "kl_coef"),
    ("num_ppo_epochs", "ppo_epochs"),
];

/// What a stage does with the malformed rows it read: fails on the first (the executor already
/// refused such files unless `skip_malformed` is set), or logs how many it skips and the first few.
pub fn report_malformed(
    ctx: &crate::run::context::RunContext,
    problems: &[String],
) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    if !ctx.flag("skip_malformed") {
        return Err(format!(
            "{} malformed rows, the first: {}",
            problems.len(),
            problems[0]
        ));
    }
    (ctx.log)(&format!("skipping {} malformed rows:", problems.len()));
    for p in problems.iter().take(3) {
        (ctx.log)(&format!("  {p}"));
    }
    Ok(())
}
