//! Where a stage's inputs are on disk: model folders and dataset files as written, upstream outputs
//! in the store entries of their stages' keys.

use crate::lang::value::Value;
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The local path of an upstream output: `out/<name>` or `out/<name>.<ext>`.
pub fn output_path(store: &Store, key: &str, output: &str) -> PathBuf {
    let out = store.entry_dir(key).join("out");
    let direct = out.join(output);
    if direct.exists() {
        return direct;
    }
    std::fs::read_dir(&out)
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.file_stem().is_some_and(|s| s == output) && p.extension().is_some())
        })
        .unwrap_or(direct)
}

fn collect_paths(v: &Value, store: &Store, keys: &[Option<String>], out: &mut Vec<PathBuf>) {
    match v {
        Value::HfModel(p) => out.push(p.resolved.clone()),
        Value::Dataset { path, .. } => out.push(path.resolved.clone()),
        Value::Output { stage, output, .. } => {
            if let Some(k) = &keys[*stage] {
                out.push(output_path(store, k, output));
            }
        }
        Value::List(items) => items
            .iter()
            .for_each(|i| collect_paths(i, store, keys, out)),
        Value::Record(fields) => fields
            .values()
            .for_each(|i| collect_paths(i, store, keys, out)),
        _ => {}
    }
}

/// Field → the local paths its value points at; `keys[s]`: stage s's key when its outputs are in the
/// store (an upstream output without one is left out).
pub fn stage_inputs(
    params: &BTreeMap<String, Value>,
    store: &Store,
    keys: &[Option<String>],
) -> BTreeMap<String, Vec<PathBuf>> {
    params
        .iter()
        .map(|(f, v)| {
            let mut paths = Vec::new();
            collect_paths(v, store, keys, &mut paths);
            (f.clone(), paths)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}
