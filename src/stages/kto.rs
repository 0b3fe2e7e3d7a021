//! `kto`: Kahneman-Tversky optimization on unpaired desirable / undesirable completions.

use super::common;
use super::rules;
use super::schema::*;
use crate::data::encode::Encoded;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};
use crate::run::context::RunContext;
use crate::train::kto::{self, KtoSettings, Unpaired};

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
        run: Some(run),
        plan_note: Some(|v| super::reference_logps::plan_note(v, "kto")),
        outside: None,
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

/// TRL's advice when desirable and undesirable rows are unbalanced: λD·nD / (λU·nU) should lie in
/// [1, 4/3] (Eq. 8 of the KTO paper); `None` when it does.
fn weight_advice(rows: &[Unpaired], s: &KtoSettings) -> Option<String> {
    let desirable = rows.iter().filter(|r| r.label).count().max(1) as f64;
    let undesirable = (rows.len() as f64 - desirable).max(1.0);
    if desirable == undesirable {
        return None;
    }
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let des = (
        round(undesirable * s.undesirable_weight / desirable),
        round(undesirable * s.undesirable_weight / desirable * 1.33),
    );
    let und = (
        round(desirable * s.desirable_weight / undesirable / 1.33),
        round(desirable * s.desirable_weight / undesirable),
    );
    let within = |(lo, hi): (f64, f64), w: f64| lo <= w && w <= hi;
    if within(des, s.desirable_weight) || within(und, s.undesirable_weight) {
        return None;
    }
    Some(format!(
        "warning: {desirable} desirable and {undesirable} undesirable rows with weights {} and {}: TRL recommends EITHER desirable_weight in [{}, {}] or undesirable_weight in [{}, {}] (not both)",
        s.desirable_weight, s.undesirable_weight, des.0, des.1, und.0, und.1
    ))
}

/// Reads the rows in order, computes the reference's log-probs of every row and of its mismatched
/// pair once (the `reference` model, else the starting policy), then trains with the shared loop.
fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let rows = super::preference_run::examples(ctx, &model_dir, "rows", |e| match e {
        Encoded::Unpaired {
            prompt_ids,
            completion_ids,
            label,
            ..
        } => Some(Unpaired {
            prompt: prompt_ids,
            completion: completion_ids,
            label,
        }),
        _ => None,
    })?;
    let first = rows[0].label;
    if rows.iter().all(|r| r.label == first) {
        return Err(crate::error::Error::OneLabel {
            file: ctx.dataset("data")?.0,
            rows: rows.len(),
            label: first,
        });
    }
    let settings: KtoSettings = ctx.typed()?;
    if let Some(advice) = weight_advice(&rows, &settings) {
        (ctx.log)(&advice);
    }
    let hyper = super::train_run::hyper(ctx)?;
    let super::train_run::Policy {
        mut model,
        vars,
        tuning,
    } = super::train_run::policy(ctx, &model_dir, hyper.seed)?;
    let partners = kto::kl_partners(rows.len(), hyper.batch_size);
    let reference = super::reference_logps::for_stage(ctx, &model, hyper.batch_size, "kto", |m| {
        kto::reference_logps(m, &rows, &partners, hyper.batch_size)
    })?;
    let objective = kto::kto(rows, partners, reference, settings);
    super::train_run::fit(ctx, &model, &vars, &objective, &hyper)?;
    super::train_run::save(ctx, &mut model, &tuning, &model_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(desirable: usize, undesirable: usize) -> Vec<Unpaired> {
        (0..desirable + undesirable)
            .map(|i| Unpaired {
                prompt: vec![],
                completion: vec![],
                label: i < desirable,
            })
            .collect()
    }

    /// TRL's advice: silent when balanced or when either weight is in its range.
    #[test]
    fn weight_advice_follows_trl() {
        let s = |d, u| KtoSettings {
            beta: 0.1,
            desirable_weight: d,
            undesirable_weight: u,
        };
        assert_eq!(weight_advice(&rows(3, 3), &s(1.0, 1.0)), None);
        // 2 desirable vs 4 undesirable: desirable_weight should be in [2, 2.66].
        let advice = weight_advice(&rows(2, 4), &s(1.0, 1.0)).unwrap();
        assert!(advice.contains("desirable_weight in [2, 2.66]"), "{advice}");
        assert!(
            advice.contains("undesirable_weight in [0.38, 0.5]"),
            "{advice}"
        );
        assert_eq!(weight_advice(&rows(2, 4), &s(2.2, 1.0)), None);
        assert_eq!(weight_advice(&rows(2, 4), &s(1.0, 0.45)), None);
    }
}
