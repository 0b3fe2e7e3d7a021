//! The checked pipeline: stages with fully resolved, typed parameters and their dependencies.

use super::source::Loc;
use super::value::{StageId, Value};
use crate::stages::schema::Kind;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Pipeline {
    /// The pipeline file's stem (`chat_assistant` for chat_assistant.ptl).
    pub name: String,
    pub file: PathBuf,
    pub config: BTreeMap<String, Value>,
    pub track: BTreeMap<String, Value>,
    /// The `store` block: `remote`.
    pub store: BTreeMap<String, Value>,
    pub stages: Vec<Stage>,
    /// The pipeline file's top-level `let` bindings that hold datasets (for `ptl data`).
    pub datasets: BTreeMap<String, Value>,
}

pub struct Stage {
    /// Qualified name: `sft`, or `v1.sft` for a stage a function declared.
    pub name: String,
    pub kind: &'static Kind,
    /// Every field of the kind that has a value, defaults filled in.
    pub params: BTreeMap<String, Value>,
    pub decl: Loc,
    /// Where each field's value was written (absent for defaults): run-time failures point here.
    pub locs: BTreeMap<String, Loc>,
    /// Upstream stages whose outputs this stage reads, sorted, without repeats.
    pub deps: Vec<StageId>,
}

impl Stage {
    /// The processes the stage trains on: its `workers` (a training kind's field), else 1.
    pub fn workers(&self) -> usize {
        match self.params.get("workers") {
            Some(&Value::Int(n)) if n > 1 => n as usize,
            _ => 1,
        }
    }
}

impl Pipeline {
    /// The Ray cluster `config.executor` names, if it names one (unset: stages compute here).
    pub fn ray_executor(&self) -> Option<&super::value::RayCluster> {
        match self.config.get("executor") {
            Some(Value::Ray(cluster)) => Some(cluster),
            _ => None,
        }
    }

    /// The pipeline file's folder: relative paths in it resolve against this.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// The files and folders `stage`'s path fields name (templates, tokenizers), as written and
    /// resolved: their content is an input of the stage.
    pub fn path_params<'a>(
        &'a self,
        stage: &'a Stage,
    ) -> impl Iterator<Item = (&'a str, &'a str, PathBuf)> + 'a {
        stage.params.iter().filter_map(move |(field, v)| match v {
            Value::Str(written) if stage.kind.field(field).is_some_and(|f| f.path) => {
                Some((field.as_str(), written.as_str(), self.dir().join(written)))
            }
            _ => None,
        })
    }

    pub fn edge_count(&self) -> usize {
        self.stages.iter().map(|s| s.deps.len()).sum()
    }

    pub fn stage_id(&self, name: &str) -> Option<StageId> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// A stage's parameters as canonical JSON (sorted keys; stage outputs by name).
    pub fn params_json(&self, id: StageId) -> Json {
        let name = |s: StageId| self.stages[s].name.clone();
        let map: Map<String, Json> = self.stages[id]
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json(&name)))
            .collect();
        Json::Object(map)
    }
}
