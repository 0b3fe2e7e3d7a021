//! `pt` and `sft` stages train for real through `ptl run`: a tiny checkpoint, a byte-level tokenizer,
//! a chat template file; the loss goes down, the outputs load, a second run is cached.

mod common;

use candle_core::Device;
use ptl::model::decoder::Decoder;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(name: &str, pipeline: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("ptl-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("m")).unwrap();
    for f in std::fs::read_dir("tests/fixtures/models/llama").unwrap() {
        let f = f.unwrap().path();
        if f.file_name().is_some_and(|n| n != "expected.json") {
            std::fs::copy(&f, dir.join("m").join(f.file_name().unwrap())).unwrap();
        }
    }
    common::byte_tokenizer(&dir.join("m"));
    std::fs::write(
        dir.join("chat.jinja"),
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
    )
    .unwrap();
    let rows: String = (0..12)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"messages": [{"role": "user", "content": format!("{i}+1=")}, {"role": "assistant", "content": format!("{}", i + 1)}]})
            )
        })
        .collect();
    std::fs::write(dir.join("train.jsonl"), rows).unwrap();
    std::fs::write(
        dir.join("text.jsonl"),
        "{\"text\": \"abc abc abc abc\"}\n{\"text\": \"abd abd abd\"}\n",
    )
    .unwrap();
    std::fs::write(dir.join("p.ptl"), pipeline).unwrap();
    Dir(dir)
}

fn ptl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn metrics(dir: &Path, stage: &str) -> Vec<serde_json::Value> {
    let o = ptl(dir, &["path", "p.ptl", stage]);
    let out = dir.join(String::from_utf8_lossy(&o.stdout).trim());
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const PIPELINE: &str = r#"let base = hf_model("m")

stage tuned = sft {
  model = base
  data = jsonl("train.jsonl", format = "messages")
  template = "chat.jinja"
  tuning = lora(rank = 8)
  lr = 1e-2
  epochs = 4
  batch_size = 4
  max_len = 32
}

stage cpt = pt {
  model = tuned.model
  data = jsonl("text.jsonl", format = "text")
  tuning = full
  lr = 1e-3
  max_steps = 6
  batch_size = 2
  grad_accum = 2
  schedule = "cosine"
  warmup_steps = 2
}
"#;

#[test]
fn sft_then_pt_train_and_cache() {
    let d = setup("chain", PIPELINE);
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let sft = metrics(&d.0, "tuned");
    assert_eq!(sft.len(), 12, "12 rows / batch 4 × 4 epochs");
    let first = sft[0]["loss"].as_f64().unwrap();
    let last = sft.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < 0.5 * first, "sft loss {first} → {last}");
    for key in ["lr", "grad_norm", "tokens_per_s", "epoch"] {
        assert!(sft[0][key].is_number(), "{key} logged");
    }
    let pt = metrics(&d.0, "cpt");
    assert_eq!(pt.len(), 6);
    assert_eq!(pt[0]["lr"], 0.0, "warmup starts at 0");
    assert!(
        (pt[2]["lr"].as_f64().unwrap() - 1e-3).abs() < 1e-12,
        "peak after 2 warmup steps"
    );
    // The LoRA stage writes a merged model (which the next stage trained from) and its adapter.
    let tuned =
        d.0.join(String::from_utf8_lossy(&ptl(&d.0, &["path", "p.ptl", "tuned"]).stdout).trim());
    assert!(tuned.join("adapter/adapter_config.json").is_file());
    let model = Decoder::load(&tuned.join("model"), &Device::Cpu).unwrap();
    let ids: Vec<u32> = "<user>3+1=\n<assistant>4\n"
        .bytes()
        .map(u32::from)
        .collect();
    let base = Decoder::load(&d.0.join("m"), &Device::Cpu).unwrap();
    let (after, before) = (
        model.token_logprobs(&ids).unwrap(),
        base.token_logprobs(&ids).unwrap(),
    );
    let answer = ids.len() - 3; // log p("4" | ...)
    assert!(
        after[answer] > before[answer],
        "the tuned model prefers the right answer"
    );
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("2 cached, 0 ran, 0 failed, 0 blocked\n"));
    assert_eq!(ptl(&d.0, &["store", "verify"]).status.code(), Some(0));
}

#[test]
fn pt_says_that_packing_is_not_applied() {
    let d = setup(
        "packing",
        "stage cpt = pt {\n  model = hf_model(\"m\")\n  data = jsonl(\"text.jsonl\", format = \"text\")\n  max_steps = 1\n  batch_size = 1\n}\n",
    );
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cpt: packing is not built yet"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
