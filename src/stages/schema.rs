//! The schema of a stage kind: its fields (type, default, doc), its outputs and its semantic rules.
//! The checker, `ptl doc` and docs/stages.md all read these.

use crate::lang::diag::Diag;
use crate::lang::source::Loc;
use crate::lang::types::Type;
use crate::lang::value::{StageId, Value};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub enum Default {
    /// The field must be given.
    Required,
    /// Left out, the field has no value.
    Optional,
    Value(Value),
    /// Taken from the `config` block's field of this name.
    Config(&'static str),
}

#[derive(Clone, Debug)]
pub struct FieldSchema {
    pub name: &'static str,
    pub ty: Type,
    pub default: Default,
    pub doc: &'static str,
    /// A string naming a file or folder (relative to the pipeline file) whose content is an input:
    /// it is hashed into the stage's key like a dataset.
    pub path: bool,
}

#[derive(Clone, Debug)]
pub struct OutputSchema {
    pub name: &'static str,
    pub ty: Type,
    pub doc: &'static str,
}

/// What a semantic rule sees of one stage.
pub struct StageView<'a> {
    pub name: &'a str,
    pub kind: &'a Kind,
    pub decl: Loc,
    pub params: &'a BTreeMap<String, Value>,
    /// Where each field's value was written (absent for defaults).
    pub locs: &'a BTreeMap<String, Loc>,
    /// The tuning of another stage, for rules that look upstream (merge).
    pub upstream_tuning: &'a dyn Fn(StageId) -> Option<Value>,
    /// The family and dimensions of a model value, where the checker knows them (an `hf_model`
    /// folder's config.json, or the model a training or merge stage starts from).
    pub model_shape: &'a dyn Fn(&Value) -> Option<crate::model::config::Shape>,
}

impl StageView<'_> {
    pub fn get(&self, field: &str) -> &Value {
        self.params.get(field).unwrap_or(&Value::None)
    }

    /// The field's location, or the stage's name when the value is a default.
    pub fn loc(&self, field: &str) -> Loc {
        self.locs.get(field).copied().unwrap_or(self.decl)
    }

    pub fn num(&self, field: &str) -> Option<f64> {
        self.get(field).as_number()
    }

    pub fn str(&self, field: &str) -> Option<&str> {
        self.get(field).as_str()
    }

    pub fn is_set(&self, field: &str) -> bool {
        !matches!(self.get(field), Value::None)
    }
}

pub type Rule = fn(&StageView, &mut Vec<Diag>);

/// How a stage kind runs: writes its outputs into the context's output folder.
pub type RunFn = fn(&mut crate::run::context::RunContext) -> crate::error::Result<()>;

/// What `ptl plan` shows a kind of a stage that will run: its parameters, the local paths of its
/// inputs (upstream outputs only when they are in the store) and the store.
pub struct PlanView<'a> {
    pub params: &'a BTreeMap<String, Value>,
    pub inputs: &'a BTreeMap<String, Vec<std::path::PathBuf>>,
    pub store: &'a crate::store::Store,
}

/// A line `ptl plan` adds to a stage that will run (work it will reuse from the store).
pub type PlanNoteFn = fn(&PlanView) -> Option<String>;

/// What a kind that writes outside the store (`export`) checks of a stage whose entry is in the
/// store: its parameters, the pipeline file's folder and the entry's outputs.
pub struct OutsideView<'a> {
    pub params: &'a BTreeMap<String, Value>,
    pub base_dir: &'a std::path::Path,
    pub out: &'a std::path::Path,
}

/// Why a stage in the store must run again all the same (what it wrote outside the store is gone
/// or changed), if it must.
pub type OutsideFn = fn(&OutsideView) -> Option<String>;

pub struct Kind {
    pub name: &'static str,
    /// Bumped when the kind's implementation changes what it produces: part of every key.
    pub version: u32,
    /// `None` for kinds whose execution is not built yet: planned, never run.
    pub run: Option<RunFn>,
    /// What `ptl plan` says about the stage beyond why it runs.
    pub plan_note: Option<PlanNoteFn>,
    /// For kinds that also write outside the store: whether that copy is still there.
    pub outside: Option<OutsideFn>,
    /// One line for `ptl doc`.
    pub summary: &'static str,
    pub fields: Vec<FieldSchema>,
    pub outputs: Vec<OutputSchema>,
    /// Fields users coming from other tools write that this kind refuses, with the reason.
    pub refused: Vec<(&'static str, &'static str)>,
    pub rules: Vec<Rule>,
}

impl Kind {
    pub fn field(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&OutputSchema> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

pub fn field(name: &'static str, ty: Type, default: Default, doc: &'static str) -> FieldSchema {
    FieldSchema {
        name,
        ty,
        default,
        doc,
        path: false,
    }
}

/// A string field naming a file or folder whose content the stage reads (see [`FieldSchema::path`]).
pub fn path(name: &'static str, default: Default, doc: &'static str) -> FieldSchema {
    FieldSchema {
        path: true,
        ..field(name, Type::Str, default, doc)
    }
}

pub fn required(name: &'static str, ty: Type, doc: &'static str) -> FieldSchema {
    field(name, ty, Default::Required, doc)
}

pub fn optional(name: &'static str, ty: Type, doc: &'static str) -> FieldSchema {
    field(name, ty, Default::Optional, doc)
}

pub fn float(name: &'static str, v: f64, doc: &'static str) -> FieldSchema {
    field(name, Type::Float, Default::Value(Value::Float(v)), doc)
}

pub fn int(name: &'static str, v: i64, doc: &'static str) -> FieldSchema {
    field(name, Type::Int, Default::Value(Value::Int(v)), doc)
}

pub fn boolean(name: &'static str, v: bool, doc: &'static str) -> FieldSchema {
    field(name, Type::Bool, Default::Value(Value::Bool(v)), doc)
}

pub fn choice(
    name: &'static str,
    options: &'static [&'static str],
    v: &'static str,
    doc: &'static str,
) -> FieldSchema {
    field(
        name,
        Type::Enum(options),
        Default::Value(Value::Str(v.into())),
        doc,
    )
}

pub fn output(name: &'static str, ty: Type, doc: &'static str) -> OutputSchema {
    OutputSchema { name, ty, doc }
}
