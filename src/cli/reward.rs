//! `ptl reward MODEL_DIR --input FILE|-`: the reward of each JSONL row under a reward model (a
//! `*ForSequenceClassification` folder with one label, as `reward_model` writes it).

use crate::data::encode::{EncodeOptions, Encoder, Skip};
use crate::data::tokenizer::TextTokenizer;
use crate::model::config::Head;
use crate::plan::compute::Compute;
use crate::stages::reward_model::plain_sequence;
use serde_json::{json, Value};
use std::path::Path;

/// The sequence a row describes, as the reward model was trained to read it: `messages` (or a
/// message-list `prompt` and `completion`) rendered whole with the model's chat template; text
/// `prompt` + `completion` joined with EOS; or `ids`.
fn row_ids(row: &Value, tok: &TextTokenizer) -> Result<Vec<u32>, String> {
    if let Some(ids) = row.get("ids").and_then(Value::as_array) {
        let ids: Option<Vec<u32>> = ids.iter().map(|i| i.as_u64().map(|v| v as u32)).collect();
        return ids.ok_or_else(|| "`ids` must be a list of token ids".into());
    }
    let messages: Option<Vec<Value>> = match (
        row.get("messages"),
        row.get("prompt"),
        row.get("completion"),
    ) {
        (Some(Value::Array(m)), _, _) => Some(m.clone()),
        (_, Some(Value::Array(p)), Some(c)) => {
            let mut all = p.clone();
            match c {
                Value::Array(m) => all.extend(m.iter().cloned()),
                Value::String(t) => all.push(json!({"role": "assistant", "content": t})),
                _ => return Err("`completion` must be text or a list of messages".into()),
            }
            Some(all)
        }
        _ => None,
    };
    if let Some(messages) = messages {
        let encoder = Encoder::new(tok, None, EncodeOptions::default())?;
        let text = encoder
            .render(&messages, false)
            .map_err(|e| match e {
                Skip::Bad(why) | Skip::Dropped(why) => why,
            })?
            .text;
        return Ok(tok.encode(&text, false)?.ids);
    }
    match (
        row.get("prompt").and_then(Value::as_str),
        row.get("completion").and_then(Value::as_str),
    ) {
        (Some(p), Some(c)) => plain_sequence(tok, p, c),
        _ => Err("a row needs `messages`, `prompt` and `completion`, or `ids`".into()),
    }
}

pub fn run(model: &Path, input: &Path, json_out: bool, compute: &Compute) -> i32 {
    let loaded = compute.load(model).map_err(|e| e.to_string()).and_then(|d| {
        if d.cfg.head == Head::Score {
            Ok(d)
        } else {
            Err(format!(
                "{} is not a reward model: its config.json names a causal LM, not a *ForSequenceClassification with one label (train one with a `reward_model` stage)",
                model.display()
            ))
        }
    });
    let decoder = match loaded {
        Ok(d) => d,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    let tok = match TextTokenizer::load(model) {
        Ok(t) => t,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    super::score::each_row(input, |line, row| {
        let ids = row_ids(&row, &tok)?;
        let r: Vec<f32> = decoder
            .rewards(&[&ids])
            .and_then(|r| Ok(r.to_vec1()?))
            .map_err(|e| e.to_string())?;
        if json_out {
            outln!(
                "{}",
                json!({"line": line, "tokens": ids.len(), "reward": r[0]})
            );
        } else {
            outln!("{}", r[0]);
        }
        Ok(())
    })
}
