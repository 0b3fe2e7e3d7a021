//! `ptl check`: diagnostics for humans (miette) or tools (JSON), and a one-line summary.

use super::OutputFormat;
use crate::lang::check::check_file;
use crate::lang::diag::{render, to_json};
use std::path::Path;

pub fn run(file: &Path, set: &[String], format: OutputFormat) -> i32 {
    let checked = check_file(file, set);
    let ok = checked.pipeline.is_some();
    match format {
        OutputFormat::Json => {
            let diags: Vec<_> = checked
                .diags
                .iter()
                .map(|d| to_json(d, &checked.sources))
                .collect();
            let out = serde_json::json!({
                "ok": ok,
                "file": file.display().to_string(),
                "stages": checked.pipeline.as_ref().map(|p| p.stages.len()),
                "edges": checked.pipeline.as_ref().map(|p| p.edge_count()),
                "diagnostics": diags,
            });
            outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        OutputFormat::Human => {
            err!(
                "{}",
                render(&checked.diags, &checked.sources, super::color())
            );
            match &checked.pipeline {
                Some(p) => outln!(
                    "ok: {}: {} stage{}, {} edge{}",
                    file.display(),
                    p.stages.len(),
                    plural(p.stages.len()),
                    p.edge_count(),
                    plural(p.edge_count())
                ),
                None => {
                    let n = checked.diags.iter().filter(|d| d.is_error()).count();
                    errln!("error: {}: {n} error{} found", file.display(), plural(n));
                }
            }
        }
    }
    if ok {
        0
    } else {
        1
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
