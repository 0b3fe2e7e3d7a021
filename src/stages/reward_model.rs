//! `reward_model`: a Bradley-Terry reward model (a scalar head on the last token) trained on preference pairs.

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Preference],
        "preference rows: prompt, chosen, rejected",
    );
    fields.extend(common::training(1e-4, 1024));
    fields.push(float(
        "center_rewards_coefficient",
        0.0,
        "weight of the mean((r_c + r_r)^2) term that centers rewards (0.01 is a common choice)",
    ));
    Kind {
        version: 1,
        run: None,
        name: "reward_model",
        summary: "Bradley-Terry reward model on preference pairs",
        fields,
        outputs: vec![
            output(
                "model",
                Type::RewardModel,
                "the reward model: base weights plus `score.weight`",
            ),
            output("metrics", Type::Metrics, "metrics.jsonl of the run"),
        ],
        refused: vec![],
        rules: vec![common::training_rules, rm_rules],
    }
}

fn rm_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::non_negative(s, d, "center_rewards_coefficient");
}
