//! `ptl fmt`: golden layouts, idempotence, comments and tokens preserved, and every .ptl in the
//! repository already formatted.

use ptl::lang::{format, parse, scan};
use std::path::{Path, PathBuf};

fn fmt(text: &str) -> String {
    let module = parse::parse(0, text).expect("parses");
    format::format(text, &module)
}

/// The text with comments, whitespace and commas removed: formatting must not change it.
fn tokens(text: &str) -> String {
    let comments = scan::comments(text);
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if !in_string && comments.iter().any(|s| i >= s.start && i < s.end) {
            continue;
        }
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            c if c.is_whitespace() || c == ',' => {}
            c => out.push(c),
        }
    }
    out
}

fn ptl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() && name != "target" && !name.starts_with('.') {
            ptl_files(&p, out);
        } else if name.ends_with(".ptl") {
            out.push(p);
        }
    }
}

pub fn check_invariants(name: &str, text: &str) {
    let once = fmt(text);
    assert_eq!(fmt(&once), once, "{name}: formatting is not idempotent");
    assert_eq!(
        scan::comments(text).len(),
        scan::comments(&once).len(),
        "{name}: comments were lost"
    );
    // Tokens are the same modulo commas, which the formatter may add or drop.
    assert_eq!(
        tokens(text),
        tokens(&once),
        "{name}: formatting changed the tokens"
    );
}

#[test]
fn golden_layouts() {
    for entry in std::fs::read_dir("tests/format").unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.to_str().and_then(|p| p.strip_suffix(".in")) else {
            continue;
        };
        let input = std::fs::read_to_string(&path).unwrap();
        let expected = std::fs::read_to_string(name).expect("expected output beside the .in file");
        assert_eq!(fmt(&input), expected, "{name}");
        check_invariants(name, &input);
    }
}

#[test]
fn every_ptl_file_in_the_repo_is_formatted() {
    let mut files = Vec::new();
    for dir in ["pipelines", "stdlib", "tests", "docs", "benches"] {
        ptl_files(Path::new(dir), &mut files);
    }
    assert!(files.len() >= 3);
    let mut unformatted = Vec::new();
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(_) => continue, // invalid UTF-8 test inputs
        };
        // Syntax-error test inputs do not parse; everything that parses must be formatted.
        let Ok(module) = parse::parse(0, &text) else {
            continue;
        };
        check_invariants(&f.display().to_string(), &text);
        if format::format(&text, &module) != text {
            unformatted.push(f.display().to_string());
        }
    }
    assert!(
        unformatted.is_empty(),
        "run `ptl fmt` on: {}",
        unformatted.join(", ")
    );
}
