//! `pt`: continued pretraining on plain text; every token counts in the loss.

use super::common;
use super::schema::*;
use crate::lang::types::Format;

pub fn kind() -> Kind {
    let mut fields = common::inputs(&[Format::Text], "text rows `{\"text\": ...}`");
    fields.extend(common::training(5e-5, 1024));
    fields.push(boolean(
        "packing",
        true,
        "pack rows into full sequences (no attention across rows)",
    ));
    Kind {
        version: 2,
        run: Some(super::train_run::run_supervised),
        plan_note: None,
        outside: None,
        name: "pt",
        summary: "continued pretraining on plain text",
        fields,
        outputs: common::outputs(
            "the trained model (or base + adapter)",
            "metrics.jsonl of the run",
        ),
        refused: vec![],
        rules: vec![common::training_rules],
    }
}
