//! The checker's results on valid pipelines: defaults, references, functions, imports, overrides.

use ptl::lang::check::{check_bytes, check_file, Checked};
use ptl::lang::diag::render;
use ptl::lang::pipeline::Pipeline;
use ptl::lang::value::{Tuning, Value};
use std::path::Path;

fn ok(c: Checked) -> Pipeline {
    if c.pipeline.is_none() {
        panic!("check failed:\n{}", render(&c.diags, &c.sources, false));
    }
    c.pipeline.unwrap()
}

/// Checks `text` as if it were a file in pipelines/ (so it sees pipelines/data and pipelines/models).
fn check(text: &str, set: &[&str]) -> Checked {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    check_bytes(Path::new("pipelines/test.ptl"), text.as_bytes(), &set)
}

fn param<'a>(p: &'a Pipeline, stage: &str, field: &str) -> &'a Value {
    let id = p
        .stage_id(stage)
        .unwrap_or_else(|| panic!("no stage {stage}"));
    p.stages[id].params.get(field).unwrap_or(&Value::None)
}

const HEAD: &str = r#"
let base = hf_model("models/qwen3-tiny")
let chat = jsonl("data/chat.jsonl", format = "sharegpt")
let prefs = jsonl("data/prefs.jsonl", format = "preference")
"#;

#[test]
fn chat_assistant_resolves_with_defaults() {
    let p = ok(check_file(Path::new("pipelines/chat_assistant.ptl"), &[]));
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["base", "sft", "rm", "aligned", "report", "shipped"]);
    assert_eq!(p.edge_count(), 8);
    assert_eq!(param(&p, "aligned", "beta"), &Value::Float(0.1));
    assert_eq!(param(&p, "aligned", "loss"), &Value::Str("sigmoid".into()));
    assert_eq!(param(&p, "aligned", "lr"), &Value::Float(1e-6));
    assert_eq!(param(&p, "aligned", "seed"), &Value::Int(42));
    assert_eq!(param(&p, "sft", "lr"), &Value::Float(2e-4));
    assert_eq!(
        param(&p, "sft", "epochs"),
        &Value::Float(2.0),
        "ints widen to floats"
    );
    match param(&p, "sft", "tuning") {
        Value::Tuning(Tuning::Lora(l)) => {
            assert_eq!(
                (l.rank, l.alpha, l.targets.clone()),
                (16, 32.0, vec!["all-linear".to_string()])
            )
        }
        other => panic!("tuning {other:?}"),
    }
    match param(&p, "rm", "tuning") {
        Value::Tuning(Tuning::Lora(l)) => assert_eq!(l.alpha, 16.0, "alpha defaults to 2 × rank"),
        other => panic!("tuning {other:?}"),
    }
    let report = p.stage_id("report").unwrap();
    let deps: Vec<&str> = p.stages[report]
        .deps
        .iter()
        .map(|d| p.stages[*d].name.as_str())
        .collect();
    assert_eq!(deps, ["base", "sft", "rm", "aligned"]);
    let json = p.params_json(p.stage_id("aligned").unwrap());
    assert_eq!(
        json["model"],
        serde_json::json!({"stage": "sft", "output": "model"})
    );
}

#[test]
fn stages_may_be_used_before_they_are_declared() {
    let p = ok(check(
        &format!("{HEAD}stage b = dpo {{ model = a.model, data = prefs }}\nstage a = sft {{ model = base, data = chat }}\n"),
        &[],
    ));
    let b = p.stage_id("b").unwrap();
    assert_eq!(p.stages[b].deps, vec![p.stage_id("a").unwrap()]);
}

#[test]
fn overrides_reach_stages_config_and_lets() {
    let text = format!(
        "{HEAD}let epochs = 1\nstage a = sft {{ model = base, data = chat, epochs = epochs }}\nstage b = dpo {{ model = a.model, data = prefs }}\n"
    );
    let p = ok(check(
        &text,
        &[
            "b.beta=0.25",
            "b.loss=ipo",
            "config.seed=7",
            "epochs=5",
            "a.tuning=lora(rank = 2)",
            "track.experiment=exp one",
        ],
    ));
    assert_eq!(param(&p, "b", "beta"), &Value::Float(0.25));
    assert_eq!(param(&p, "b", "loss"), &Value::Str("ipo".into()));
    assert_eq!(param(&p, "b", "seed"), &Value::Int(7));
    assert_eq!(param(&p, "a", "epochs"), &Value::Float(5.0));
    assert!(matches!(param(&p, "a", "tuning"), Value::Tuning(Tuning::Lora(l)) if l.rank == 2));
    assert_eq!(
        p.track.get("experiment"),
        Some(&Value::Str("exp one".into()))
    );
}

#[test]
fn a_stdlib_recipe_declares_qualified_stages() {
    let text = format!(
        "import \"std/recipes.ptl\" as recipes\n{HEAD}stage v1 = recipes.sft_dpo(base, chat, prefs, beta = 0.2)\nstage v2 = recipes.sft_dpo(base, chat, prefs)\nstage report = eval {{ models = [v1.sft.model, v1.model, v2.model], data = prefs }}\n"
    );
    let p = ok(check(&text, &["v2.dpo.beta=0.3"]));
    let mut names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["report", "v1.dpo", "v1.sft", "v2.dpo", "v2.sft"]);
    assert_eq!(param(&p, "v1.dpo", "beta"), &Value::Float(0.2));
    assert_eq!(param(&p, "v2.dpo", "beta"), &Value::Float(0.3));
    assert_eq!(param(&p, "v1.sft", "epochs"), &Value::Float(2.0));
    let report = p.stage_id("report").unwrap();
    let mut deps: Vec<&str> = p.stages[report]
        .deps
        .iter()
        .map(|d| p.stages[*d].name.as_str())
        .collect();
    deps.sort();
    assert_eq!(deps, ["v1.dpo", "v1.sft", "v2.dpo"]);
}

#[test]
fn the_sft_grpo_recipe_declares_an_sft_and_a_grpo_stage() {
    let text = format!(
        "import \"std/recipes.ptl\" as recipes\n{HEAD}stage rl = recipes.sft_grpo(base, chat, chat, steps = 5)\n"
    );
    let p = ok(check(&text, &[]));
    assert_eq!(param(&p, "rl.grpo", "max_steps"), &Value::Int(5));
    assert_eq!(param(&p, "rl.grpo", "batch_size"), &Value::Int(64));
}

#[test]
fn the_sft_rm_ppo_recipe_declares_the_rlhf_path() {
    let text = format!(
        "import \"std/recipes.ptl\" as recipes\n{HEAD}stage rlhf = recipes.sft_rm_ppo(base, chat, prefs, chat, steps = 7)\n"
    );
    let p = ok(check(&text, &[]));
    let mut names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["rlhf.ppo", "rlhf.rm", "rlhf.sft"]);
    assert_eq!(param(&p, "rlhf.ppo", "max_steps"), &Value::Int(7));
    let ppo = p.stage_id("rlhf.ppo").unwrap();
    let mut deps: Vec<&str> = p.stages[ppo]
        .deps
        .iter()
        .map(|d| p.stages[*d].name.as_str())
        .collect();
    deps.sort();
    assert_eq!(deps, ["rlhf.rm", "rlhf.sft"]);
}

#[test]
fn relative_imports_and_their_functions() {
    let p = ok(check_bytes(
        Path::new("tests/check/main.ptl"),
        b"import \"lib.ptl\"\nlet m = hf_model(\"../../pipelines/models/qwen3-tiny\")\nlet d = jsonl(\"../../pipelines/data/chat.jsonl\")\nstage small = lib.tuned(m, d)\nstage big = lib.tuned(m, d, rank = 32)\n",
        &[],
    ));
    assert!(
        matches!(param(&p, "small.sft", "tuning"), Value::Tuning(Tuning::Lora(l)) if l.rank == 4)
    );
    assert!(
        matches!(param(&p, "big.sft", "tuning"), Value::Tuning(Tuning::Lora(l)) if l.rank == 32)
    );
}

#[test]
fn arithmetic_and_env_defaults() {
    std::env::set_var("PTL_TEST_EPOCHS", "4");
    let text = format!(
        "{HEAD}let r = 8\nstage a = sft {{ model = base, data = chat, tuning = lora(rank = r * 2, alpha = r / 2), epochs = env(\"PTL_TEST_EPOCHS\", 1), lr = 1e-4 * 2, max_len = 512 + 512 }}\n"
    );
    let p = ok(check(&text, &[]));
    assert!(
        matches!(param(&p, "a", "tuning"), Value::Tuning(Tuning::Lora(l)) if l.rank == 16 && l.alpha == 4.0)
    );
    assert_eq!(param(&p, "a", "epochs"), &Value::Float(4.0));
    assert_eq!(param(&p, "a", "lr"), &Value::Float(2e-4));
    assert_eq!(param(&p, "a", "max_len"), &Value::Int(1024));
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let text = format!(
        "{HEAD}stage a = sft {{ model = base, data = chat, lrr = 1 }}\nstage b = dpo {{ model = a.modle, data = chat }}\nstage c = evall {{}}\n"
    );
    let c = check(&text, &[]);
    let codes: Vec<&str> = c.diags.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            "ptl::unknown_field",
            "ptl::unknown_output",
            "ptl::type_mismatch",
            "ptl::unknown_kind"
        ]
    );
}
