//! Golden tests for diagnostics: each case under tests/diagnostics/ is a pipeline (NAME.ptl, or a
//! folder NAME/ with main.ptl and the files it imports) and NAME.out, the rendered diagnostics.
//! A first line `# args: --set a.b=1 ...` passes overrides. `UPDATE_GOLDEN=1 cargo test` rewrites
//! the .out files; review the diff.

use ptl::lang::check::check_file;
use ptl::lang::diag::render;
use std::path::{Path, PathBuf};

fn cases() -> Vec<(String, PathBuf)> {
    let dir = Path::new("tests/diagnostics");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("tests/diagnostics exists") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            // Folders without a main.ptl hold fixtures (data/, models/), not cases.
            if path.join("main.ptl").is_file() {
                out.push((name, path.join("main.ptl")));
            }
        } else if path.extension().is_some_and(|e| e == "ptl") {
            out.push((name, path));
        }
    }
    out.sort();
    out
}

fn overrides(path: &Path) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let first = String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    match first.strip_prefix("# args:") {
        Some(args) => args
            .split_whitespace()
            .filter(|a| *a != "--set")
            .map(str::to_string)
            .collect(),
        None => vec![],
    }
}

#[test]
fn golden_diagnostics() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "expected at least 30 diagnostic cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (name, path) in &cases {
        let checked = check_file(path, &overrides(path));
        assert!(!checked.diags.is_empty(), "{name}: produced no diagnostic");
        let rendered = render(&checked.diags, &checked.sources, false);
        let expected_path = Path::new("tests/diagnostics").join(format!("{name}.out"));
        if update {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            failures.push(format!(
                "--- {name}: expected\n{expected}\n--- got\n{rendered}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every case names its error code in its file name's diagnostics: no case passes silently.
#[test]
fn every_case_fails_the_check_or_warns() {
    for (name, path) in cases() {
        let checked = check_file(&path, &overrides(&path));
        let warns_only = name.starts_with("warn_");
        if warns_only {
            assert!(
                checked.pipeline.is_some(),
                "{name}: a warn_ case must still pass"
            );
        } else {
            assert!(
                checked.pipeline.is_none(),
                "{name}: expected the check to fail"
            );
        }
    }
}
