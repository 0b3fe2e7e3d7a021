//! `kto`: Kahneman-Tversky optimization on unpaired desirable / undesirable completions.

use super::common;
use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Kto],
        "unpaired rows: prompt, completion, label (true/false)",
    );
    fields.insert(
        1,
        optional(
            "reference",
            Type::Model,
            "the frozen reference (default: the starting model)",
        ),
    );
    fields.extend(common::training(1e-6, 1024));
    fields.extend([
        common::beta(0.1, "strength of the KL penalty toward the reference"),
        float("desirable_weight", 1.0, "weight λD of desirable examples"),
        float(
            "undesirable_weight",
            1.0,
            "weight λU of undesirable examples",
        ),
    ]);
    Kind {
        version: 1,
        run: None,
        name: "kto",
        summary: "KTO on unpaired desirable / undesirable completions",
        fields,
        outputs: common::outputs(
            "the aligned model (or base + adapter)",
            "metrics.jsonl: loss, kl, rewards/chosen, ...",
        ),
        refused: vec![],
        rules: vec![common::training_rules, kto_rules],
    }
}

fn kto_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "beta");
    rules::positive(s, d, "desirable_weight");
    rules::positive(s, d, "undesirable_weight");
    if let Some(b) = s.num("batch_size") {
        if b <= 1.0 && b > 0.0 {
            d.push(
                Diag::error("ptl::out_of_range", format!("`batch_size` of kto stage `{}` must be at least 2", s.name))
                    .label(s.loc("batch_size"), "too small")
                    .help("KTO estimates its KL term from mismatched pairs inside a batch, so a batch needs 2 or more rows"),
            );
        }
    }
}
