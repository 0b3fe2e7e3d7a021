//! MLflow names and values: a stage's parameters flattened to strings, and keys made to fit the server.

use serde_json::Value;
use std::collections::BTreeSet;

/// MLflow's limit on a param value's length, in characters.
pub(crate) const MAX_PARAM_VALUE: usize = 6000;
/// MLflow's limit on a param, metric or tag key's length, in characters.
const MAX_KEY: usize = 250;
/// Records nested deeper than this are logged as one JSON text.
const MAX_DEPTH: usize = 16;

/// The stage's resolved parameters as MLflow params: records flatten to dotted keys (`tuning.rank`),
/// lists and deeper values become compact JSON, strings are logged bare. Keys are made valid
/// (see [`key`]), values are cut to [`MAX_PARAM_VALUE`] characters, and a key that repeats after
/// that keeps its first value.
pub(crate) fn flatten(params: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match params {
        Value::Object(_) => walk("", params, 0, &mut out),
        Value::Null => {}
        other => out.push(("params".to_string(), text(other))),
    }
    let mut seen = BTreeSet::new();
    out.into_iter()
        .filter_map(|(k, v)| {
            let k = key(&k)?;
            seen.insert(k.clone())
                .then(|| (k, truncate(&v, MAX_PARAM_VALUE)))
        })
        .collect()
}

fn walk(prefix: &str, v: &Value, depth: usize, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if depth < MAX_DEPTH && !map.is_empty() => {
            for (k, child) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&name, child, depth + 1, out);
            }
        }
        _ => out.push((prefix.to_string(), text(v))),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A name MLflow accepts as a param or metric key: characters other than letters, digits, `_ - . : /`
/// and space become `_`; empty, `.` and `..` path segments are dropped (MLflow refuses names that
/// would resolve to another path); cut to 250 characters. `None` when nothing is left.
pub(crate) fn key(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let joined = cleaned
        .split('/')
        .filter(|s| !matches!(s.trim(), "" | "." | ".."))
        .collect::<Vec<_>>()
        .join("/");
    let joined = truncate(joined.trim(), MAX_KEY);
    let joined = joined.trim_end_matches('/').trim().to_string();
    (!joined.is_empty()).then_some(joined)
}

/// The first `max` characters of `s`.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}
