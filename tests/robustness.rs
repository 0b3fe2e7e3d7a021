//! No input makes ptl panic or hang: random bytes, token soup and mutated valid pipelines go
//! through parse + check (+ fmt when they parse), a bounded number of cases each.

use proptest::prelude::*;
use ptl::lang::check::check_bytes;
use ptl::lang::{format, parse};
use std::path::Path;

const VOCAB: &[&str] = &[
    "stage",
    "let",
    "fn",
    "import",
    "as",
    "config",
    "track",
    "return",
    "true",
    "false",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "=",
    ",",
    ".",
    "+",
    "-",
    "*",
    "/",
    "#",
    "\"",
    "\n",
    "sft",
    "dpo",
    "eval",
    "merge",
    "model",
    "data",
    "lr",
    "beta",
    "x",
    "sft.model",
    "1",
    "2e-4",
    "0",
    "\"s\"",
    "\"\\u{41}\"",
    "lora(",
    "hf_model(\"models/qwen3-tiny\")",
    "jsonl(\"data/chat.jsonl\")",
    "env(\"HOME\")",
    "full",
    "freeze(",
    "\"std/recipes.ptl\"",
    "recipes.sft_dpo(",
    "é",
    "\u{0}",
    "\\",
];

fn seeds() -> Vec<(&'static str, String)> {
    [
        "pipelines/chat_assistant.ptl",
        "stdlib/recipes.ptl",
        "tests/format/messy.ptl",
    ]
    .iter()
    .map(|p| (*p, std::fs::read_to_string(p).expect("seed file")))
    .collect()
}

/// Parse + check, and when the text parses, format it twice (idempotence).
fn exercise(path: &str, bytes: &[u8], overrides: &[String]) {
    let _ = check_bytes(Path::new(path), bytes, overrides);
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(module) = parse::parse(0, text) {
            let once = format::format(text, &module);
            let again = parse::parse(0, &once).expect("formatted output parses");
            assert_eq!(
                format::format(&once, &again),
                once,
                "fmt is not idempotent on {text:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise("pipelines/fuzz.ptl", &bytes, &[]);
    }

    #[test]
    fn token_soup(tokens in proptest::collection::vec(0..VOCAB.len(), 0..60)) {
        let text: Vec<&str> = tokens.iter().map(|i| VOCAB[*i]).collect();
        exercise("pipelines/fuzz.ptl", text.join(" ").as_bytes(), &[]);
    }

    #[test]
    fn mutated_pipelines(
        seed in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, 0..VOCAB.len(), 0u8..3), 1..5),
    ) {
        let (path, text) = &seeds()[seed];
        let mut bytes = text.as_bytes().to_vec();
        for (at, len, token, op) in edits {
            let at = at.index(bytes.len() + 1);
            let end = (at + len).min(bytes.len());
            match op {
                0 => { bytes.drain(at..end); }
                1 => { bytes.splice(at..at, VOCAB[token].bytes()); }
                _ => { let copy = bytes[at..end].to_vec(); bytes.splice(at..at, copy); }
            }
        }
        exercise(path, &bytes, &[]);
    }

    #[test]
    fn random_overrides(path in "[a-z_.]{0,12}", value in "[ -~]{0,16}") {
        let text = std::fs::read("pipelines/chat_assistant.ptl").unwrap();
        exercise("pipelines/chat_assistant.ptl", &text, &[format!("{path}={value}"), value.clone()]);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("let x = {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let c = check_bytes(Path::new("pipelines/deep.ptl"), deep.as_bytes(), &[]);
    assert!(c.diags.iter().any(|d| d.code == "ptl::too_deep"));
    let chain = format!("let x = 1{}", " + 1".repeat(50_000));
    let c = check_bytes(Path::new("pipelines/deep.ptl"), chain.as_bytes(), &[]);
    assert!(c.diags.iter().any(|d| d.code == "ptl::too_deep"));
}

#[test]
fn exponential_calls_stop_on_the_budget() {
    let mut text = String::from("fn f0(x) {\n  return x\n}\n");
    for i in 1..30 {
        text.push_str(&format!(
            "fn f{i}(x) {{\n  return f{p}(x) + f{p}(x)\n}}\n",
            p = i - 1
        ));
    }
    text.push_str("let big = f29(1)\n");
    let start = std::time::Instant::now();
    let c = check_bytes(Path::new("pipelines/blowup.ptl"), text.as_bytes(), &[]);
    assert!(c.diags.iter().any(|d| d.code == "ptl::too_complex"));
    assert!(
        start.elapsed().as_secs() < 30,
        "the budget must bound the work"
    );
}

#[test]
fn the_binary_never_exits_101() {
    let dir = std::env::temp_dir().join(format!("ptl-robust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"\xff\xfe\x00".to_vec(),
        b"stage".to_vec(),
        b"stage x = sft {".to_vec(),
        format!("let x = {}", "(".repeat(5000)).into_bytes(),
        b"fn f() { let y = f() }\nlet z = f()\nstage s = merge { model = z }".to_vec(),
        b"import \"main.ptl\"\nstage s = eval { models = [], data = 1 }".to_vec(),
    ];
    for (i, input) in inputs.iter().enumerate() {
        let file = dir.join("main.ptl");
        std::fs::write(&file, input).unwrap();
        for args in [
            vec!["check"],
            vec!["check", "--format", "json"],
            vec!["fmt", "--check"],
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
                .args(&args)
                .arg(&file)
                .output()
                .unwrap();
            let code = out.status.code();
            assert!(
                matches!(code, Some(0) | Some(1)),
                "input {i} {args:?}: exit {code:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
