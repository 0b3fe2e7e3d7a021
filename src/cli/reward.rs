//! `ptl reward MODEL_DIR --input FILE|-`: the reward of each JSONL row under a reward model (a
//! `*ForSequenceClassification` folder with one label, as `reward_model` writes it).

use crate::data::rows::Side;
use crate::plan::compute::Compute;
use crate::stages::eval_reward::Judge;
use serde_json::{json, Value};
use std::path::Path;

/// What a row asks to score: token ids as they are, or a prompt and a completion.
enum Row {
    Ids(Vec<u32>),
    Text(Side, Side),
}

/// `ids`; `messages` (a whole conversation); a message-list `prompt` with a message-list or text
/// `completion`; or text `prompt` and `completion`.
fn row(row: &Value) -> Result<Row, String> {
    if let Some(ids) = row.get("ids").and_then(Value::as_array) {
        let ids: Option<Vec<u32>> = ids.iter().map(|i| i.as_u64().map(|v| v as u32)).collect();
        return ids
            .map(Row::Ids)
            .ok_or_else(|| "`ids` must be a list of token ids".into());
    }
    match (
        row.get("messages"),
        row.get("prompt"),
        row.get("completion"),
    ) {
        (Some(Value::Array(m)), _, _) => {
            Ok(Row::Text(Side::Messages(m.clone()), Side::Messages(vec![])))
        }
        (_, Some(Value::Array(p)), Some(c)) => {
            let completion = match c {
                Value::Array(m) => Side::Messages(m.clone()),
                Value::String(t) => Side::Text(t.clone()),
                _ => return Err("`completion` must be text or a list of messages".into()),
            };
            Ok(Row::Text(Side::Messages(p.clone()), completion))
        }
        (_, Some(Value::String(p)), Some(Value::String(c))) => {
            Ok(Row::Text(Side::Text(p.clone()), Side::Text(c.clone())))
        }
        _ => Err("a row needs `messages`, `prompt` and `completion`, or `ids`".into()),
    }
}

pub fn run(model: &Path, input: &Path, json_out: bool, compute: &Compute) -> i32 {
    let judge = match Judge::load(model, compute) {
        Ok(j) => j,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    let enc = match judge.encoder() {
        Ok(e) => e,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    super::score::each_row(input, |line, value| {
        let ids = match row(&value)? {
            Row::Ids(ids) => ids,
            Row::Text(prompt, completion) => judge.sequence(&enc, &prompt, &completion)?,
        };
        let tokens = ids.len();
        // The reward as the model computed it, in f32.
        let reward = judge.score(&[ids])?[0] as f32;
        if json_out {
            outln!(
                "{}",
                json!({"line": line, "tokens": tokens, "reward": reward})
            );
        } else {
            outln!("{reward}");
        }
        Ok(())
    })
}
