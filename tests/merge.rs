//! `merge`: a LoRA stage's adapter folded into its base gives the base + adapter's numbers; a linear
//! merge of a model with itself and a slerp at t = 0 give the model back bit for bit; slerp, ties and
//! linear merges of two fine-tunes run and differ from both; linear, slerp and TIES give mergekit's
//! own merges' numbers; wrong combinations are check errors.

mod common;

use common::{text, Dir};
use ptl::model::decoder::Decoder;
use std::path::Path;

const HEAD: &str = r#"stage base = init {
  tokenizer = "tokenizers/tiny-chat"
  size = "tiny"
}

stage a = sft {
  model = base.model
  data = jsonl("chat.jsonl", format = "messages")
  tuning = lora(rank = 4)
  lr = 5e-2
  max_steps = 3
}

stage b = sft {
  model = base.model
  data = jsonl("chat.jsonl", format = "messages")
  lr = 5e-3
  max_steps = 3
  seed = 3
}
"#;

fn workdir(name: &str, stages: &str) -> Dir {
    let d = common::pipeline_copy(&format!("merge-{name}"), &["tokenizers/tiny-chat"]);
    common::quickstart_chat(&d.0, 16);
    std::fs::write(d.0.join("p.ptl"), format!("{HEAD}\n{stages}")).unwrap();
    d
}

fn out(d: &Path, stage: &str) -> std::path::PathBuf {
    let o = common::ptl(d, &["path", "p.ptl", stage]);
    d.join(String::from_utf8_lossy(&o.stdout).trim())
}

fn load(p: &Path) -> Decoder {
    Decoder::load(p, &candle_core::Device::Cpu).unwrap()
}

const IDS: [u32; 12] = [3, 17, 22, 40, 41, 5, 60, 61, 62, 9, 10, 11];

#[test]
fn merges_give_the_numbers_they_promise() {
    let d = workdir(
        "promise",
        r#"stage folded = merge {
  model = a.model
}

stage same = merge {
  models = [b.model, b.model]
  weights = [1, 3]
}

stage first = merge {
  models = [a.model, b.model]
  method = "slerp"
  t = 0.0
}

stage half = merge {
  models = [a.model, b.model]
  method = "slerp"
}

stage tied = merge {
  models = [a.model, b.model]
  method = "ties"
  base = base.model
  density = 0.5
}
"#,
    );
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The adapter folded in: the base with the adapter on top gives the same log-probs.
    let mut with_adapter = load(&out(&d.0, "base").join("model"));
    with_adapter
        .load_adapter(&out(&d.0, "a").join("adapter"))
        .unwrap();
    let want = with_adapter.token_logprobs(&IDS).unwrap();
    let got = load(&out(&d.0, "folded").join("model"))
        .token_logprobs(&IDS)
        .unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "folded adapter: {worst}");
    // A model merged with itself, and slerp at t = 0, are the model, bit for bit.
    let b = load(&out(&d.0, "b").join("model"))
        .token_logprobs(&IDS)
        .unwrap();
    let a = load(&out(&d.0, "a").join("model"))
        .token_logprobs(&IDS)
        .unwrap();
    assert_eq!(
        load(&out(&d.0, "same").join("model"))
            .token_logprobs(&IDS)
            .unwrap(),
        b
    );
    assert_eq!(
        load(&out(&d.0, "first").join("model"))
            .token_logprobs(&IDS)
            .unwrap(),
        a
    );
    // Real merges differ from both inputs.
    for stage in ["half", "tied"] {
        let m = load(&out(&d.0, stage).join("model"))
            .token_logprobs(&IDS)
            .unwrap();
        assert!(m != a && m != b, "{stage}");
    }
}

#[test]
fn wrong_combinations_are_check_errors() {
    for (stages, want) in [
        ("stage m = merge {\n  models = [a.model, b.model, base.model]\n  method = \"slerp\"\n}\n", "slerp interpolates two models, not 3"),
        ("stage m = merge {\n  models = [a.model, b.model]\n  method = \"ties\"\n}\n", "ties merges task vectors: it needs `base`"),
        ("stage m = merge {\n  models = [a.model, b.model]\n  weights = [1.0]\n}\n", "1 weights for 2 models"),
        ("stage m = merge {\n  model = b.model\n}\n", "has no adapter to merge"),
        ("stage m = merge {\n  method = \"linear\"\n}\n", "needs `model` or `models`"),
    ] {
        let d = workdir("errors", stages);
        let o = common::ptl(&d.0, &["check", "p.ptl"]);
        assert_eq!(o.status.code(), Some(1), "{stages}: {}", text(&o));
        assert!(text(&o).contains(want), "{stages}: {}", text(&o));
    }
}

/// Folding a PEFT adapter into its base (what a LoRA stage's `model` output holds, and what `merge`
/// writes) gives PEFT's own `merge_and_unload()` log-probs (tests/fixtures/peft_merge, made by
/// scripts/make_peft_merge_fixture.py with random A and B), in memory and after a save and reload
/// (within 1e-5; measured 1.4e-6).
#[test]
fn a_folded_adapter_gives_peft_merge_and_unload_numbers() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/peft_merge/expected.json").unwrap(),
    )
    .unwrap();
    let mut m = load(Path::new("tests/fixtures/nf4/qwen3"));
    m.load_adapter(Path::new("tests/fixtures/peft_merge/adapter"))
        .unwrap();
    m.merge_adapters().unwrap();
    let dir = std::env::temp_dir().join(format!("ptl-peft-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    m.save_hf(Path::new("tests/fixtures/nf4/qwen3"), &dir, 2 << 30)
        .unwrap();
    let saved = load(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut worst = 0f32;
    for row in want["rows"].as_array().unwrap() {
        let ids = common::token_ids(&row["ids"]);
        let peft = common::f32s(&row["token_logprobs"]);
        for model in [&m, &saved] {
            for (a, b) in model.token_logprobs(&ids).unwrap().iter().zip(&peft) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    eprintln!("folded adapter vs PEFT merge_and_unload: {worst:.2e}");
    assert!(worst <= 1e-5, "{worst}");
}

/// Linear, slerp and TIES merges of two fine-tunes (tests/fixtures/mergekit, made by
/// scripts/make_mergekit_fixture.py) give the per-token log-probs of the model mergekit writes for
/// the same configuration (within 1e-5, f32).
#[test]
fn merges_give_mergekit_numbers() {
    let root = std::env::current_dir().unwrap();
    let fixture = root.join("tests/fixtures/mergekit");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let merges = want["merges"].as_array().unwrap();
    let mut pipeline = format!(
        "let a = hf_model(\"{}\")\nlet b = hf_model(\"{}\")\nlet base = hf_model(\"{}\")\n",
        fixture.join("a").display(),
        fixture.join("b").display(),
        root.join("tests/fixtures/nf4/qwen3").display()
    );
    for m in merges {
        pipeline += &format!(
            "\nstage {} = merge {{\n  {}\n  dtype = \"f32\"\n}}\n",
            m["name"].as_str().unwrap(),
            m["ptl"].as_str().unwrap()
        );
    }
    let d = Dir(std::env::temp_dir().join(format!("ptl-mergekit-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&d.0);
    std::fs::create_dir_all(&d.0).unwrap();
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for m in merges {
        let name = m["name"].as_str().unwrap();
        let model = load(&out(&d.0, name).join("model"));
        let mut worst = 0f32;
        for row in m["rows"].as_array().unwrap() {
            let got = model
                .token_logprobs(&common::token_ids(&row["ids"]))
                .unwrap();
            for (g, w) in got.iter().zip(common::f32s(&row["token_logprobs"])) {
                worst = worst.max((g - w).abs());
            }
        }
        eprintln!("{name}: within {worst:.2e} of mergekit");
        assert!(worst < 1e-5, "{name}: {worst}");
    }
}
