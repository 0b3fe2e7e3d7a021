//! Whether a value fits a type (ints widen to floats; datasets must be in an accepted format).

use super::Checker;
use crate::lang::diag::{did_you_mean, Diag};
use crate::lang::source::Loc;
use crate::lang::types::{Format, Type};
use crate::lang::value::Value;

/// Why a value does not fit.
struct Mismatch {
    found: String,
    help: String,
}

fn conform(v: Value, ty: &Type) -> Result<Value, Mismatch> {
    let fail = |v: &Value, help: &str| Mismatch {
        found: v.describe(),
        help: help.to_string(),
    };
    match (ty, v) {
        (_, Value::Error) => Ok(Value::Error),
        // `stage v = f(...)` holds f's stages and its return value: as a value, it is the latter.
        (_, Value::Group { ret, .. }) if !matches!(*ret, Value::None) => conform(*ret, ty),
        (Type::Int, v @ Value::Int(_)) => Ok(v),
        (Type::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
        (Type::Float, v @ Value::Float(_)) => Ok(v),
        (Type::Bool, v @ Value::Bool(_)) => Ok(v),
        (Type::Str, v @ Value::Str(_)) => Ok(v),
        (Type::Enum(options), Value::Str(s)) => {
            if options.contains(&s.as_str()) {
                Ok(Value::Str(s))
            } else {
                let help = did_you_mean(&s, options.iter().copied())
                    .unwrap_or_else(|| format!("choose one of: {}", options.join(", ")));
                Err(Mismatch {
                    found: format!("\"{s}\""),
                    help,
                })
            }
        }
        (Type::List(inner), Value::List(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match conform(item, inner) {
                    Ok(v) => out.push(v),
                    Err(m) => {
                        return Err(Mismatch {
                            found: format!("a list whose item {i} is {}", m.found),
                            help: m.help,
                        })
                    }
                }
            }
            Ok(Value::List(out))
        }
        (Type::Record, v @ Value::Record(_)) => Ok(v),
        (Type::Model, v @ Value::HfModel(_)) => Ok(v),
        (Type::Model | Type::RewardModel | Type::Metrics, Value::Output { stage, output, ty: found }) => {
            if &found == ty {
                Ok(Value::Output { stage, output, ty: found })
            } else {
                let help = match (ty, &found) {
                    (Type::Model, Type::RewardModel) => "a reward model scores text; it cannot be trained or generate",
                    (Type::RewardModel, _) => "a reward model is the `model` output of a `reward_model` stage",
                    _ => "use an output of the right type",
                };
                Err(Mismatch {
                    found: found.to_string(),
                    help: help.to_string(),
                })
            }
        }
        (Type::RewardModel, v @ Value::HfModel(_)) => Err(fail(
            &v,
            "a reward model is the `model` output of a `reward_model` stage, e.g. `rm.model`",
        )),
        (Type::Dataset(formats), Value::Dataset { path, format }) => {
            if formats.is_empty() || format == Format::Auto || formats.contains(&format) {
                Ok(Value::Dataset { path, format })
            } else {
                let names: Vec<&str> = formats.iter().map(|f| f.name()).collect();
                Err(Mismatch {
                    found: format!("dataset ({})", format.name()),
                    help: format!(
                        "this field takes rows in format {}: `jsonl(\"...\", format = \"{}\")`",
                        names.join(" or "),
                        names[0]
                    ),
                })
            }
        }
        (Type::Tuning, v @ Value::Tuning(_)) => Ok(v),
        (Type::Reward, v @ Value::Reward(_)) => Ok(v),
        (Type::Executor, v @ Value::Ray(_)) => Ok(v),
        (_, v @ Value::Stage(_)) => Err(fail(
            &v,
            "a stage is not a value: use one of its outputs, such as `.model` or `.metrics`",
        )),
        (_, v @ Value::Group { .. }) => Err(fail(
            &v,
            "this name holds the stages a function declared: use one of them, or an output of what it returned",
        )),
        (_, v @ Value::Dataset { .. }) => Err(fail(&v, "datasets go in `data` fields")),
        (Type::Dataset(_), v) => Err(fail(&v, "datasets are made with `jsonl(\"file.jsonl\", format = ...)`")),
        (Type::Model, v) => Err(fail(&v, "a model is `hf_model(\"dir\")` or a stage's output such as `sft.model`")),
        (Type::Tuning, v) => Err(fail(&v, "tuning is `full`, `freeze(...)`, `lora(...)` or `qlora(...)`")),
        (Type::Reward, v) => Err(fail(&v, "a reward is `exact_match(field = \"answer\")`, `regex_match(pattern = \"...\")` or `length_penalty(target = 64)`")),
        (Type::Executor, v) => Err(fail(&v, "an executor is `ray(address = \"http://head:8265\")`; leave `executor` unset to run here")),
        (Type::Int, v @ Value::Float(_)) => Err(fail(&v, "write a whole number, without a decimal point")),
        (Type::Int | Type::Float, v) => Err(fail(&v, "write a number, such as `3` or `2e-4`")),
        (Type::Bool, v) => Err(fail(&v, "write `true` or `false`")),
        (Type::Str | Type::Enum(_), v) => Err(fail(&v, "write text in double quotes")),
        (Type::List(_), v) => Err(fail(&v, "write a list in brackets: `[a, b]`")),
        (_, v) => Err(fail(&v, "`ptl doc KIND` shows the type each field takes")),
    }
}

impl Checker {
    /// Checks `v` against `ty`; on a mismatch reports `ptl::type_mismatch` at `loc` and yields `Value::Error`.
    pub(super) fn expect_type(&mut self, v: Value, ty: &Type, loc: Loc, what: &str) -> Value {
        let stage = match &v {
            Value::Stage(id) => Some(*id),
            _ => None,
        };
        match conform(v, ty) {
            Ok(v) => v,
            Err(mut m) => {
                // A stage that took a builtin's name (`stage full = ...` then `tuning = full`).
                if let Some(id) = stage {
                    let name = self.stages[id].name.clone();
                    let builtin_fits =
                        super::builtins::value(&name).is_some_and(|b| conform(b, ty).is_ok());
                    if builtin_fits {
                        let decl = self.stages[id].decl;
                        let (line, _) = self.sources.line_col(decl.file, decl.span.start);
                        m.help = format!(
                            "`{name}` here is the stage declared on line {line}, which hides the builtin `{name}`: rename the stage"
                        );
                    }
                }
                self.error(
                    Diag::error(
                        "ptl::type_mismatch",
                        format!("{what} expects {ty}, found {}", m.found),
                    )
                    .label(loc, format!("expected {ty}"))
                    .help(m.help),
                );
                Value::Error
            }
        }
    }
}
