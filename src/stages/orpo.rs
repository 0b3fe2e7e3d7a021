//! `orpo`: odds-ratio preference optimization, SFT and alignment in one reference-free stage.

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Format;

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Preference],
        "preference rows: prompt, chosen, rejected",
    );
    fields.extend(common::training(1e-6, 1024));
    fields.push(common::beta(0.1, "weight λ of the odds-ratio term"));
    Kind {
        version: 1,
        run: None,
        name: "orpo",
        summary: "ORPO: odds-ratio preference optimization without a reference",
        fields,
        outputs: common::outputs(
            "the aligned model (or base + adapter)",
            "metrics.jsonl: nll_loss, log_odds_ratio, ...",
        ),
        refused: vec![(
            "reference",
            "ORPO is reference-free: it uses no reference model",
        )],
        rules: vec![common::training_rules, orpo_rules],
    }
}

fn orpo_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "beta");
}
