//! `ppo`: RLHF with PPO: sample from the policy, score with a reward model, clip and update (TRL's PPOTrainer).

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::{Type, PROMPT_FORMATS};

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
        int("ppo_epochs", 4, "PPO epochs per batch of rollouts"),
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
        run: None,
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
}
