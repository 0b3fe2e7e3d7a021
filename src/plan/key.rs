//! Stage keys: blake3 over the kind, its implementation version, the canonical parameters with every
//! input replaced by its content hash (files, folders, upstream outputs), and device / dtype. Never
//! paths, timestamps or the environment.

use crate::lang::pipeline::Pipeline;
use crate::lang::value::{StageId, Value};
use crate::store::hash::HashCache;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;

/// A computed key and what it was computed from.
#[derive(Clone, Debug)]
pub struct StageKey {
    pub key: String,
    /// The hashed document (stored in the entry's manifest).
    pub key_json: Json,
    /// Input label (a path as written, or `stage.output`) → content hash.
    pub inputs: BTreeMap<String, String>,
}

pub enum KeyError {
    /// An upstream stage's output is not known yet (it has to run first).
    Upstream(StageId),
    /// An input could not be read.
    Input(String, std::io::Error),
}

struct Resolve<'a> {
    cache: &'a mut HashCache,
    upstream: &'a dyn Fn(StageId, &str) -> Option<String>,
    names: &'a dyn Fn(StageId) -> String,
    inputs: BTreeMap<String, String>,
}

impl Resolve<'_> {
    fn value(&mut self, v: &Value) -> Result<Json, KeyError> {
        Ok(match v {
            Value::HfModel(p) => {
                let h = self
                    .cache
                    .dir(&p.resolved)
                    .map_err(|e| KeyError::Input(p.written.clone(), e))?;
                self.inputs.insert(p.written.clone(), h.clone());
                json!({ "hf_model": h })
            }
            Value::Dataset { path, format } => {
                let h = self
                    .cache
                    .file(&path.resolved)
                    .map_err(|e| KeyError::Input(path.written.clone(), e))?;
                self.inputs.insert(path.written.clone(), h.clone());
                json!({ "jsonl": h, "format": format.name() })
            }
            Value::Output { stage, output, .. } => {
                let h = (self.upstream)(*stage, output).ok_or(KeyError::Upstream(*stage))?;
                self.inputs
                    .insert(format!("{}.{output}", (self.names)(*stage)), h.clone());
                json!({ "output": h })
            }
            Value::List(items) => Json::Array(
                items
                    .iter()
                    .map(|i| self.value(i))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Record(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.value(v)?)))
                    .collect::<Result<Map<_, _>, KeyError>>()?,
            ),
            other => other.to_json(self.names),
        })
    }

    /// A file or folder a string field names: its content hash.
    fn path(&mut self, written: &str, resolved: &std::path::Path) -> Result<Json, KeyError> {
        let h = if resolved.is_dir() {
            self.cache.dir(resolved)
        } else {
            self.cache.file(resolved)
        }
        .map_err(|e| KeyError::Input(written.to_string(), e))?;
        self.inputs.insert(written.to_string(), h.clone());
        Ok(json!({ "path": h }))
    }
}

/// The key of stage `id`, given the hashes of upstream outputs known so far.
pub fn stage_key(
    p: &Pipeline,
    id: StageId,
    compute: &super::compute::Compute,
    cache: &mut HashCache,
    upstream: &dyn Fn(StageId, &str) -> Option<String>,
) -> Result<StageKey, KeyError> {
    let names = |s: StageId| p.stages[s].name.clone();
    let stage = &p.stages[id];
    let mut r = Resolve {
        cache,
        upstream,
        names: &names,
        inputs: BTreeMap::new(),
    };
    let mut params = Map::new();
    for (field, value) in &stage.params {
        // Where a stage computes enters the key as the device class and dtype it resolves to.
        if super::compute::takes_compute(stage.kind) && matches!(field.as_str(), "device" | "dtype")
        {
            continue;
        }
        params.insert(field.clone(), r.value(value)?);
    }
    for (field, written, resolved) in p.path_params(stage) {
        params.insert(field.to_string(), r.path(written, &resolved)?);
    }
    let key_json = json!({
        "ptl_key": 1,
        "kind": stage.kind.name,
        "version": stage.kind.version,
        "params": params,
        "device": compute.device_class(),
        "dtype": compute.dtype_name(),
    });
    let bytes = serde_json::to_vec(&key_json).unwrap_or_default();
    Ok(StageKey {
        key: blake3::hash(&bytes).to_hex().to_string(),
        key_json,
        inputs: r.inputs,
    })
}
