//! `orpo`: odds-ratio preference optimization, SFT and alignment in one reference-free stage.

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Format;
use crate::run::context::RunContext;
use crate::train::preference::{self, OrpoSettings};

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Preference],
        "preference rows: prompt, chosen, rejected",
    );
    fields.extend(common::training(1e-6, 1024));
    fields.push(common::beta(0.1, "weight λ of the odds-ratio term"));
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
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

/// Trains without a reference, on TRL's CPO/ORPO sequences (each completion ends with EOS).
fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let pairs = super::preference_run::pairs_with_eos(ctx, &model_dir)?;
    let settings: OrpoSettings = ctx.typed()?;
    super::preference_run::train(ctx, &model_dir, &preference::orpo(pairs, settings))
}
