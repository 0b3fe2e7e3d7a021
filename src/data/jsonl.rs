//! JSONL datasets: each line one JSON object in a known format; malformed rows are reported as file:line.

use crate::lang::types::Format;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// At most this many bad rows are listed.
const MAX_PROBLEMS: usize = 10;

/// Which format a row's keys say it is in.
pub fn detect(row: &serde_json::Map<String, serde_json::Value>) -> Option<Format> {
    let has = |k: &str| row.contains_key(k);
    if has("conversations") {
        Some(Format::Sharegpt)
    } else if has("messages") {
        Some(Format::Messages)
    } else if has("chosen") && has("rejected") {
        Some(Format::Preference)
    } else if has("completion") && has("label") {
        Some(Format::Kto)
    } else if has("instruction") && has("output") {
        Some(Format::Alpaca)
    } else if has("text") {
        Some(Format::Text)
    } else if has("prompt") && !has("completion") {
        Some(Format::Prompt)
    } else {
        None
    }
}

/// Why a row is not JSON, placed in the file: `(column, reason)`. serde_json counts lines and columns
/// within the row (a row cut short ends "at line 2 column 0", past its newline); the file's line is the
/// caller's, so only the column is kept, and the reason loses serde_json's own position.
pub fn json_error(e: &serde_json::Error, row: &str) -> (usize, String) {
    let full = e.to_string();
    let reason = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(r, _)| r)
        .to_string();
    let row = row.trim_end_matches(['\n', '\r']);
    let column = if e.line() > 1 || e.column() == 0 {
        row.chars().count() + 1
    } else {
        e.column()
    };
    (column, reason)
}

/// `file:line:column: not JSON: reason`.
pub fn not_json(
    name: &impl std::fmt::Display,
    line: usize,
    e: &serde_json::Error,
    row: &str,
) -> String {
    let (column, reason) = json_error(e, row);
    format!("{name}:{line}:{column}: not JSON: {reason}")
}

/// The keys a row of `format` must have.
pub fn required(format: Format) -> &'static [&'static str] {
    match format {
        Format::Alpaca => &["instruction", "output"],
        Format::Sharegpt => &["conversations"],
        Format::Messages => &["messages"],
        Format::Text => &["text"],
        Format::Preference => &["chosen", "rejected"],
        Format::Kto => &["prompt", "completion", "label"],
        Format::Prompt => &["prompt"],
        Format::Auto => &[],
    }
}

/// Reads the whole file (streaming) and checks every row; returns the format and the row count.
pub fn validate(path: &Path, format: Format) -> Result<(Format, usize), Vec<String>> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| vec![format!("{name}: cannot read: {e}")])?;
    let mut format = format;
    let mut rows = 0;
    let mut problems = Vec::new();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(vec![format!("{name}: cannot read: {e}")]),
        }
        line_no += 1;
        let mut push = |p: String| {
            if problems.len() < MAX_PROBLEMS {
                problems.push(p);
            }
        };
        let Ok(text) = std::str::from_utf8(&buf) else {
            push(format!("{name}:{line_no}: not valid UTF-8"));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let row: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                push(format!("{name}:{line_no}: a row must be a JSON object"));
                continue;
            }
            Err(e) => {
                push(not_json(&name, line_no, &e, text));
                continue;
            }
        };
        rows += 1;
        if format == Format::Auto {
            match detect(&row) {
                Some(f) => format = f,
                None => {
                    let keys: Vec<&str> = row.keys().map(String::as_str).collect();
                    push(format!(
                        "{name}:{line_no}: cannot tell the format from the keys {keys:?}"
                    ));
                    continue;
                }
            }
        }
        let missing: Vec<&str> = required(format)
            .iter()
            .copied()
            .filter(|k| !row.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            push(format!(
                "{name}:{line_no}: a {} row needs {}",
                format.name(),
                missing.join(", ")
            ));
        }
    }
    if rows == 0 && problems.is_empty() {
        problems.push(format!("{name}: the dataset is empty"));
    }
    if problems.is_empty() {
        Ok((format, rows))
    } else {
        Err(problems)
    }
}
