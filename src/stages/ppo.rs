//! `ppo`: RLHF with PPO: sample from the policy, score with a reward model, clip and update (TRL's PPOTrainer).

use super::common;
use super::rules;
use super::schema::*;
use super::train_run::{self, Policy};
use crate::data::tokenizer::TextTokenizer;
use crate::error::Error;
use crate::lang::diag::Diag;
use crate::lang::types::{Type, PROMPT_FORMATS};
use crate::model::config::ModelConfig;
use crate::run::context::RunContext;
use crate::train::ppo::{KlEstimator, PpoSettings};
use crate::train::ppo_rollouts::{Ppo, PpoModels};
use std::path::Path;

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        PROMPT_FORMATS,
        "prompts to answer (alpaca, sharegpt, messages, preference or kto rows)",
    );
    fields.splice(
        1..1,
        [
            optional(
                "reference",
                Type::Model,
                "the frozen reference (default: the starting model)",
            ),
            required(
                "reward",
                Type::RewardModel,
                "the reward model that scores responses: `rm.model`",
            ),
            optional(
                "value_model",
                Type::RewardModel,
                "initial value model (default: the reward model)",
            ),
        ],
    );
    fields.extend(common::training(3e-6, 1024));
    fields.extend([
        float(
            "kl_coef",
            0.05,
            "weight of the per-token KL penalty in the reward",
        ),
        choice(
            "kl_estimator",
            &["k1", "k3"],
            "k1",
            "KL estimator: k1 (log ratio) or k3",
        ),
        float("cliprange", 0.2, "policy ratio clip range"),
        float("cliprange_value", 0.2, "value clip range"),
        float("vf_coef", 0.1, "weight of the value loss"),
        float("gamma", 1.0, "discount factor"),
        float("lam", 0.95, "GAE lambda"),
        int("ppo_epochs", 4, "passes over each batch of rollouts (TRL's num_ppo_epochs)"),
        int(
            "num_mini_batches",
            1,
            "optimizer steps per pass: the batch_size × grad_accum rollouts of a step cut into this many mini-batches",
        ),
        int("response_length", 53, "tokens sampled per response"),
        float("temperature", 0.7, "sampling temperature"),
        optional(
            "missing_eos_penalty",
            Type::Float,
            "subtracted from the score of responses without an end token",
        ),
    ]);
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "ppo",
        summary: "PPO against a reward model (RLHF)",
        fields,
        outputs: common::outputs(
            "the policy after PPO (or base + adapter)",
            "metrics.jsonl: objective/kl, objective/scores, policy/clipfrac_avg, ...",
        ),
        refused: vec![],
        rules: vec![common::training_rules, ppo_rules],
    }
}

fn ppo_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::non_negative(s, d, "kl_coef");
    rules::positive(s, d, "cliprange");
    rules::positive(s, d, "cliprange_value");
    rules::non_negative(s, d, "vf_coef");
    rules::within(s, d, "gamma", 0.0, 1.0, true);
    rules::within(s, d, "lam", 0.0, 1.0, true);
    rules::positive(s, d, "ppo_epochs");
    rules::positive(s, d, "response_length");
    rules::positive(s, d, "temperature");
    rules::non_negative(s, d, "missing_eos_penalty");
    rules::positive(s, d, "num_mini_batches");
    // The schema fills every default; a field that is not a number has its own error.
    let rollouts: Option<f64> = ["batch_size", "grad_accum", "workers"]
        .iter()
        .map(|f| s.num(f))
        .product();
    if let Some((m, rollouts)) = s
        .num("num_mini_batches")
        .zip(rollouts)
        .filter(|(m, r)| *m > 0.0 && r % m != 0.0)
    {
        d.push(
            Diag::error(
                "ptl::out_of_range",
                format!("ppo stage `{}`: {m} mini-batches do not divide {rollouts} rollouts", s.name),
            )
            .label(s.loc("num_mini_batches"), "must divide batch_size × grad_accum × workers")
            .help("a step samples batch_size × grad_accum × workers responses and cuts them into equal mini-batches"),
        );
    }
    same_vocabulary_rule(s, d);
}

/// The reward and value models read the policy's token ids: a model of another vocabulary size is
/// refused where the checker knows both.
fn same_vocabulary_rule(s: &StageView, d: &mut Vec<Diag>) {
    let Some(policy) = (s.model_shape)(s.get("model")) else {
        return;
    };
    for field in ["reward", "value_model"] {
        if !s.is_set(field) {
            continue;
        }
        let Some(other) = (s.model_shape)(s.get(field)) else {
            continue;
        };
        if other.vocab_size != policy.vocab_size {
            d.push(
                Diag::error(
                    "ptl::vocab_mismatch",
                    format!(
                        "ppo stage `{}`: `{field}` has a vocabulary of {} tokens, the policy {}",
                        s.name, other.vocab_size, policy.vocab_size
                    ),
                )
                .label(s.loc(field), format!("{other}"))
                .label(s.loc("model"), format!("{policy}"))
                .help("PPO scores the policy's own token ids: train the reward model from a model with the policy's tokenizer"),
            );
        }
    }
}

/// The PPO fields, typed (the schema holds the defaults).
#[derive(serde::Deserialize)]
struct PpoParams {
    kl_coef: f64,
    kl_estimator: KlEstimator,
    cliprange: f64,
    cliprange_value: f64,
    vf_coef: f64,
    gamma: f64,
    lam: f64,
    ppo_epochs: usize,
    num_mini_batches: usize,
    response_length: usize,
    temperature: f64,
    missing_eos_penalty: Option<f64>,
    max_len: usize,
}

/// Refuses a reward or value model whose vocabulary is not the policy's: another size, or (where
/// both folders hold a tokenizer) other tokens.
fn same_vocabulary(policy: &Path, field: &'static str, other: &Path) -> crate::error::Result<()> {
    let mismatch = |detail: String| Error::VocabularyMismatch {
        field,
        dir: other.to_path_buf(),
        detail,
    };
    let (a, b) = (ModelConfig::load(policy)?, ModelConfig::load(other)?);
    if a.vocab_size != b.vocab_size {
        return Err(mismatch(format!(
            "{} tokens, the policy {}",
            b.vocab_size, a.vocab_size
        )));
    }
    if other.join("tokenizer.json").is_file() {
        let vocab = |dir: &Path| -> crate::error::Result<_> {
            Ok(TextTokenizer::load(dir)?.inner.get_vocab(true))
        };
        let (va, vb) = (vocab(policy)?, vocab(other)?);
        if let Some((token, id)) = va.iter().find(|(t, id)| vb.get(*t) != Some(id)) {
            return Err(mismatch(format!(
                "its tokenizer does not map {token:?} to {id} as the policy's does"
            )));
        }
    }
    Ok(())
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = train_run::model_dir(ctx)?;
    let p: PpoParams = ctx.typed()?;
    let tok = TextTokenizer::load(&model_dir)?;
    let prompts = super::grpo::prompts(ctx, &tok, p.max_len)?
        .into_iter()
        .map(|r| r.ids)
        .collect();
    let hyper = train_run::hyper(ctx)?;
    let reward_dir = ctx
        .input("reward")
        .ok_or("the stage has no reward model")?
        .to_path_buf();
    let critic_dir = ctx
        .input("value_model")
        .unwrap_or(&reward_dir)
        .to_path_buf();
    same_vocabulary(&model_dir, "reward", &reward_dir)?;
    same_vocabulary(&model_dir, "value_model", &critic_dir)?;
    let Policy {
        mut model,
        mut vars,
        tuning,
    } = train_run::policy(ctx, &model_dir, hyper.seed)?;
    let reference_dir = ctx.input("reference").unwrap_or(&model_dir).to_path_buf();
    let reference = ctx.compute.load(&reference_dir)?;
    let reward = ctx.compute.load(&reward_dir)?;
    // The value model trains with the policy, under the stage's tuning (its score head in full).
    let critic = train_run::tuned(ctx, ctx.compute.load(&critic_dir)?, hyper.seed ^ 1)?;
    for (field, m) in [("reward", &reward), ("value_model", &critic.model)] {
        if m.score.is_none() {
            return Err(format!(
                "`{field}` ({}) has no score head: give a `reward_model` stage's model",
                if field == "reward" {
                    &reward_dir
                } else {
                    &critic_dir
                }
                .display()
            )
            .into());
        }
    }
    vars.extend(
        critic
            .vars
            .into_iter()
            .map(|(name, v)| (format!("value.{name}"), v)),
    );
    let settings = PpoSettings {
        kl_coef: p.kl_coef,
        kl_estimator: p.kl_estimator,
        cliprange: p.cliprange,
        cliprange_value: p.cliprange_value,
        vf_coef: p.vf_coef,
        gamma: p.gamma,
        lam: p.lam,
        temperature: p.temperature,
        missing_eos_penalty: p.missing_eos_penalty,
    };
    let objective = Ppo::new(
        prompts,
        tok.stop_ids(&model_dir),
        PpoModels {
            reference,
            reward,
            critic: critic.model,
        },
        settings,
        p.response_length,
        p.ppo_epochs,
        p.num_mini_batches,
    );
    train_run::fit(ctx, &model, &vars, &objective, &hyper)?;
    train_run::save(ctx, &mut model, &tuning, &model_dir)
}
