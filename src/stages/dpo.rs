//! `dpo`: direct preference optimization against a frozen reference (TRL's DPOTrainer losses).

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};

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
            "compute reference log-probs once, cached as their own artifact",
        ),
    ]);
    Kind {
        version: 1,
        run: None,
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
