//! `dpo`: direct preference optimization against a frozen reference (TRL's DPOTrainer losses).

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};
use crate::lang::value::Value;
use crate::run::context::RunContext;
use crate::train::preference::{self, reference_logps, DpoSettings};

pub const LOSSES: &[&str] = &["sigmoid", "ipo", "hinge", "robust"];

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Preference],
        "preference rows: prompt, chosen, rejected",
    );
    fields.insert(
        1,
        optional(
            "reference",
            Type::Model,
            "the frozen reference (default: the starting model; for LoRA, the base with adapters off)",
        ),
    );
    fields.extend(common::training(1e-6, 1024));
    fields.extend([
        common::beta(0.1, "strength of the KL penalty toward the reference"),
        choice(
            "loss",
            LOSSES,
            "sigmoid",
            "loss: sigmoid (DPO), ipo, hinge (SLiC) or robust",
        ),
        float(
            "label_smoothing",
            0.0,
            "assumed label noise ε for the robust loss, in [0, 0.5)",
        ),
        boolean(
            "precompute_ref",
            true,
            "compute the reference log-probs once, before training, and keep them in the store for stages with the same reference and data (the only mode in this version)",
        ),
    ]);
    Kind {
        version: 1,
        run: Some(run),
        plan_note: Some(|v| super::reference_logps::plan_note(v, "dpo")),
        outside: None,
        name: "dpo",
        summary: "direct preference optimization against a frozen reference",
        fields,
        outputs: common::outputs(
            "the aligned model (or base + adapter)",
            "metrics.jsonl: loss, rewards/chosen, rewards/margins, ...",
        ),
        refused: vec![],
        rules: vec![common::training_rules, dpo_rules],
    }
}

fn dpo_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "beta");
    if s.get("precompute_ref") == &Value::Bool(false) {
        d.push(
            Diag::error(
                "ptl::not_supported",
                "`precompute_ref = false` is not supported yet",
            )
            .label(s.loc("precompute_ref"), "reference log-probs on the fly")
            .help("ptl computes the reference's log-probs once before training, which gives the same losses; remove the field"),
        );
    }
    rules::within(s, d, "label_smoothing", 0.0, 0.5, false);
    let smoothing = s.num("label_smoothing").unwrap_or(0.0);
    let loss = s.str("loss").unwrap_or("sigmoid");
    if smoothing > 0.0 && loss != "robust" {
        d.push(
            Diag::warning("ptl::unused_field", format!("`label_smoothing` has no effect with loss = \"{loss}\""))
                .label(s.loc("label_smoothing"), "ignored")
                .help("label smoothing applies to loss = \"robust\" (as in TRL); remove it or switch the loss"),
        );
    }
}

/// Takes the reference's log-probs from the store or computes them once (the `reference` model, else
/// the starting policy: for LoRA the adapters start at zero, so that is the base), then trains with
/// the shared loop.
fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let pairs = super::preference_run::pairs(ctx, &model_dir)?;
    let hyper = super::train_run::hyper(ctx)?;
    let super::train_run::Policy {
        mut model,
        vars,
        tuning,
    } = super::train_run::policy(ctx, &model_dir, hyper.seed)?;
    let reference = super::reference_logps::for_stage(ctx, &model, hyper.batch_size, "dpo", |m| {
        reference_logps(m, &pairs, hyper.batch_size)
    })?;
    let settings: DpoSettings = ctx.typed()?;
    let objective = preference::dpo(pairs, reference, settings);
    super::train_run::fit(ctx, &model, &vars, &objective, &hyper)?;
    super::train_run::save(ctx, &mut model, &tuning, &model_dir)
}
