//! `simpo`: reference-free preference optimization on length-normalized log-probs with a margin.

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Format;
use crate::run::context::RunContext;
use crate::train::preference::{self, SimpoSettings};

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Preference],
        "preference rows: prompt, chosen, rejected",
    );
    fields.extend(common::training(1e-6, 1024));
    fields.extend([
        common::beta(
            0.1,
            "scale of the reward (TRL's default; the SimPO paper uses 2.0-2.5)",
        ),
        float("gamma", 0.5, "target reward margin (TRL's simpo_gamma)"),
        float(
            "cpo_alpha",
            0.0,
            "weight of the NLL term on chosen answers (0: pure SimPO; TRL's CPO uses 1.0)",
        ),
        float("label_smoothing", 0.0, "label smoothing ε in [0, 0.5)"),
    ]);
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "simpo",
        summary: "SimPO: reference-free preference optimization with a target margin",
        fields,
        outputs: common::outputs(
            "the aligned model (or base + adapter)",
            "metrics.jsonl of the run",
        ),
        refused: vec![(
            "reference",
            "SimPO is reference-free: it uses no reference model",
        )],
        rules: vec![common::training_rules, simpo_rules],
    }
}

fn simpo_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "beta");
    rules::non_negative(s, d, "gamma");
    rules::non_negative(s, d, "cpo_alpha");
    rules::within(s, d, "label_smoothing", 0.0, 0.5, false);
}

/// Trains without a reference, on TRL's CPO sequences (each completion ends with EOS).
fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let pairs = super::preference_run::pairs_with_eos(ctx, &model_dir)?;
    let settings: SimpoSettings = ctx.typed()?;
    super::preference_run::train(ctx, &model_dir, &preference::simpo(pairs, settings))
}
