//! `eval`: scores models on a dataset: loss, perplexity, exact match of greedy answers, reward and win rate.

use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;

pub const METRICS: &[&str] = &["loss", "perplexity", "exact_match", "reward", "win_rate"];

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: None,
        name: "eval",
        summary: "evaluate models: loss, perplexity, exact match, reward, win rate",
        fields: vec![
            required(
                "models",
                Type::list(Type::Model),
                "the models to compare: `[base, sft.model, ...]`",
            ),
            required("data", Type::Dataset(&[]), "held-out rows in any format"),
            optional(
                "reward",
                Type::RewardModel,
                "a reward model, for the `reward` and `win_rate` metrics",
            ),
            field(
                "metrics",
                Type::list(Type::Enum(METRICS)),
                Default::Value(Value::List(vec![
                    Value::Str("loss".into()),
                    Value::Str("perplexity".into()),
                ])),
                "which metrics to compute",
            ),
            int(
                "max_new_tokens",
                64,
                "tokens generated per answer (exact_match, reward, win_rate)",
            ),
            int("batch_size", 8, "rows per forward pass"),
            int("max_len", 1024, "tokens per sequence"),
            optional("limit", Type::Int, "evaluate only the first N rows"),
            field(
                "seed",
                Type::Int,
                Default::Config("seed"),
                "seed for sampling (default: config.seed)",
            ),
        ],
        outputs: vec![output(
            "metrics",
            Type::Metrics,
            "metrics.json: one object per model",
        )],
        refused: vec![],
        rules: vec![eval_rules],
    }
}

fn eval_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "max_new_tokens");
    rules::positive(s, d, "batch_size");
    rules::positive(s, d, "max_len");
    rules::positive(s, d, "limit");
    if let Value::List(models) = s.get("models") {
        if models.is_empty() {
            d.push(
                Diag::error(
                    "ptl::empty_list",
                    format!("eval stage `{}` has no models", s.name),
                )
                .label(s.loc("models"), "empty")
                .help("list at least one model: `models = [base, sft.model]`"),
            );
        }
        let metrics: Vec<&str> = match s.get("metrics") {
            Value::List(m) => m
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        for needs_reward in ["reward", "win_rate"] {
            if metrics.contains(&needs_reward) && !s.is_set("reward") {
                d.push(
                    Diag::error(
                        "ptl::missing_field",
                        format!("metric \"{needs_reward}\" needs a reward model"),
                    )
                    .label(
                        s.loc("metrics"),
                        format!("\"{needs_reward}\" asked for here"),
                    )
                    .help("add `reward = <reward_model stage>.model` to the stage"),
                );
            }
        }
        if metrics.contains(&"win_rate") && models.len() < 2 {
            d.push(
                Diag::error(
                    "ptl::out_of_range",
                    "metric \"win_rate\" compares models: it needs at least two",
                )
                .label(s.loc("models"), "only one model")
                .help("win rates are reported for each model against the first one in `models`"),
            );
        }
    }
}
