//! The `ptl` binary: exit codes (0 ok, 1 user error, 2 usage), JSON diagnostics, plain output
//! without a TTY, `ptl fmt --check`, `ptl doc`, and docs/stages.md kept in step with the schemas.

use std::process::{Command, Output};

fn ptl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ptl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_clean_pipeline_prints_a_summary() {
    let o = ptl(&["check", "pipelines/chat_assistant.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ok: pipelines/chat_assistant.ptl: 6 stages, 8 edges\n"
    );
}

#[test]
fn check_errors_exit_1_without_color_when_piped() {
    let o = ptl(&[
        "check",
        "pipelines/chat_assistant.ptl",
        "--set",
        "aligned.bta=0.2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("ptl::bad_set"), "{err}");
    assert!(err.contains("did you mean `beta`?"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no ANSI escapes when stderr is not a TTY"
    );
}

#[test]
fn check_json_lists_every_diagnostic_with_positions() {
    let f = temp(
        "two_errors.ptl",
        "let m = hf_model(\"nowhere\")\nstage s = sft {\n  model = m\n  dta = 1\n}\n",
    );
    let o = ptl(&["check", f.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");
    assert_eq!(j["ok"], false);
    let diags = j["diagnostics"].as_array().unwrap();
    let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "ptl::path_not_found",
            "ptl::unknown_field",
            "ptl::missing_field"
        ]
    );
    let d = &diags[1];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(
        (d["end_line"].as_u64(), d["end_column"].as_u64()),
        (Some(4), Some(6))
    );
    assert_eq!(d["severity"], "error");
    assert_eq!(d["help"], "did you mean `data`?");
    assert!(d["file"].as_str().unwrap().ends_with("two_errors.ptl"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ptl(&["check"]).status.code(), Some(2));
    assert_eq!(ptl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        ptl(&["check", "x.ptl", "--format", "xml"]).status.code(),
        Some(2)
    );
}

#[test]
fn missing_file_is_a_user_error() {
    let o = ptl(&["check", "does/not/exist.ptl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ptl::file_not_found"));
}

#[test]
fn fmt_check_names_files_that_would_change_and_fmt_fixes_them() {
    let f = temp("messy.ptl", "stage  x=merge{model=hf_model(\"m\")}\n");
    let path = f.to_str().unwrap();
    let o = ptl(&["fmt", "--check", path]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), format!("would reformat: {path}\n"));
    assert_eq!(ptl(&["fmt", path]).status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "stage x = merge {\n  model = hf_model(\"m\")\n}\n"
    );
    assert_eq!(ptl(&["fmt", "--check", path]).status.code(), Some(0));
}

#[test]
fn doc_lists_kinds_and_shows_a_schema() {
    let o = ptl(&["doc"]);
    assert_eq!(o.status.code(), Some(0));
    for kind in [
        "pt",
        "sft",
        "reward_model",
        "dpo",
        "simpo",
        "orpo",
        "kto",
        "ppo",
        "eval",
        "merge",
        "export",
    ] {
        assert!(
            stdout(&o).contains(&format!("  {kind} ")),
            "{kind} missing from `ptl doc`"
        );
    }
    let o = ptl(&["doc", "dpo"]);
    let text = stdout(&o);
    assert!(text.contains("beta") && text.contains("0.1"), "{text}");
    assert!(
        text.contains("outputs:") && text.contains("metrics"),
        "{text}"
    );
    let o = ptl(&["doc", "dpp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("did you mean `dpo`?"));
}

#[test]
fn stage_reference_doc_is_current() {
    let generated = ptl::cli::stage_reference_markdown();
    let committed = std::fs::read_to_string("docs/stages.md").unwrap_or_default();
    assert!(
        generated == committed,
        "docs/stages.md is stale: run `ptl doc --markdown > docs/stages.md`"
    );
}

#[test]
fn readme_error_example_is_current() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let marker = "$ ptl check pipelines/broken_example.ptl\n";
    let start = readme.find(marker).expect("README shows the example") + marker.len();
    let end = start + readme[start..].find("```").unwrap();
    let o = ptl(&["check", "pipelines/broken_example.ptl"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        &readme[start..end],
        "update the README's example output"
    );
}

/// Runs ptl in `dir` with PTL_STORE unset.
fn ptl_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(args)
        .current_dir(dir)
        .env_remove("PTL_STORE")
        .output()
        .expect("runs")
}

#[test]
fn every_command_finds_the_same_store_and_none_creates_one() {
    let root = std::env::temp_dir().join(format!("ptl-cli-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("pipelines/sub")).unwrap();
    std::fs::write(
        root.join("pipelines/p.ptl"),
        "stage a = test_step {\n  text = \"a\"\n}\n",
    )
    .unwrap();
    // Planning, graphing and asking for a path read the store; none of them makes one.
    for args in [
        &["plan", "pipelines/p.ptl"][..],
        &["graph", "pipelines/p.ptl"],
        &["path", "pipelines/p.ptl", "a"],
    ] {
        ptl_in(&root, args);
        assert!(!root.join("pipelines/.ptl").exists(), "{args:?}");
    }
    let o = ptl_in(&root, &["run", "pipelines/p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(root.join("pipelines/.ptl/entries").is_dir());

    // From the repository root, with no pipeline named: no store here or above, so say where one is.
    for args in [&["gc", "--dry-run"][..], &["store", "verify"]] {
        let o = ptl_in(&root, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("ptl::no_store"), "{err}");
        assert!(err.contains("no ptl store found"), "{err}");
        assert!(err.contains("found pipelines/.ptl"), "{err}");
        assert!(!root.join(".ptl").exists(), "{args:?} created a store");
    }
    // Naming the pipeline finds its store, as `ptl run` did.
    let o = ptl_in(&root, &["store", "verify", "pipelines/p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "store pipelines/.ptl\nok: 1 entry verified\n");
    let o = ptl_in(&root, &["gc", "--dry-run", "pipelines/p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("kept 1 entry"), "{}", stdout(&o));
    // So does looking upward from a folder below the store's.
    let o = ptl_in(&root.join("pipelines/sub"), &["store", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "store {}\nok: 1 entry verified\n",
            root.join("pipelines/.ptl").display()
        )
    );
    // A --store that does not exist is an error, not a new empty store.
    let o = ptl_in(&root, &["gc", "--store", "nowhere"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("nowhere does not exist"),
        "{}",
        stderr(&o)
    );
    assert!(!root.join("nowhere").exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = ptl(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(stdout(&o).contains("watch"), "{shell}");
    }
}

#[test]
fn doc_shows_defaults_as_ptl_and_whether_the_kind_runs() {
    let o = ptl(&["doc", "sft"]);
    let out = stdout(&o);
    assert!(out.contains("runs: yes"), "{out}");
    let tuning = out
        .lines()
        .find(|l| l.trim_start().starts_with("tuning "))
        .unwrap();
    assert!(tuning.contains(" full "), "{tuning}");
    assert!(!out.contains("{\"mode\""), "{out}");
    // The meaning column starts at the same place on every field line, under its header.
    let lines: Vec<Vec<char>> = out
        .lines()
        .skip_while(|l| !l.starts_with("fields:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.chars().collect())
        .collect();
    let header: String = lines[0].iter().collect();
    assert!(header.ends_with("meaning"), "{header}");
    let at = header.chars().count() - "meaning".len();
    for l in &lines[1..] {
        assert!(
            l[at - 1] == ' ' && l[at] != ' ',
            "{}",
            l.iter().collect::<String>()
        );
    }
    let o = ptl(&["doc", "ppo"]);
    assert!(stdout(&o).contains("runs: yes"), "{}", stdout(&o));
    // Test builds add a kind whose execution is not built.
    let o = ptl(&["doc", "test_unbuilt"]);
    assert!(stdout(&o).contains("runs: not yet"), "{}", stdout(&o));
}
