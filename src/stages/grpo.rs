//! `grpo`: group-relative policy optimization (TRL's GRPOTrainer) with reward functions written in
//! the pipeline: each step samples `num_generations` completions per prompt from the policy, scores
//! them, and trains toward the better ones of each group.

use super::common;
use super::rules;
use super::schema::*;
use crate::data::encode::{EncodeOptions, Encoder};
use crate::data::rows::{self, Example, Side};
use crate::data::tokenizer::TextTokenizer;
use crate::lang::diag::Diag;
use crate::lang::types::{Type, PROMPT_FORMATS};
use crate::lang::value::{Reward, RewardRule, Value};
use crate::run::context::RunContext;
use crate::train::grpo::{GrpoSettings, LossType, ScaleRewards};
use crate::train::rollouts::{Grpo, PromptRow, Scorer};
use serde_json::{Map, Value as Json};
use std::path::Path;

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        PROMPT_FORMATS,
        "prompts to answer, with the fields the rewards read: `prompt` rows, or conversations ending in an assistant turn (its text is the field `answer`)",
    );
    fields.insert(
        1,
        optional(
            "reference",
            Type::Model,
            "the frozen reference of the KL term (default: the starting model; loaded only when beta ≠ 0)",
        ),
    );
    fields.insert(
        3,
        optional(
            "reward_model",
            Type::RewardModel,
            "a reward model whose score of each completion (prompt and completion in its own chat template) is added to the rewards: `rm.model`",
        ),
    );
    fields.insert(
        3,
        field(
            "rewards",
            Type::list(Type::Reward),
            Default::Value(Value::List(vec![])),
            "reward functions summed with their weights: `[exact_match(field = \"answer\"), regex_match(pattern = \"^\\\\d+$\", weight = 0.5)]`",
        ),
    );
    fields.extend(common::training(1e-6, 1024));
    fields.extend([
        float("reward_model_weight", 1.0, "the weight of `reward_model`'s score in the total reward"),
        int("num_generations", 8, "completions sampled per prompt (a group)"),
        int("max_completion_length", 256, "tokens sampled per completion at most"),
        float("temperature", 1.0, "sampling temperature (log-probs are taken at it too)"),
        float("top_p", 1.0, "nucleus sampling: keep the smallest set of tokens with this much probability"),
        int("top_k", 0, "sample among the K most likely tokens (0: all)"),
        float("beta", 0.0, "weight of the KL term toward the reference (0: no reference is loaded)"),
        float("epsilon", 0.2, "clip range of the ratio, below 1"),
        optional("epsilon_high", Type::Float, "clip range above 1 (default: epsilon; DAPO suggests 0.28)"),
        choice(
            "loss_type",
            &["dapo", "grpo", "dr_grpo", "bnpo"],
            "dapo",
            "how token losses average: dapo (over every token of the step), grpo (per completion, then over completions), dr_grpo (Σ / (completions × max_completion_length)), bnpo (per micro-batch)",
        ),
        choice(
            "scale_rewards",
            &["group", "batch", "none"],
            "group",
            "divide advantages by the group's standard deviation, the batch's, or nothing",
        ),
        boolean(
            "mask_truncated_completions",
            false,
            "completions cut at max_completion_length (no stop token) train nothing",
        ),
        int(
            "num_iterations",
            1,
            "updates per batch of completions: a step samples once and trains this many times on them, the ratio taken against the log-probs they were sampled with",
        ),
    ]);
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "grpo",
        summary: "GRPO: sample groups of completions, score them with reward functions, train toward the better ones",
        fields,
        outputs: common::outputs(
            "the trained policy (or base + adapter)",
            "metrics.jsonl: loss, reward, reward_std, rewards/<name>/mean, kl, completions/mean_length, ...",
        ),
        refused: vec![],
        rules: vec![common::training_rules, grpo_rules],
    }
}

fn grpo_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "num_generations");
    rules::positive(s, d, "max_completion_length");
    rules::positive(s, d, "temperature");
    rules::within(s, d, "top_p", 0.0, 1.0, true);
    rules::non_negative(s, d, "top_k");
    rules::non_negative(s, d, "beta");
    rules::within(s, d, "epsilon", 0.0, 1.0, true);
    rules::non_negative(s, d, "epsilon_high");
    if s.num("num_generations").is_some_and(|g| g < 2.0 && g > 0.0) {
        d.push(
            Diag::error(
                "ptl::out_of_range",
                format!(
                    "grpo stage `{}` needs at least 2 generations per prompt",
                    s.name
                ),
            )
            .label(
                s.loc("num_generations"),
                "a group of one has no relative advantage",
            )
            .help("sample 2 or more completions per prompt; TRL's default is 8"),
        );
    }
    rules::positive(s, d, "num_iterations");
    if let Value::List(rewards) = s.get("rewards") {
        if rewards.is_empty() && !s.is_set("reward_model") {
            d.push(
                Diag::error(
                    "ptl::empty_list",
                    format!("grpo stage `{}` has no reward", s.name),
                )
                .label(s.loc("rewards"), "nothing to score completions")
                .help(
                    "add a reward such as `exact_match(field = \"answer\")`, or a `reward_model`",
                ),
            );
        }
        fields_rule(s, d, rewards);
    }
}

/// Every field an `exact_match` reads is in the data's first row (a typo is a check error, not a
/// failure after an hour of sampling).
fn fields_rule(s: &StageView, d: &mut Vec<Diag>, rewards: &[Value]) {
    let Value::Dataset { path, format } = s.get("data") else {
        return;
    };
    let Some(first) = first_row(&path.resolved) else {
        return;
    };
    let known = match rows::example(&first, *format) {
        Ok(example) => row_fields(first, &example),
        Err(_) => first,
    };
    for r in rewards {
        if let Value::Reward(Reward {
            rule: RewardRule::ExactMatch { field, .. },
            ..
        }) = r
        {
            if !known.contains_key(field) {
                let mut names: Vec<&String> = known.keys().collect();
                names.sort();
                let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                let near = names
                    .iter()
                    .find(|n| strsim::levenshtein(n, field) <= 2)
                    .map_or(String::new(), |n| format!("did you mean `{n}`? "));
                d.push(
                    Diag::error(
                        "ptl::unknown_field",
                        format!("the rows of `{}` have no field `{field}`", path.written),
                    )
                    .label(s.loc("rewards"), format!("`exact_match` reads `{field}`"))
                    .help(format!("{near}the first row's fields: {}", list.join(", "))),
                );
            }
        }
    }
}

/// The first non-empty row of a JSONL file, as an object.
fn first_row(path: &Path) -> Option<Map<String, Json>> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    match serde_json::from_str(line).ok()? {
        Json::Object(o) => Some(o),
        _ => None,
    }
}

/// The fields a row offers the rewards: its own, and for a conversation that ends with an assistant
/// turn, `answer` (that turn's text).
fn row_fields(mut fields: Map<String, Json>, example: &Example) -> Map<String, Json> {
    if let Example::Chat(messages) = example {
        if let Some(last) = messages.last().filter(|m| m["role"] == "assistant") {
            fields
                .entry("answer")
                .or_insert_with(|| last["content"].clone());
        }
    }
    fields
}

/// A row's prompt: `prompt` rows as they are; a conversation without its last assistant turn; the
/// prompt of a preference or KTO row.
fn prompt_of(example: &Example) -> Option<Side> {
    match example {
        Example::Prompt(p)
        | Example::Preference { prompt: p, .. }
        | Example::Kto { prompt: p, .. } => Some(p.clone()),
        Example::Chat(messages) => {
            let (last, before) = messages.split_last()?;
            (last["role"] == "assistant" && !before.is_empty())
                .then(|| Side::Messages(before.to_vec()))
        }
        Example::Text(_) => None,
    }
}

/// The GRPO fields, typed (the schema holds the defaults).
#[derive(serde::Deserialize)]
struct GrpoParams {
    num_generations: usize,
    max_completion_length: usize,
    temperature: f64,
    top_p: f64,
    top_k: usize,
    beta: f64,
    epsilon: f64,
    epsilon_high: Option<f64>,
    loss_type: LossType,
    scale_rewards: ScaleRewards,
    mask_truncated_completions: bool,
    num_iterations: usize,
    max_len: usize,
    reward_model_weight: f64,
}

/// The prompts of the data with their rows' fields, tokenized with the model's chat template.
pub(super) fn prompts(
    ctx: &RunContext,
    tok: &TextTokenizer,
    max_len: usize,
) -> crate::error::Result<Vec<PromptRow>> {
    let (data, format) = ctx.dataset("data")?;
    let (read, problems) = rows::read(&data, format)?;
    common::report_malformed(ctx, &problems)?;
    let raw: Vec<Option<Map<String, Json>>> = std::fs::read_to_string(&data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .lines()
        .map(|l| match serde_json::from_str(l) {
            Ok(Json::Object(o)) => Some(o),
            _ => None,
        })
        .collect();
    let enc = Encoder::new(
        tok,
        None,
        EncodeOptions {
            max_len,
            ..EncodeOptions::default()
        },
    )?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for r in &read {
        let Some(side) = prompt_of(&r.example) else {
            dropped += 1;
            continue;
        };
        let fields = raw
            .get(r.line - 1)
            .cloned()
            .flatten()
            .map(|f| row_fields(f, &r.example))
            .unwrap_or_default();
        match enc.prompt(&side) {
            Ok((_, ids)) if ids.len() < max_len => out.push(PromptRow {
                prompt: side,
                ids,
                fields,
            }),
            _ => dropped += 1,
        }
    }
    (ctx.log)(&format!(
        "{} prompts to sample from ({dropped} without a prompt or longer than max_len)",
        out.len()
    ));
    if out.is_empty() {
        return Err(format!("{}: no row holds a prompt to answer", data.display()).into());
    }
    Ok(out)
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let p: GrpoParams = ctx.typed()?;
    let tok = TextTokenizer::load(&model_dir)?;
    let prompts = prompts(ctx, &tok, p.max_len)?;
    let rewards: Vec<Reward> = match ctx.param("rewards") {
        Value::List(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::Reward(r) => Some(r.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    let scorer = Scorer::new(&rewards)?;
    // TRL's per_device_train_batch_size counts completions: the loop takes prompts.
    let mut hyper = super::train_run::hyper(ctx)?;
    let g = p.num_generations.max(1);
    if hyper.batch_size % g != 0 {
        return Err(format!(
            "batch_size ({}) must be a multiple of num_generations ({g}): a batch holds whole groups",
            hyper.batch_size
        )
        .into());
    }
    hyper.batch_size /= g;
    let super::train_run::Policy {
        mut model,
        vars,
        tuning,
    } = super::train_run::policy(ctx, &model_dir, hyper.seed)?;
    let reference = if p.beta != 0.0 {
        let dir = ctx.input("reference").unwrap_or(&model_dir).to_path_buf();
        Some(ctx.compute.load(&dir)?)
    } else {
        None
    };
    let settings = GrpoSettings {
        num_generations: g,
        max_completion_length: p.max_completion_length,
        temperature: p.temperature,
        beta: p.beta,
        epsilon_low: p.epsilon,
        epsilon_high: p.epsilon_high.unwrap_or(p.epsilon),
        loss_type: p.loss_type,
        scale_rewards: p.scale_rewards,
        mask_truncated_completions: p.mask_truncated_completions,
        num_iterations: p.num_iterations,
    };
    let stop = tok.stop_ids(&model_dir);
    let judge = match ctx.input("reward_model") {
        Some(dir) => Some(super::eval_reward::Judge::load(dir, ctx.compute)?),
        None => None,
    };
    let mut objective = Grpo::new(
        prompts, scorer, &tok, stop, reference, settings, p.top_p, p.top_k,
    );
    let weight = p.reward_model_weight;
    objective.judge = judge.map(|j| {
        (
            Box::new(j) as Box<dyn crate::train::rollouts::RewardModel>,
            weight,
        )
    });
    super::train_run::fit(ctx, &model, &vars, &objective, &hyper)?;
    super::train_run::save(ctx, &mut model, &tuning, &model_dir)
}
