//! Stage blocks and the `config` / `track` blocks: fields checked against a schema, overrides applied,
//! required fields enforced, defaults filled.

use super::{Checker, Frame};
use crate::lang::ast::{self, Block};
use crate::lang::diag::{did_you_mean, Diag};
use crate::lang::settings;
use crate::lang::source::{Loc, Span};
use crate::lang::value::{StageId, Value};
use crate::stages::schema::{Default, FieldSchema};
use std::collections::{BTreeMap, HashMap};

/// What a block is checked against.
pub(super) struct Schema<'a> {
    /// How messages name the block: "stage `sft` (sft)", "`config`".
    pub owner: String,
    /// The `--set` prefix that addresses its fields: "sft", "v1.dpo", "config".
    pub target: String,
    pub fields: &'a [FieldSchema],
    pub refused: &'a [(&'static str, &'static str)],
    pub decl: Loc,
}

impl Checker {
    /// Checks a `stage NAME = KIND { ... }` block.
    pub(super) fn instantiate(
        &mut self,
        frame: &Frame,
        id: StageId,
        kind_name: &ast::Ident,
        block: &Block,
    ) {
        let name = self.stages[id].name.clone();
        let decl = self.stages[id].decl;
        let Some(kind) = self.stages[id].kind else {
            let names: Vec<&str> = crate::stages::user_kinds().map(|k| k.name).collect();
            let help = did_you_mean(&kind_name.name, names.iter().copied())
                .unwrap_or_else(|| format!("stage kinds: {}", names.join(", ")));
            let d = Diag::error(
                "ptl::unknown_kind",
                format!("unknown stage kind `{}`", kind_name.name),
            )
            .label(self.loc(frame, kind_name.span), "not a stage kind")
            .help(help);
            self.error(d);
            // Still look inside, so errors in the values are reported too.
            for f in &block.fields {
                self.eval(frame, &name, &f.value);
            }
            return;
        };
        let schema = Schema {
            owner: format!("stage `{name}` ({})", kind.name),
            target: name.clone(),
            fields: &kind.fields,
            refused: &kind.refused,
            decl,
        };
        let (params, locs) = self.fill_fields(frame, &name, &schema, Some(block));
        let mut deps = Vec::new();
        for (field, value) in &params {
            let mut refs = Vec::new();
            value.stage_refs(&mut refs);
            let loc = locs.get(field).copied().unwrap_or(decl);
            deps.extend(refs.into_iter().map(|s| (s, loc)));
        }
        let slot = &mut self.stages[id];
        slot.params = params;
        slot.locs = locs;
        slot.deps = deps;
    }

    /// Checks a `config`, `track` or `store` block.
    pub(super) fn settings(
        &mut self,
        frame: &Frame,
        which: settings::Block,
        block: Option<&Block>,
        item: &ast::Item,
    ) {
        let word = which.word();
        let keyword = self.loc(
            frame,
            Span::new(item.span.start, item.span.start + word.len()),
        );
        if frame.module != 0 {
            let d = Diag::error("ptl::misplaced_block", format!("`{word}` belongs in the pipeline file"))
                .label(keyword, "in an imported file")
                .help(format!("move the `{word}` block into the file you run; imports provide lets, functions and stages"));
            self.error(d);
            return;
        }
        if let Some(first) = self.block_settings(which).seen {
            let d = Diag::error("ptl::duplicate_block", format!("a second `{word}` block"))
                .label(keyword, "again here")
                .label(first, "first here")
                .help(format!("merge the two `{word}` blocks into one"));
            self.error(d);
            return;
        }
        self.apply_settings(frame, which, block, keyword);
    }

    /// A block's fields against its schema (`block` is `None` when the file has none: overrides and
    /// defaults still apply).
    pub(super) fn apply_settings(
        &mut self,
        frame: &Frame,
        which: settings::Block,
        block: Option<&Block>,
        decl: Loc,
    ) {
        let word = which.word();
        let is_config = which == settings::Block::Config;
        let schema = Schema {
            owner: format!("`{word}`"),
            target: word.to_string(),
            fields: which.fields(),
            refused: &[],
            decl,
        };
        let (values, locs) = self.fill_fields(frame, word, &schema, block);
        // The config's integer settings and their lower bounds: (field, least, why, help).
        let bounds = [
            (
                "threads",
                0,
                "must not be negative",
                "give a number of CPU threads, or 0 for all cores",
            ),
            (
                "workers",
                1,
                "must be at least 1",
                "give how many processes each training stage trains on (1: one process)",
            ),
        ];
        for (field, least, why, help) in bounds.into_iter().filter(|_| is_config) {
            if let Some(&Value::Int(n)) = values.get(field) {
                if n < least {
                    let loc = locs.get(field).copied().unwrap_or(decl);
                    let diag = Diag::error("ptl::out_of_range", format!("`{field}` {why}"))
                        .label(loc, format!("{n} is out of range"))
                        .help(help);
                    self.error(diag);
                }
            }
        }
        if let (true, Some(Value::Str(d))) = (is_config, values.get("device")) {
            let loc = locs.get("device").copied().unwrap_or(decl);
            if let Some(diag) = settings::bad_device(d, loc) {
                self.error(diag);
            }
        }
        if let (settings::Block::Store, Some(Value::Str(url))) = (which, values.get("remote")) {
            if let Some(why) = settings::bad_remote(url) {
                let loc = locs.get("remote").copied().unwrap_or(decl);
                let diag = Diag::error(
                    "ptl::out_of_range",
                    format!("\"{url}\" is not a remote store"),
                )
                .label(loc, "not an s3:// or file:// address")
                .help(why);
                self.error(diag);
            }
        }
        let target = self.block_settings(which);
        target.values = values;
        target.seen = Some(decl);
    }

    /// Evaluates a block's fields against a schema, then `--set` overrides, then defaults.
    pub(super) fn fill_fields(
        &mut self,
        frame: &Frame,
        binding: &str,
        schema: &Schema,
        block: Option<&Block>,
    ) -> (BTreeMap<String, Value>, BTreeMap<String, Loc>) {
        let mut params = BTreeMap::new();
        let mut locs = BTreeMap::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for f in block.map_or(&[][..], |b| &b.fields) {
            let name = f.name.name.as_str();
            let value = self.eval(frame, binding, &f.value);
            if let Some(first) = seen.insert(name, f.name.span) {
                self.duplicate_field(frame, &f.name, first);
                continue;
            }
            let name_loc = self.loc(frame, f.name.span);
            if let Some((_, why)) = schema.refused.iter().find(|(r, _)| *r == name) {
                let d = Diag::error(
                    "ptl::refused_field",
                    format!("{} takes no `{name}`", schema.owner),
                )
                .label(name_loc, "not allowed here")
                .help(format!("{why}; remove this field"));
                self.error(d);
                continue;
            }
            let Some(fs) = schema.fields.iter().find(|fs| fs.name == name) else {
                let alias = crate::stages::common::ALIASES.iter().find(|(other, ours)| {
                    *other == name && schema.fields.iter().any(|f| f.name == *ours)
                });
                let help = match alias {
                    Some((_, ours)) => format!("ptl calls `{name}` `{ours}`"),
                    None => did_you_mean(name, schema.fields.iter().map(|fs| fs.name))
                        .unwrap_or_else(|| {
                            format!("`ptl doc` lists the fields of {}", schema.owner)
                        }),
                };
                let d = Diag::error(
                    "ptl::unknown_field",
                    format!("{} has no field `{name}`", schema.owner),
                )
                .label(name_loc, "unknown field")
                .help(help);
                self.error(d);
                continue;
            };
            let loc = self.loc(frame, f.value.span);
            let what = format!("field `{name}` of {}", schema.owner);
            let value = self.expect_type(value, &fs.ty, loc, &what);
            params.insert(name.to_string(), value);
            locs.insert(name.to_string(), loc);
        }
        for (field, value, loc) in self.field_overrides(schema) {
            params.insert(field.clone(), value);
            locs.insert(field, loc);
        }
        for fs in schema.fields {
            if params.contains_key(fs.name) {
                continue;
            }
            match &fs.default {
                Default::Required => {
                    let d = Diag::error(
                        "ptl::missing_field",
                        format!("{} needs `{}`", schema.owner, fs.name),
                    )
                    .label(schema.decl, format!("`{}` is not set", fs.name))
                    .help(format!("add `{} = ...`, {}: {}", fs.name, fs.ty, fs.doc));
                    self.error(d);
                    params.insert(fs.name.to_string(), Value::Error);
                }
                Default::Value(v) => {
                    params.insert(fs.name.to_string(), v.clone());
                }
                Default::Optional | Default::Config(_) => {}
            }
        }
        (params, locs)
    }
}
