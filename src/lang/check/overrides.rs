//! `--set path=value` overrides: parsed like source, applied where their path points, checked like
//! source, and an error when the path names nothing.

use super::stage::Schema;
use super::{Checker, Frame};
use crate::lang::diag::{did_you_mean, Diag};
use crate::lang::parse;
use crate::lang::settings::Block;
use crate::lang::source::{FileId, Loc, Span};
use crate::lang::value::Value;

pub struct Override {
    /// Everything before the last dot: a stage name, `config`, `track`; empty for a top-level `let`.
    pub owner: String,
    pub field: String,
    pub file: FileId,
    pub path_span: Span,
    pub value_start: usize,
    pub used: bool,
}

pub(super) fn parse_all(c: &mut Checker, raw: &[String]) -> Vec<Override> {
    let mut out = Vec::new();
    for text in raw {
        let file = c.sources.add("--set", None, text.as_str());
        let whole = Loc {
            file,
            span: Span::new(0, text.len()),
        };
        let Some(eq) = text.find('=') else {
            c.error(
                Diag::error("ptl::bad_set", format!("`--set {text}` has no value"))
                    .label(whole, "expected `path=value`")
                    .help("write `--set stage.field=value`, e.g. `--set dpo.beta=0.2`"),
            );
            continue;
        };
        let path = &text[..eq];
        let valid = !path.is_empty()
            && path.split('.').all(|seg| {
                seg.chars()
                    .next()
                    .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
                    && seg
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            });
        if !valid {
            let message = if path.is_empty() {
                "`--set` has no path before `=`".to_string()
            } else {
                format!("`{path}` is not a path")
            };
            c.error(
                Diag::error("ptl::bad_set", message)
                    .label(
                        Loc {
                            file,
                            span: Span::new(0, eq),
                        },
                        "expected names joined by dots",
                    )
                    .help("write `--set stage.field=value`, `--set config.seed=1` or `--set name=value` for a top-level let"),
            );
            continue;
        }
        let (owner, field) = match path.rfind('.') {
            Some(dot) => (path[..dot].to_string(), path[dot + 1..].to_string()),
            None => (String::new(), path.to_string()),
        };
        out.push(Override {
            owner,
            field,
            file,
            path_span: Span::new(0, eq),
            value_start: eq + 1,
            used: false,
        });
    }
    out
}

impl Checker {
    /// Evaluates override `i`'s value; a bare word is a string where the field takes text.
    fn override_value(&mut self, i: usize, textual: bool, binding: &str) -> (Value, Loc) {
        let o = &self.overrides[i];
        let (file, start) = (o.file, o.value_start);
        let text = self.sources.text(file).to_string();
        let raw = &text[start..];
        let loc = Loc {
            file,
            span: Span::new(start, text.len()),
        };
        if textual && !raw.trim_start().starts_with('"') {
            return (Value::Str(raw.to_string()), loc);
        }
        match parse::parse_expr(file, &text, start) {
            Ok(expr) if !self.modules.is_empty() => {
                // Overrides are evaluated in the pipeline file's scope, so they may name its lets and stages.
                let frame = Frame {
                    module: 0,
                    file,
                    locals: None,
                    prefix: String::new(),
                    origin: None,
                };
                let value = self.eval(&frame, binding, &expr);
                (
                    value,
                    Loc {
                        file,
                        span: expr.span,
                    },
                )
            }
            Ok(_) => (Value::Error, loc),
            Err(diags) => {
                for d in diags {
                    self.error(d);
                }
                (Value::Error, loc)
            }
        }
    }

    /// Overrides for the fields of one block, checked against its schema.
    pub(super) fn field_overrides(&mut self, schema: &Schema) -> Vec<(String, Value, Loc)> {
        let mut out = Vec::new();
        for i in 0..self.overrides.len() {
            if self.overrides[i].used || self.overrides[i].owner != schema.target {
                continue;
            }
            self.overrides[i].used = true;
            let field = self.overrides[i].field.clone();
            let Some(fs) = schema.fields.iter().find(|f| f.name == field) else {
                let o = &self.overrides[i];
                let help = did_you_mean(&field, schema.fields.iter().map(|f| f.name))
                    .unwrap_or_else(|| format!("`ptl doc` lists the fields of {}", schema.owner));
                let d = Diag::error(
                    "ptl::bad_set",
                    format!("{} has no field `{field}`", schema.owner),
                )
                .label(
                    Loc {
                        file: o.file,
                        span: o.path_span,
                    },
                    "unknown field",
                )
                .help(help);
                self.error(d);
                continue;
            };
            let (value, loc) = self.override_value(i, fs.ty.is_textual(), &schema.target);
            let what = format!("`--set {}.{field}`", schema.target);
            let value = self.expect_type(value, &fs.ty, loc, &what);
            out.push((field, value, loc));
        }
        out
    }

    /// The override of a top-level `let` of the pipeline file, if any.
    pub(super) fn let_override(
        &mut self,
        frame: &Frame,
        name: &str,
        binding: &str,
    ) -> Option<Value> {
        if frame.module != 0 || frame.locals.is_some() {
            return None;
        }
        // As for fields, the last `--set` of a name wins.
        let mut last = None;
        for (i, o) in self.overrides.iter_mut().enumerate() {
            if !o.used && o.owner.is_empty() && o.field == name {
                o.used = true;
                last = Some(i);
            }
        }
        Some(self.override_value(last?, false, binding).0)
    }

    /// Reports overrides whose path named nothing.
    pub(super) fn unused_overrides(&mut self) {
        let stages: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
        let mut targets = stages.clone();
        targets.extend(Block::ALL.map(|b| b.word().to_string()));
        let lets: Vec<String> = self
            .modules
            .first()
            .map_or(vec![], |m| m.globals.keys().cloned().collect());
        for i in 0..self.overrides.len() {
            let o = &self.overrides[i];
            if o.used {
                continue;
            }
            let path = if o.owner.is_empty() {
                o.field.clone()
            } else {
                format!("{}.{}", o.owner, o.field)
            };
            let help = if o.owner.is_empty() {
                did_you_mean(&o.field, lets.iter().map(String::as_str)).unwrap_or_else(|| {
                    "a path without a dot names a top-level `let` of the pipeline file".to_string()
                })
            } else {
                did_you_mean(&o.owner, targets.iter().map(String::as_str))
                    .map(|d| format!("{d} (as the first part of the path)"))
                    .unwrap_or_else(|| {
                        format!(
                            "paths start with a stage ({}), `config`, `track` or `store`",
                            stages.join(", ")
                        )
                    })
            };
            let d = Diag::error(
                "ptl::bad_set",
                format!("`--set {path}` names nothing in the pipeline"),
            )
            .label(
                Loc {
                    file: o.file,
                    span: o.path_span,
                },
                "no such stage, setting or let",
            )
            .help(help);
            self.error(d);
        }
    }
}
