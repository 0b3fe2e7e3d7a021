//! Values the checker computes: literals, models, datasets, tuning specs, stage outputs.

use super::types::{Format, Type};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Index of a stage in the checked pipeline.
pub type StageId = usize;
/// Index of a loaded module (a .ptl file).
pub type ModuleId = usize;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
    Record(BTreeMap<String, Value>),
    /// `hf_model("dir")`: a local Hugging Face model directory.
    HfModel(LocalPath),
    /// `jsonl("file", format = ...)`.
    Dataset {
        path: LocalPath,
        format: Format,
    },
    Tuning(Tuning),
    /// A reward function for `grpo`: `exact_match(...)`, `regex_match(...)`, `length_penalty(...)`.
    Reward(Reward),
    /// `ray(address = ...)`: where a run's stages execute (`config.executor`).
    Ray(RayCluster),
    /// `stage.output`, e.g. `sft.model`.
    Output {
        stage: StageId,
        output: String,
        ty: Type,
    },
    /// A stage itself (its outputs are read with `.name`).
    Stage(StageId),
    /// What `stage v1 = f(...)` binds: the stages `f` declared (as `v1.<name>`) and its return value.
    Group {
        prefix: String,
        ret: Box<Value>,
    },
    Module(ModuleId),
    Function {
        module: ModuleId,
        index: usize,
    },
    Builtin(&'static str),
    /// No value: an optional field left out, or a function without `return`.
    None,
    /// The result of an expression that already reported an error; accepted everywhere.
    Error,
}

/// A Ray cluster that runs stages as jobs (docs/engine.md, "Stages on a Ray cluster").
#[derive(Clone, Debug, PartialEq)]
pub struct RayCluster {
    /// Its Jobs API: the dashboard's address, `http://head:8265`.
    pub address: String,
    /// What each stage's job asks the cluster for.
    pub num_cpus: f64,
    pub num_gpus: f64,
    /// Seconds a job may wait for those resources before its stage fails.
    pub pending_timeout: i64,
    /// The command that runs ptl on the workers (unset: this ptl's own path).
    pub ptl: Option<String>,
    /// The Python with Ray on the cluster's nodes, which places a data-parallel stage's workers.
    pub python: String,
}

impl RayCluster {
    pub fn to_json(&self) -> Json {
        json!({"ray": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
               "pending_timeout": self.pending_timeout, "ptl": self.ptl, "python": self.python})
    }
}

/// A reward function over a completion and its row, with its weight in the total reward.
#[derive(Clone, Debug, PartialEq)]
pub struct Reward {
    pub rule: RewardRule,
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RewardRule {
    /// 1 when the completion (trimmed), or the first capture of `extract` in it, equals the row's
    /// `field` (trimmed); else 0.
    ExactMatch {
        field: String,
        extract: Option<String>,
    },
    /// 1 when `pattern` matches somewhere in the completion; else 0.
    RegexMatch { pattern: String },
    /// −(tokens beyond `target`) / `target`: 0 up to `target` completion tokens.
    LengthPenalty { target: i64 },
}

impl Reward {
    /// The builtin's name (what `rewards/<name>/mean` logs).
    pub fn name(&self) -> &'static str {
        match self.rule {
            RewardRule::ExactMatch { .. } => "exact_match",
            RewardRule::RegexMatch { .. } => "regex_match",
            RewardRule::LengthPenalty { .. } => "length_penalty",
        }
    }

    pub fn to_json(&self) -> Json {
        let mut j = match &self.rule {
            RewardRule::ExactMatch { field, extract } => {
                json!({"field": field, "extract": extract})
            }
            RewardRule::RegexMatch { pattern } => json!({"pattern": pattern}),
            RewardRule::LengthPenalty { target } => json!({"target": target}),
        };
        j["reward"] = json!(self.name());
        j["weight"] = json!(self.weight);
        j
    }
}

/// A path as written in the source, and where it points (relative to the file that wrote it).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalPath {
    pub written: String,
    pub resolved: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Tuning {
    Full,
    /// Train only the last `layers` decoder layers and/or the named modules.
    Freeze {
        layers: Option<i64>,
        modules: Vec<String>,
    },
    Lora(Lora),
    /// LoRA over a base quantized to NF4 (shared/reference §8).
    Qlora {
        lora: Lora,
        double_quant: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names, or `["all-linear"]`.
    pub targets: Vec<String>,
    pub rslora: bool,
}

impl Tuning {
    pub fn lora(&self) -> Option<&Lora> {
        match self {
            Tuning::Lora(l) | Tuning::Qlora { lora: l, .. } => Some(l),
            _ => None,
        }
    }
}

impl Value {
    /// The number, if the value is an int or a float.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The text, if the value is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The strings of a list (its other items are skipped); nothing for a value that is not a list.
    pub fn strings(&self) -> Vec<&str> {
        match self {
            Value::List(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        }
    }

    /// A short description of the value's type, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Bool(_) => "bool".into(),
            Value::Str(_) => "string".into(),
            Value::List(_) => "list".into(),
            Value::Record(_) => "record".into(),
            Value::HfModel(_) => "model".into(),
            Value::Dataset { format, .. } => format!("dataset ({})", format.name()),
            Value::Tuning(_) => "tuning".into(),
            Value::Reward(_) => "reward".into(),
            Value::Ray(_) => "executor".into(),
            Value::Output { ty, .. } => ty.to_string(),
            Value::Stage(_) => "stage".into(),
            Value::Group { .. } => "group of stages".into(),
            Value::Module(_) => "module".into(),
            Value::Function { .. } | Value::Builtin(_) => "function".into(),
            Value::None => "nothing".into(),
            Value::Error => "error".into(),
        }
    }

    /// The description with its article: "an int", "a model".
    pub fn a_describe(&self) -> String {
        let d = self.describe();
        let article = if d.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {d}")
    }

    /// How much work copying this value costs, counted up to `cap` (strings by 16 bytes).
    pub fn weight(&self, cap: usize) -> usize {
        match self {
            Value::Str(s) => 1 + s.len() / 16,
            Value::List(items) => {
                let mut w = 1;
                for i in items {
                    w += i.weight(cap - w.min(cap));
                    if w >= cap {
                        return cap;
                    }
                }
                w
            }
            Value::Record(fields) => {
                let mut w = 1;
                for v in fields.values() {
                    w += v.weight(cap - w.min(cap));
                    if w >= cap {
                        return cap;
                    }
                }
                w
            }
            Value::Group { ret, .. } => 1 + ret.weight(cap),
            _ => 1,
        }
    }

    /// Every stage this value reads an output of.
    pub fn stage_refs(&self, out: &mut Vec<StageId>) {
        match self {
            Value::Output { stage, .. } => out.push(*stage),
            Value::List(items) => items.iter().for_each(|v| v.stage_refs(out)),
            Value::Record(fields) => fields.values().for_each(|v| v.stage_refs(out)),
            _ => {}
        }
    }

    /// Canonical JSON: what cache keys, `ptl plan --format json` and tracking read.
    /// Paths appear as written; stage outputs by stage name.
    pub fn to_json(&self, stage_name: &dyn Fn(StageId) -> String) -> Json {
        match self {
            Value::Int(i) => json!(i),
            Value::Float(f) => json!(f),
            Value::Bool(b) => json!(b),
            Value::Str(s) => json!(s),
            Value::List(items) => {
                Json::Array(items.iter().map(|v| v.to_json(stage_name)).collect())
            }
            Value::Record(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json(stage_name)))
                    .collect(),
            ),
            Value::HfModel(p) => json!({"hf_model": p.written}),
            Value::Dataset { path, format } => {
                json!({"jsonl": path.written, "format": format.name()})
            }
            Value::Tuning(t) => t.to_json(),
            Value::Reward(r) => r.to_json(),
            Value::Ray(r) => r.to_json(),
            Value::Output { stage, output, .. } => {
                json!({"stage": stage_name(*stage), "output": output})
            }
            Value::None => Json::Null,
            other => json!(other.describe()),
        }
    }
}

impl Tuning {
    pub fn to_json(&self) -> Json {
        let lora = |l: &Lora| json!({"rank": l.rank, "alpha": l.alpha, "dropout": l.dropout, "targets": l.targets, "rslora": l.rslora});
        match self {
            Tuning::Full => json!({"mode": "full"}),
            Tuning::Freeze { layers, modules } => {
                json!({"mode": "freeze", "layers": layers, "modules": modules})
            }
            Tuning::Lora(l) => {
                let mut j = lora(l);
                j["mode"] = json!("lora");
                j
            }
            Tuning::Qlora {
                lora: l,
                double_quant,
            } => {
                let mut j = lora(l);
                j["mode"] = json!("qlora");
                j["double_quant"] = json!(double_quant);
                j
            }
        }
    }
}
