//! `merge`: folds a LoRA adapter into its base weights (W' = W + scaling·B·A), giving a plain model.

use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: None,
        plan_note: None,
        outside: None,
        name: "merge",
        summary: "merge a LoRA adapter into its base model",
        fields: vec![required(
            "model",
            Type::Model,
            "the output of a stage trained with `lora(...)` or `qlora(...)`",
        )],
        outputs: vec![output(
            "model",
            Type::Model,
            "the merged model, a plain HF directory",
        )],
        refused: vec![],
        rules: vec![merge_rules],
    }
}

fn merge_rules(s: &StageView, d: &mut Vec<Diag>) {
    let upstream = match s.get("model") {
        Value::Output { stage, .. } => (s.upstream_tuning)(*stage),
        Value::HfModel(_) => None,
        _ => return,
    };
    let has_adapter = matches!(&upstream, Some(Value::Tuning(t)) if t.lora().is_some());
    if !has_adapter && !matches!(upstream, Some(Value::Error)) {
        d.push(
            Diag::error("ptl::nothing_to_merge", format!("merge stage `{}` has no adapter to merge", s.name))
                .label(s.loc("model"), "this model carries no LoRA adapter")
                .help("merge takes the output of a stage trained with `tuning = lora(...)` or `qlora(...)`"),
        );
    }
}
