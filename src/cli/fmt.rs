//! `ptl fmt`: rewrites files in the canonical layout; `--check` only reports.

use crate::lang::diag::render;
use crate::lang::source::SourceMap;
use crate::lang::{format, parse};
use std::path::PathBuf;

pub fn run(files: &[PathBuf], check: bool) -> i32 {
    let mut code = 0;
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errln!("error: cannot read {}: {e}", path.display());
                code = 1;
                continue;
            }
        };
        let mut sources = SourceMap::default();
        let file = sources.add(
            path.display().to_string(),
            Some(path.clone()),
            text.as_str(),
        );
        let module = match parse::parse(file, &text) {
            Ok(m) => m,
            Err(diags) => {
                err!("{}", render(&diags, &sources, super::color()));
                code = 1;
                continue;
            }
        };
        let formatted = format::format(&text, &module);
        if formatted == text {
            continue;
        }
        if check {
            outln!("would reformat: {}", path.display());
            code = 1;
        } else if let Err(e) = std::fs::write(path, &formatted) {
            errln!("error: cannot write {}: {e}", path.display());
            code = 1;
        } else {
            outln!("formatted: {}", path.display());
        }
    }
    code
}
