//! `sft`: supervised fine-tuning on conversations or instructions, assistant tokens only by default.

use super::common;
use super::schema::*;
use crate::lang::types::CHAT_FORMATS;

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        CHAT_FORMATS,
        "conversations: alpaca, sharegpt or messages rows",
    );
    fields.extend(common::training(2e-5, 1024));
    fields.extend([
        boolean(
            "train_on_prompt",
            false,
            "also train on system and user tokens",
        ),
        boolean(
            "mask_history",
            false,
            "train on the last assistant turn only",
        ),
        boolean(
            "packing",
            false,
            "pack rows into full sequences (no attention across rows)",
        ),
        path(
            "template",
            Default::Optional,
            "a chat template file to use instead of the tokenizer's own",
        ),
    ]);
    Kind {
        version: 2,
        run: Some(super::train_run::run_supervised),
        plan_note: None,
        outside: None,
        name: "sft",
        summary: "supervised fine-tuning on conversations or instructions",
        fields,
        outputs: common::outputs(
            "the trained model (or base + adapter)",
            "metrics.jsonl of the run",
        ),
        refused: vec![],
        rules: vec![common::training_rules],
    }
}
