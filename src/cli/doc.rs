//! `ptl doc`: the stage kinds and their schemas, as text or as the Markdown of docs/stages.md.

use crate::lang::diag::did_you_mean;
use crate::lang::settings;
use crate::lang::value::{Tuning, Value};
use crate::stages::schema::{Default, FieldSchema, Kind};
use crate::stages::{kind, user_kinds};

pub fn run(name: Option<&str>, as_markdown: bool) -> i32 {
    if as_markdown {
        out!("{}", markdown());
        return 0;
    }
    match name {
        None => {
            outln!("stage kinds (ptl doc KIND for fields and outputs):");
            for k in user_kinds() {
                let later = if k.run.is_some() {
                    ""
                } else {
                    " (not runnable yet)"
                };
                outln!("  {:<13} {}{later}", k.name, k.summary);
            }
            outln!("blocks:");
            for b in settings::Block::ALL {
                let fields: Vec<&str> = b.fields().iter().map(|f| f.name).collect();
                outln!("  {:<13} {}", b.word(), fields.join(", "));
            }
            0
        }
        Some(n) => match (settings::Block::named(n), kind(n)) {
            (Some(b), _) => {
                out!("{}", fields_text(b.word(), b.summary(), b.fields()));
                0
            }
            (None, Some(k)) => {
                out!("{}", kind_text(k));
                0
            }
            (None, None) => {
                let blocks = settings::Block::ALL.map(|b| b.word());
                let names = user_kinds().map(|k| k.name).chain(blocks);
                let hint =
                    did_you_mean(n, names).unwrap_or_else(|| "run `ptl doc` for the list".into());
                errln!("error: unknown stage kind `{n}`: {hint}");
                1
            }
        },
    }
}

fn default_text(d: &Default) -> String {
    match d {
        Default::Required => "required".into(),
        Default::Optional => "optional".into(),
        Default::Config(key) => format!("config.{key}"),
        Default::Value(v) => ptl_literal(v),
    }
}

/// A default value as it is written in a .ptl file (`full`, `"linear"`, `2e-5`, `["loss"]`).
fn ptl_literal(v: &Value) -> String {
    let list = |items: &[String]| format!("[{}]", items.join(", "));
    let strings = |s: &[String]| list(&s.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>());
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) if *f != 0.0 && f.abs() < 1e-3 => format!("{f:e}"),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => format!("{s:?}"),
        Value::List(items) => list(&items.iter().map(ptl_literal).collect::<Vec<_>>()),
        Value::Tuning(Tuning::Full) => "full".into(),
        Value::Tuning(Tuning::Freeze { layers, modules }) => {
            let mut args = Vec::new();
            if let Some(l) = layers {
                args.push(format!("layers = {l}"));
            }
            if !modules.is_empty() {
                args.push(format!("modules = {}", strings(modules)));
            }
            format!("freeze({})", args.join(", "))
        }
        Value::Tuning(Tuning::Lora(l)) | Value::Tuning(Tuning::Qlora { lora: l, .. }) => {
            let name = if matches!(v, Value::Tuning(Tuning::Lora(_))) {
                "lora"
            } else {
                "qlora"
            };
            format!(
                "{name}(rank = {}, alpha = {}, targets = {})",
                l.rank,
                ptl_literal(&Value::Float(l.alpha)),
                strings(&l.targets)
            )
        }
        other => serde_json::to_string(&other.to_json(&|_| String::new())).unwrap_or_default(),
    }
}

/// Fields as aligned columns: name, type, default, meaning.
fn fields_text(name: &str, summary: &str, fields: &[FieldSchema]) -> String {
    let rows: Vec<[String; 4]> = fields
        .iter()
        .map(|f| {
            [
                f.name.to_string(),
                f.ty.to_string(),
                default_text(&f.default),
                f.doc.to_string(),
            ]
        })
        .collect();
    format!(
        "{name}: {summary}\n\nfields:\n{}",
        columns(&["field", "type", "default", "meaning"], &rows)
    )
}

/// Rows under a header, each column as wide as its widest cell (the last one unpadded).
fn columns<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            s.push(' ');
            s.push_str(cell);
            if i + 1 < N {
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 1));
            }
        }
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header);
    for row in rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

/// Whether `ptl run` can run the kind in this version.
fn status_line(k: &Kind) -> &'static str {
    if k.run.is_some() {
        "runs: yes"
    } else {
        "runs: not yet in this version (checked and planned; `ptl run` reports its stages blocked)"
    }
}

fn kind_text(k: &Kind) -> String {
    let mut s = fields_text(k.name, k.summary, &k.fields);
    s.insert_str(
        s.find("\n\n").unwrap_or(s.len()),
        &format!("\n{}", status_line(k)),
    );
    s.push_str("\noutputs:\n");
    let rows: Vec<[String; 3]> = k
        .outputs
        .iter()
        .map(|o| [o.name.to_string(), o.ty.to_string(), o.doc.to_string()])
        .collect();
    s.push_str(&columns(&["output", "type", "meaning"], &rows));
    for (field, why) in &k.refused {
        s.push_str(&format!("\nnot accepted: `{field}`: {why}\n"));
    }
    s
}

fn md_table(fields: &[FieldSchema]) -> String {
    let mut s = String::from("| field | type | default | meaning |\n|---|---|---|---|\n");
    for f in fields {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            f.name,
            f.ty.to_string().replace('|', "\\|"),
            default_text(&f.default).replace('|', "\\|"),
            f.doc.replace('|', "\\|")
        ));
    }
    s
}

/// The stage reference (docs/stages.md), generated from the schemas.
pub fn markdown() -> String {
    let mut s = String::from(
        "# Stage reference\n\n<!-- Generated by `ptl doc --markdown` from the schemas in src/stages/; a test keeps it current. -->\n\n",
    );
    s.push_str("| kind | what it does |\n|---|---|\n");
    for k in user_kinds() {
        s.push_str(&format!(
            "| [`{}`](#{}) | {} |\n",
            k.name, k.name, k.summary
        ));
    }
    for k in user_kinds() {
        s.push_str(&format!(
            "\n## {}\n\n{}. {}.\n\n",
            k.name,
            capitalize(k.summary),
            capitalize(status_line(k))
        ));
        s.push_str(&md_table(&k.fields));
        s.push_str("\nOutputs:\n\n| output | type | meaning |\n|---|---|---|\n");
        for o in &k.outputs {
            s.push_str(&format!("| `{}` | {} | {} |\n", o.name, o.ty, o.doc));
        }
        for (field, why) in &k.refused {
            s.push_str(&format!("\n`{field}` is refused: {why}.\n"));
        }
    }
    for b in settings::Block::ALL {
        s.push_str(&format!(
            "\n## {}\n\n{}, in the pipeline file only.\n\n",
            b.word(),
            capitalize(b.summary())
        ));
        s.push_str(&md_table(b.fields()));
    }
    s
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}
