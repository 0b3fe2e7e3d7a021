//! `export`: writes a model as a standalone HF directory at a path of the user's choice.

use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: None,
        plan_note: None,
        name: "export",
        summary: "write a model to a directory as a standalone HF checkpoint",
        fields: vec![
            required(
                "model",
                Type::Model,
                "the model to export (an adapter is merged first)",
            ),
            required(
                "path",
                Type::Str,
                "destination directory, relative to the pipeline file",
            ),
            choice(
                "dtype",
                &["auto", "f32", "bf16", "f16"],
                "auto",
                "dtype of the written weights (auto: as trained)",
            ),
            int("shard_mb", 5000, "largest safetensors shard, in MB"),
        ],
        outputs: vec![output("model", Type::Model, "the exported model")],
        refused: vec![],
        rules: vec![export_rules],
    }
}

fn export_rules(s: &StageView, d: &mut Vec<Diag>) {
    if matches!(s.get("path"), Value::Str(p) if p.trim().is_empty()) {
        d.push(
            Diag::error(
                "ptl::out_of_range",
                format!("export stage `{}` has an empty path", s.name),
            )
            .label(s.loc("path"), "empty")
            .help("give a directory such as `path = \"out/assistant\"`"),
        );
    }
    super::rules::positive(s, d, "shard_mb");
}
