//! Dataset rows in the formats users bring (shared/reference §10), turned into examples: a
//! conversation, a text, a preference pair or an unpaired (KTO) completion.

use super::jsonl::detect;
use crate::lang::types::Format;
use serde_json::{json, Map, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// A prompt or a completion: plain text, or chat messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Side {
    Text(String),
    Messages(Vec<Json>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    /// alpaca, sharegpt, messages: rendered with the chat template.
    Chat(Vec<Json>),
    Text(String),
    Preference {
        prompt: Side,
        chosen: Side,
        rejected: Side,
        /// How much better chosen is than rejected (the reward model's optional `margin` column).
        margin: Option<f64>,
    },
    Kto {
        prompt: Side,
        completion: Side,
        label: bool,
    },
    /// A prompt to answer (`grpo`); the row's other fields are read where they are needed.
    Prompt(Side),
}

/// One row read from a file: its line number and what it holds.
pub struct Row {
    pub line: usize,
    pub example: Example,
}

fn string(row: &Map<String, Json>, key: &str) -> Result<String, String> {
    match row.get(key) {
        Some(Json::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
        None => Err(format!("missing `{key}`")),
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// Checks chat messages: objects with a known `role` and a string (or list, or null) `content`.
fn messages(v: &Json, key: &str) -> Result<Vec<Json>, String> {
    let Json::Array(list) = v else {
        return Err(format!(
            "`{key}` must be a list of messages, found {}",
            kind(v)
        ));
    };
    if list.is_empty() {
        return Err(format!("`{key}` is empty"));
    }
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Json::as_str);
        match role {
            Some("system" | "user" | "assistant" | "tool") => {}
            Some(r) => {
                return Err(format!(
                    "message {i} of `{key}` has an unknown role \"{r}\""
                ))
            }
            None => return Err(format!("message {i} of `{key}` has no `role`")),
        }
        match m.get("content") {
            Some(Json::String(_) | Json::Array(_) | Json::Null) => {}
            None if m.get("tool_calls").is_some() => {}
            Some(other) => {
                return Err(format!(
                    "message {i} of `{key}`: `content` is {}",
                    kind(other)
                ))
            }
            None => return Err(format!("message {i} of `{key}` has no `content`")),
        }
    }
    Ok(list.clone())
}

fn side(row: &Map<String, Json>, key: &str) -> Result<Side, String> {
    match row.get(key) {
        Some(Json::String(s)) => Ok(Side::Text(s.clone())),
        Some(v @ Json::Array(_)) => Ok(Side::Messages(messages(v, key)?)),
        Some(other) => Err(format!(
            "`{key}` must be a string or a list of messages, found {}",
            kind(other)
        )),
        None => Err(format!("missing `{key}`")),
    }
}

fn sharegpt(row: &Map<String, Json>) -> Result<Vec<Json>, String> {
    let Some(Json::Array(turns)) = row.get("conversations") else {
        return Err("`conversations` must be a list".into());
    };
    let mut out = Vec::new();
    if let Ok(system) = string(row, "system") {
        out.push(json!({"role": "system", "content": system}));
    }
    for (i, t) in turns.iter().enumerate() {
        let from = t
            .get("from")
            .and_then(Json::as_str)
            .ok_or(format!("turn {i} has no `from`"))?;
        let value = t
            .get("value")
            .and_then(Json::as_str)
            .ok_or(format!("turn {i} has no string `value`"))?;
        let role = match from {
            "human" | "user" => "user",
            "gpt" | "assistant" | "function_call" => "assistant",
            "system" => "system",
            "observation" | "tool" => "tool",
            other => return Err(format!("turn {i} comes from \"{other}\" (expected human, gpt, system, function_call or observation)")),
        };
        out.push(json!({"role": role, "content": value}));
    }
    if out.is_empty() {
        return Err("`conversations` is empty".into());
    }
    Ok(out)
}

fn alpaca(row: &Map<String, Json>) -> Result<Vec<Json>, String> {
    let mut out = Vec::new();
    if let Ok(system) = string(row, "system") {
        out.push(json!({"role": "system", "content": system}));
    }
    if let Some(history) = row.get("history") {
        let Json::Array(pairs) = history else {
            return Err("`history` must be a list of [question, answer] pairs".into());
        };
        for (i, p) in pairs.iter().enumerate() {
            match p.as_array().map(Vec::as_slice) {
                Some([Json::String(q), Json::String(a)]) => {
                    out.push(json!({"role": "user", "content": q}));
                    out.push(json!({"role": "assistant", "content": a}));
                }
                _ => {
                    return Err(format!(
                        "`history` item {i} is not a [question, answer] pair of strings"
                    ))
                }
            }
        }
    }
    let instruction = string(row, "instruction")?;
    let user = match row.get("input").and_then(Json::as_str) {
        // LLaMA-Factory joins instruction and input with a newline.
        Some(input) if !input.is_empty() => format!("{instruction}\n{input}"),
        _ => instruction,
    };
    out.push(json!({"role": "user", "content": user}));
    out.push(json!({"role": "assistant", "content": string(row, "output")?}));
    Ok(out)
}

/// The example a row holds, read in `format` (`Auto`: from the row's keys).
pub fn example(row: &Map<String, Json>, format: Format) -> Result<Example, String> {
    let format = match format {
        Format::Auto => detect(row).ok_or("cannot tell the format from the row's keys")?,
        f => f,
    };
    Ok(match format {
        Format::Alpaca => Example::Chat(alpaca(row)?),
        Format::Sharegpt => Example::Chat(sharegpt(row)?),
        Format::Messages => Example::Chat(messages(
            row.get("messages").unwrap_or(&Json::Null),
            "messages",
        )?),
        Format::Text => Example::Text(string(row, "text")?),
        Format::Preference => Example::Preference {
            prompt: side(row, "prompt")?,
            chosen: side(row, "chosen")?,
            rejected: side(row, "rejected")?,
            margin: match row.get("margin") {
                None | Some(Json::Null) => None,
                Some(m) => Some(m.as_f64().ok_or("`margin` must be a number")?),
            },
        },
        Format::Kto => Example::Kto {
            prompt: side(row, "prompt")?,
            completion: side(row, "completion")?,
            label: match row.get("label") {
                Some(Json::Bool(b)) => *b,
                _ => return Err("`label` must be true or false".into()),
            },
        },
        Format::Prompt => Example::Prompt(side(row, "prompt")?),
        Format::Auto => unreachable!("resolved above"),
    })
}

/// Reads every row of a JSONL file; bad rows become `file:line: problem` lines, the rest examples.
pub fn read(path: &Path, format: Format) -> Result<(Vec<Row>, Vec<String>), String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut format = format;
    let mut buf = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => line += 1,
            Err(e) => return Err(format!("{name}: cannot read: {e}")),
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            problems.push(format!("{name}:{line}: not valid UTF-8"));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(o)) => o,
            Ok(other) => {
                problems.push(format!(
                    "{name}:{line}: a row must be a JSON object, found {}",
                    kind(&other)
                ));
                continue;
            }
            Err(e) => {
                problems.push(super::jsonl::not_json(&name, line, &e, text));
                continue;
            }
        };
        if format == Format::Auto {
            if let Some(f) = detect(&row) {
                format = f;
            }
        }
        match example(&row, format) {
            Ok(example) => rows.push(Row { line, example }),
            Err(e) => problems.push(format!("{name}:{line}: {e}")),
        }
    }
    Ok((rows, problems))
}
