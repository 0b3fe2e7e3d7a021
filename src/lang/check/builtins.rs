//! Builtin constructors: `hf_model`, `jsonl`, tuning specs (`full`, `freeze`, `lora`, `qlora`), reward
//! functions (`exact_match`, `regex_match`, `length_penalty`), the `ray` executor and `env`.

use super::{Checker, Frame};
use crate::lang::ast::Arg;
use crate::lang::diag::Diag;
use crate::lang::source::{Loc, Span};
use crate::lang::types::{Format, Type};
use crate::lang::value::{LocalPath, Lora, RayCluster, Tuning, Value};

pub const NAMES: &[&str] = &[
    "env",
    "exact_match",
    "freeze",
    "full",
    "hf_model",
    "jsonl",
    "length_penalty",
    "lora",
    "qlora",
    "ray",
    "regex_match",
];

const FORMAT_NAMES: &[&str] = &[
    "auto",
    "alpaca",
    "sharegpt",
    "messages",
    "text",
    "preference",
    "kto",
    "prompt",
];

/// The value a builtin's bare name stands for (`full` is a tuning; the others are functions).
pub fn value(name: &str) -> Option<Value> {
    match name {
        "full" => Some(Value::Tuning(Tuning::Full)),
        _ => NAMES
            .iter()
            .find(|n| **n == name)
            .map(|n| Value::Builtin(n)),
    }
}

/// One parameter of a builtin: name, type, default (`None`: required).
struct P(&'static str, Type, Option<Value>);

fn signature(name: &str, params: &[P]) -> String {
    let list: Vec<String> = params
        .iter()
        .map(|P(n, _, d)| {
            if d.is_some() {
                format!("{n} = ...")
            } else {
                n.to_string()
            }
        })
        .collect();
    format!("{name}({})", list.join(", "))
}

fn lora_params(extra: Vec<P>) -> Vec<P> {
    let mut p = vec![
        P("rank", Type::Int, Some(Value::Int(8))),
        P("alpha", Type::Float, Some(Value::None)),
        P("dropout", Type::Float, Some(Value::Float(0.0))),
        P(
            "targets",
            Type::list(Type::Str),
            Some(Value::List(vec![Value::Str("all-linear".into())])),
        ),
        P("rslora", Type::Bool, Some(Value::Bool(false))),
    ];
    p.extend(extra);
    p
}

pub fn call(
    c: &mut Checker,
    frame: &Frame,
    binding: &str,
    name: &'static str,
    args: &[Arg],
    span: Span,
) -> Value {
    let params = match name {
        "hf_model" => vec![P("path", Type::Str, None)],
        "jsonl" => vec![
            P("path", Type::Str, None),
            P(
                "format",
                Type::Enum(FORMAT_NAMES),
                Some(Value::Str("auto".into())),
            ),
        ],
        "full" => vec![],
        "freeze" => vec![
            P("layers", Type::Int, Some(Value::None)),
            P("modules", Type::list(Type::Str), Some(Value::List(vec![]))),
        ],
        "lora" => lora_params(vec![]),
        "qlora" => lora_params(vec![P("double_quant", Type::Bool, Some(Value::Bool(true)))]),
        "exact_match" => vec![
            P("field", Type::Str, Some(Value::Str("answer".into()))),
            P("extract", Type::Str, Some(Value::None)),
            P("weight", Type::Float, Some(Value::Float(1.0))),
        ],
        "regex_match" => vec![
            P("pattern", Type::Str, None),
            P("weight", Type::Float, Some(Value::Float(1.0))),
        ],
        "length_penalty" => vec![
            P("target", Type::Int, None),
            P("weight", Type::Float, Some(Value::Float(1.0))),
        ],
        "ray" => vec![
            P("address", Type::Str, None),
            P("num_cpus", Type::Float, Some(Value::Float(1.0))),
            P("num_gpus", Type::Float, Some(Value::Float(0.0))),
            P("pending_timeout", Type::Int, Some(Value::Int(600))),
            P("ptl", Type::Str, Some(Value::None)),
            P("python", Type::Str, Some(Value::Str("python3".into()))),
        ],
        "env" => return env(c, frame, binding, args, span),
        _ => return Value::Error,
    };
    let sig = signature(name, &params);
    let shape: Vec<(&str, bool)> = params.iter().map(|P(n, _, d)| (*n, d.is_some())).collect();
    let bound = c.bind_args(frame, name, &sig, &shape, args, span);
    let mut values = Vec::with_capacity(params.len());
    let mut locs = Vec::with_capacity(params.len());
    for (P(pname, ty, default), arg) in params.iter().zip(&bound) {
        match arg {
            Some(a) => {
                let v = c.eval(frame, binding, &a.value);
                // `targets = "all-linear"` is short for a one-element list.
                let v = match (*pname, v) {
                    ("targets", Value::Str(s)) => Value::List(vec![Value::Str(s)]),
                    (_, v) => v,
                };
                let loc = c.loc(frame, a.value.span);
                values.push(c.expect_type(v, ty, loc, &format!("argument `{pname}` of `{name}`")));
                locs.push(loc);
            }
            None => {
                values.push(default.clone().unwrap_or(Value::Error));
                locs.push(c.loc(frame, span));
            }
        }
    }
    if values.contains(&Value::Error) {
        return Value::Error;
    }
    match name {
        "hf_model" => {
            path_value(c, frame, &values[0], locs[0], true).map_or(Value::Error, Value::HfModel)
        }
        "jsonl" => {
            let format = match &values[1] {
                Value::Str(f) => Format::parse(f).unwrap_or(Format::Auto),
                _ => Format::Auto,
            };
            path_value(c, frame, &values[0], locs[0], false)
                .map_or(Value::Error, |path| Value::Dataset { path, format })
        }
        "full" => Value::Tuning(Tuning::Full),
        "ray" => ray(c, &values, &locs),
        "exact_match" | "regex_match" | "length_penalty" => {
            super::rewards::reward(c, name, &values, &locs)
        }
        "freeze" => {
            let layers = match values[0] {
                Value::Int(n) => Some(n),
                _ => None,
            };
            let modules = strings(&values[1]);
            if layers.is_some_and(|n| n <= 0) {
                c.error(range_error(
                    "freeze",
                    "layers",
                    "must be at least 1",
                    locs[0],
                ));
                return Value::Error;
            }
            if layers.is_none() && modules.is_empty() {
                c.error(
                    Diag::error("ptl::missing_field", "freeze needs `layers` or `modules`")
                        .label(c.loc(frame, span), "trains nothing as written")
                        .help("write `freeze(layers = 2)` to train the last 2 layers, or name modules to train"),
                );
                return Value::Error;
            }
            Value::Tuning(Tuning::Freeze { layers, modules })
        }
        _ => {
            let rank = match values[0] {
                Value::Int(r) => r,
                _ => 0,
            };
            let alpha = match values[1] {
                Value::Float(a) => a,
                _ => 2.0 * rank as f64,
            };
            let dropout = match values[2] {
                Value::Float(d) => d,
                _ => 0.0,
            };
            let mut ok = true;
            if rank <= 0 {
                c.error(range_error(name, "rank", "must be at least 1", locs[0]));
                ok = false;
            }
            if alpha <= 0.0 && rank > 0 {
                c.error(range_error(
                    name,
                    "alpha",
                    "must be greater than 0",
                    locs[1],
                ));
                ok = false;
            }
            if !(0.0..1.0).contains(&dropout) {
                c.error(range_error(name, "dropout", "must be in [0, 1)", locs[2]));
                ok = false;
            }
            let targets = strings(&values[3]);
            if targets.is_empty() {
                c.error(
                    Diag::error("ptl::empty_list", "LoRA `targets` is empty")
                        .label(locs[3], "no modules")
                        .help("name modules such as [\"q_proj\", \"v_proj\"], or write \"all-linear\""),
                );
                ok = false;
            }
            if !ok {
                return Value::Error;
            }
            let lora = Lora {
                rank,
                alpha,
                dropout,
                targets,
                rslora: values[4] == Value::Bool(true),
            };
            if name == "qlora" {
                Value::Tuning(Tuning::Qlora {
                    lora,
                    double_quant: values[5] == Value::Bool(true),
                })
            } else {
                Value::Tuning(Tuning::Lora(lora))
            }
        }
    }
}

/// `ray(address, num_cpus, num_gpus, pending_timeout, ptl, python)`, its numbers checked.
fn ray(c: &mut Checker, values: &[Value], locs: &[Loc]) -> Value {
    let number = |v: &Value| match v {
        Value::Float(x) => *x,
        Value::Int(n) => *n as f64,
        _ => 0.0,
    };
    let address = match &values[0] {
        Value::Str(a) => a.trim_end_matches('/').to_string(),
        _ => String::new(),
    };
    let mut ok = true;
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        let d = Diag::error(
            "ptl::out_of_range",
            format!("\"{address}\" is not a Ray Jobs address"),
        )
        .label(locs[0], "not an http(s):// address")
        .help("give the Ray dashboard's address, where its Jobs API listens: \"http://head:8265\"");
        c.error(d);
        ok = false;
    }
    for (i, arg) in [(1, "num_cpus"), (2, "num_gpus")] {
        if number(&values[i]) < 0.0 {
            let d = Diag::error("ptl::out_of_range", format!("`{arg}` must not be negative"))
                .label(locs[i], "out of range")
                .help("what each stage's job asks the cluster for: 0 or more");
            c.error(d);
            ok = false;
        }
    }
    let pending_timeout = match values[3] {
        Value::Int(n) => n,
        _ => 600,
    };
    if pending_timeout < 1 {
        let d = Diag::error("ptl::out_of_range", "`pending_timeout` must be at least 1")
            .label(locs[3], "out of range")
            .help("seconds a job may wait for the resources it asks for before its stage fails");
        c.error(d);
        ok = false;
    }
    if !ok {
        return Value::Error;
    }
    Value::Ray(RayCluster {
        address,
        num_cpus: number(&values[1]),
        num_gpus: number(&values[2]),
        pending_timeout,
        ptl: match &values[4] {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        },
        python: match &values[5] {
            Value::Str(s) => s.clone(),
            _ => "python3".into(),
        },
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.strings().into_iter().map(str::to_owned).collect()
}

fn range_error(func: &str, arg: &str, why: &str, loc: Loc) -> Diag {
    let help = match arg {
        "rank" => "LoRA ranks are small positive integers: 8, 16, 64",
        "alpha" => "alpha scales the adapter (scaling = alpha / rank); 2 × rank is common",
        "dropout" => "dropout is a probability: 0.0 (off) to 0.1 are common",
        _ => "train at least the last layer: `freeze(layers = 1)`",
    };
    Diag::error(
        "ptl::out_of_range",
        format!("`{arg}` of `{func}(...)` {why}"),
    )
    .label(loc, "out of range")
    .help(help)
}

/// A path argument, resolved against the directory of the file that wrote it; it must exist.
fn path_value(c: &mut Checker, frame: &Frame, v: &Value, loc: Loc, dir: bool) -> Option<LocalPath> {
    let Value::Str(written) = v else { return None };
    let resolved = c.modules[frame.module].dir.join(written);
    let found = if dir {
        resolved.is_dir()
    } else {
        resolved.is_file()
    };
    if !found {
        let what = if dir { "model directory" } else { "data file" };
        let shown = written.escape_debug().to_string();
        let d = if resolved.exists() {
            let is = if dir {
                "a file, not a directory"
            } else {
                "a directory, not a file"
            };
            Diag::error("ptl::path_not_found", format!("`{shown}` is {is}"))
                .label(loc, format!("not a {what}"))
                .help(if dir {
                    "hf_model takes the directory that holds config.json and the weights"
                } else {
                    "jsonl takes one .jsonl file"
                })
        } else {
            let mut help = match sibling_like(&resolved, dir) {
                Some(near) => format!(
                    "did you mean `{}`? paths are relative to the file that names them; looked for {}",
                    match written.trim_end_matches('/').rsplit_once('/') {
                        Some((folder, _)) => format!("{folder}/{near}"),
                        None => near,
                    },
                    resolved.display()
                ),
                None => format!(
                    "paths are relative to the file that names them; looked for {}",
                    resolved.display()
                ),
            };
            if written.contains(['\t', '\n', '\r']) {
                help = "the path holds a tab or line break: write `/` between folders, not `\\`"
                    .to_string();
            }
            Diag::error("ptl::path_not_found", format!("{what} `{shown}` not found"))
                .label(loc, "no such path")
                .help(help)
        };
        c.error(d);
        return None;
    }
    Some(LocalPath {
        written: written.clone(),
        resolved,
    })
}

/// A folder (`dir`) or file beside the missing `path` whose name is close to its name, written as the
/// user would write it (the missing name replaced).
fn sibling_like(path: &std::path::Path, dir: bool) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let parent = path.parent()?;
    let names: Vec<String> = std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == dir))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let hint = crate::lang::diag::did_you_mean(name, names.iter().map(String::as_str))?;
    // did_you_mean says "did you mean `x`?": keep the name.
    hint.split('`').nth(1).map(str::to_string)
}

/// `env("NAME", default)`: the variable's value, typed like the default.
fn env(c: &mut Checker, frame: &Frame, binding: &str, args: &[Arg], span: Span) -> Value {
    let bound = c.bind_args(
        frame,
        "env",
        "env(name, default = ...)",
        &[("name", false), ("default", true)],
        args,
        span,
    );
    let name = bound[0].map(|a| (c.eval(frame, binding, &a.value), c.loc(frame, a.value.span)));
    let default = bound[1].map(|a| c.eval(frame, binding, &a.value));
    let Some((name_value, name_loc)) = name else {
        return Value::Error;
    };
    let Value::Str(var) =
        c.expect_type(name_value, &Type::Str, name_loc, "argument `name` of `env`")
    else {
        return Value::Error;
    };
    if let Some(d) = &default {
        if !matches!(
            d,
            Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Error
        ) {
            let loc = bound[1].map_or(c.loc(frame, span), |a| c.loc(frame, a.value.span));
            c.error(
                Diag::error(
                    "ptl::type_mismatch",
                    format!("the default of `env` is {}", d.a_describe()),
                )
                .label(loc, "not a string, number or bool")
                .help("environment variables hold text: give a string, number or bool default"),
            );
            return Value::Error;
        }
    }
    let Ok(raw) = std::env::var(&var) else {
        return match default {
            Some(d) => d,
            None => {
                c.error(
                    Diag::error(
                        "ptl::env_missing",
                        format!("environment variable `{var}` is not set"),
                    )
                    .label(name_loc, "not set")
                    .help(format!(
                        "set it, or give a default: env(\"{var}\", \"...\")"
                    )),
                );
                Value::Error
            }
        };
    };
    let parsed = match &default {
        Some(Value::Int(_)) => raw.trim().parse().ok().map(Value::Int),
        Some(Value::Float(_)) => raw
            .trim()
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite())
            .map(Value::Float),
        Some(Value::Bool(_)) => match raw.trim() {
            "true" | "1" => Some(Value::Bool(true)),
            "false" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => Some(Value::Str(raw.clone())),
    };
    parsed.unwrap_or_else(|| {
        let want = default
            .as_ref()
            .map_or("string".to_string(), Value::describe);
        c.error(
            Diag::error(
                "ptl::type_mismatch",
                format!("environment variable `{var}` is not a {want}"),
            )
            .label(c.loc(frame, span), format!("`{var}` = {raw:?}"))
            .help(format!(
                "the default makes this a {want}; set `{var}` to one"
            )),
        );
        Value::Error
    })
}
