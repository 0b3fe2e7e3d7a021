//! `pt` and `sft` stages train for real through `ptl run`: a tiny checkpoint, a byte-level tokenizer,
//! a chat template file; the loss goes down, the outputs load, a second run is cached.

mod common;

use common::{ptl, run_ok, setup, text, Dir};

use candle_core::Device;
use ptl::model::decoder::Decoder;
use std::path::Path;
use std::process::Command;

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
    for key in ["lr", "grad_norm", "epoch", "tokens"] {
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
fn packed_rows_train_like_padded_rows() {
    // All documents in one batch: packing changes the layout, not the loss.
    let stage = |packing: bool| {
        format!("stage cpt = pt {{\n  model = hf_model(\"m\")\n  data = jsonl(\"text.jsonl\", format = \"text\")\n  max_steps = 1\n  batch_size = 2\n  packing = {packing}\n}}\n")
    };
    let packed = setup("packed", &stage(true));
    let out = run_ok(&packed.0, &[]);
    assert!(
        out.contains("cpt: packed 2 sequences into 1 rows of ≤ 1024 tokens"),
        "{out}"
    );
    let padded = setup("padded", &stage(false));
    run_ok(&padded.0, &[]);
    let (a, b) = (
        metrics(&packed.0, "cpt")[0]["loss"].as_f64().unwrap(),
        metrics(&padded.0, "cpt")[0]["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "packed {a} vs padded {b}");
}

/// `gradient_checkpointing = true` trains the same steps: every logged loss and gradient norm of a
/// LoRA stage with dropout, and of a full one, equals the run without it exactly.
#[test]
fn gradient_checkpointing_trains_the_same_steps() {
    let stage = |tuning: &str, checkpointing: bool| {
        format!("stage cpt = pt {{\n  model = hf_model(\"m\")\n  data = jsonl(\"text.jsonl\", format = \"text\")\n  tuning = {tuning}\n  max_steps = 3\n  batch_size = 1\n  lr = 1e-2\n  gradient_checkpointing = {checkpointing}\n}}\n")
    };
    for tuning in ["lora(rank = 4, dropout = 0.2)", "full"] {
        let runs: Vec<Vec<serde_json::Value>> = [false, true]
            .iter()
            .map(|&on| {
                let d = setup(&format!("ckpt-{}-{on}", tuning.len()), &stage(tuning, on));
                let out = run_ok(&d.0, &[]);
                assert_eq!(
                    out.contains("gradient checkpointing: each of the"),
                    on,
                    "{out}"
                );
                metrics(&d.0, "cpt")
            })
            .collect();
        assert_eq!((runs[0].len(), runs[1].len()), (3, 3));
        for (plain, recomputed) in runs[0].iter().zip(&runs[1]) {
            for key in ["loss", "grad_norm"] {
                let (a, b) = (
                    plain[key].as_f64().unwrap(),
                    recomputed[key].as_f64().unwrap(),
                );
                assert!(
                    a == b,
                    "{tuning} step {}: {key} {a} without, {b} with gradient checkpointing",
                    plain["step"]
                );
            }
        }
    }
}

/// The files of a stage's `model` output, by name.
fn model_files(dir: &Path, stage: &str) -> Vec<(String, Vec<u8>)> {
    let o = ptl(dir, &["path", "p.ptl", stage]);
    let model = dir
        .join(String::from_utf8_lossy(&o.stdout).trim())
        .join("model");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// `ptl run p.ptl` in `dir`, aborting the process after training step `step` (test builds only).
fn run_crashing(dir: &Path, step: u64) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .env("PTL_FAULT", format!("crash_after_step:{step}"))
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn a_crashed_stage_resumes_and_ends_bit_identical() {
    // (name, fields, the step of the newest checkpoint when the run dies after step 5)
    for (name, fields, resume) in [
        (
            "lora",
            "tuning = lora(rank = 4, dropout = 0.1)\n  save_every = 3",
            3,
        ),
        ("full", "grad_accum = 2\n  save_every = 3", 3),
        // By wall-clock time alone: a tiny interval checkpoints after every step.
        ("time", "save_every = 0\n  save_minutes = 0.000001", 5),
    ] {
        let pipeline = format!(
            "stage tuned = sft {{\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  {fields}\n  lr = 1e-2\n  max_steps = 8\n  batch_size = 2\n}}\n"
        );
        let whole = setup(&format!("whole-{name}"), &pipeline);
        run_ok(&whole.0, &[]);
        let crashed = setup(&format!("crashed-{name}"), &pipeline);
        assert_eq!(
            run_crashing(&crashed.0, 5).status.code(),
            None,
            "{name}: killed by a signal"
        );
        let plan =
            String::from_utf8_lossy(&ptl(&crashed.0, &["plan", "p.ptl"]).stdout).into_owned();
        assert!(
            plan.contains(&format!("resumes from its checkpoint at step {resume}")),
            "{name}: {plan}"
        );
        let out = run_ok(&crashed.0, &[]);
        assert!(
            out.contains(&format!(
                "tuned: resuming from the checkpoint at step {resume}"
            )),
            "{name}: {out}"
        );
        assert!(
            model_files(&whole.0, "tuned") == model_files(&crashed.0, "tuned"),
            "{name}: the resumed run's weights differ from the uninterrupted run's"
        );
        let m = metrics(&crashed.0, "tuned");
        assert_eq!(
            m.len(),
            8,
            "{name}: one line per step, none lost or doubled"
        );
        assert_eq!(m, metrics(&whole.0, "tuned"), "{name}");
        assert!(
            std::fs::read_dir(crashed.0.join(".ptl/checkpoints"))
                .unwrap()
                .next()
                .is_none(),
            "{name}: checkpoints are removed once the stage commits"
        );
    }
}

#[test]
fn editing_the_template_file_makes_the_stage_stale() {
    let d = setup(
        "template",
        "stage tuned = sft {\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  max_steps = 1\n}\n",
    );
    run_ok(&d.0, &[]);
    let plan = |d: &Path| String::from_utf8_lossy(&ptl(d, &["plan", "p.ptl"]).stdout).into_owned();
    assert!(plan(&d.0).contains("cached"), "{}", plan(&d.0));
    let t = d.0.join("chat.jinja");
    let text = std::fs::read_to_string(&t).unwrap();
    std::fs::write(&t, text.replace("<assistant>", "<bot>")).unwrap();
    let after = plan(&d.0);
    assert!(after.contains("chat.jinja changed"), "{after}");
}

#[test]
fn init_sft_and_eval_exact_match() {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tokenizers/tiny-chat");
    let pipeline = format!(
        "stage base = init {{\n  tokenizer = \"{}\"\n  hidden_size = 64\n}}\n\n\
         stage tuned = sft {{\n  model = base.model\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  lr = 1e-2\n  epochs = 60\n  batch_size = 12\n  max_len = 32\n}}\n\n\
         stage score = eval {{\n  models = [base.model, tuned.model]\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  metrics = [\"loss\", \"perplexity\", \"exact_match\"]\n  max_new_tokens = 4\n}}\n",
        tokenizer.display()
    );
    let d = setup("eval", &pipeline);
    let out = run_ok(&d.0, &[]);
    let o = ptl(&d.0, &["path", "p.ptl", "score"]);
    let score = d.0.join(String::from_utf8_lossy(&o.stdout).trim());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(score.join("metrics.json")).unwrap()).unwrap();
    let models = m["models"].as_array().unwrap();
    assert_eq!(models[0]["model"], "base.model");
    assert_eq!(models[1]["model"], "tuned.model");
    let (before, after) = (&models[0], &models[1]);
    // The untrained model's eval loss is the sft stage's step-1 loss: same rows, same masks, and
    // with batch_size = every row, the same token mean.
    let step1 = metrics(&d.0, "tuned")[0]["loss"].as_f64().unwrap();
    let base_loss = before["loss"].as_f64().unwrap();
    assert!((base_loss - step1).abs() < 1e-5, "{base_loss} vs {step1}");
    assert!(
        (before["perplexity"].as_f64().unwrap() - base_loss.exp()).abs() < 1e-9,
        "perplexity = exp(loss)"
    );
    assert_eq!(before["answered"], 12);
    assert_eq!(before["exact_match"], 0.0, "{out}");
    assert!(
        after["exact_match"].as_f64().unwrap() >= 0.5,
        "the tuned model answers its training rows: {after:#}"
    );
    assert!(after["loss"].as_f64().unwrap() < 0.5 * base_loss);
    assert_eq!(after["examples"].as_array().unwrap().len(), 5);
    assert!(out.contains("score: tuned.model: loss"), "{out}");
}

#[test]
fn init_is_reproducible_from_its_seed() {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tokenizers/tiny-chat");
    let stage = |seed: u32| {
        format!(
            "stage base = init {{\n  tokenizer = \"{}\"\n  hidden_size = 32\n  seed = {seed}\n}}\n",
            tokenizer.display()
        )
    };
    let weights = |d: &Path| {
        let o = ptl(d, &["path", "p.ptl", "base"]);
        let out = d.join(String::from_utf8_lossy(&o.stdout).trim());
        assert!(out.join("model/tokenizer.json").is_file());
        std::fs::read(out.join("model/model.safetensors")).unwrap()
    };
    let (a, b, c) = (
        setup("init-a", &stage(1)),
        setup("init-b", &stage(1)),
        setup("init-c", &stage(2)),
    );
    for d in [&a, &b, &c] {
        run_ok(&d.0, &[]);
    }
    assert!(weights(&a.0) == weights(&b.0), "same seed, same weights");
    assert!(
        weights(&a.0) != weights(&c.0),
        "another seed, other weights"
    );
    let model = Decoder::load(
        &a.0.join(String::from_utf8_lossy(&ptl(&a.0, &["path", "p.ptl", "base"]).stdout).trim())
            .join("model"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(model.cfg.vocab_size, 100);
    assert_eq!(model.cfg.hidden_size, 32);
}

/// A copy of the quickstart (pipeline, tokenizer, data) in a temporary folder.
fn quickstart(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("ptl-quickstart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for sub in ["tokenizers/tiny-chat", "data/quickstart"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for f in std::fs::read_dir(src.join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(src.join("quickstart.ptl"), dir.join("quickstart.ptl")).unwrap();
    Dir(dir)
}

/// `ptl run quickstart.ptl`, shortened with --set (the full run takes minutes in release), with
/// `extra` arguments and `store` as PTL_STORE.
fn run_quickstart(dir: &Path, store: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args([
            "run",
            "quickstart.ptl",
            "--set",
            "pretrained.max_steps=2",
            "--set",
            "tuned.max_steps=2",
        ])
        .args(extra)
        .env("PTL_STORE", store)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn the_quickstart_runs_end_to_end_and_then_is_cached() {
    // The README's first command.
    let d = quickstart("e2e");
    let o = run_quickstart(&d.0, ".ptl", &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        out.ends_with("0 cached, 4 ran, 0 failed, 0 blocked\n"),
        "{out}"
    );
    assert!(out.contains("score: tuned.model: loss"), "{out}");
    let o = run_quickstart(&d.0, ".ptl", &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("4 cached, 0 ran, 0 failed, 0 blocked\n"),
        "{}",
        text(&o)
    );
}

#[test]
fn data_show_finds_the_tokenizer_of_a_stage_trained_from_an_init_stage() {
    // `tuned` trains from `pretrained`, which trains from `base = init {...}`: nothing is built yet.
    let d = quickstart("data-show");
    for stage in ["pretrained", "tuned"] {
        let o = ptl(
            &d.0,
            &["data", "show", "quickstart.ptl", stage, "--rows", "1"],
        );
        assert_eq!(o.status.code(), Some(0), "{stage}: {}", text(&o));
    }
}

#[test]
fn the_quickstart_reproduces_its_lock_file_on_fresh_stores() {
    let d = quickstart("locked");
    let lock_path = d.0.join("quickstart.ptl.lock");
    let mut locks = Vec::new();
    for store in ["store-a", "store-b"] {
        let _ = std::fs::remove_file(&lock_path);
        let o = run_quickstart(&d.0, store, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        locks.push(std::fs::read_to_string(&lock_path).unwrap());
    }
    // Every stage, training ones included, has the same key and output hashes on both stores.
    assert_eq!(locks[0], locks[1]);
    let lock: serde_json::Value = serde_json::from_str(&locks[0]).unwrap();
    for stage in ["base", "pretrained", "tuned", "score"] {
        assert!(
            lock["stages"][stage]["outputs"]
                .as_object()
                .is_some_and(|o| !o.is_empty()),
            "{stage}: {lock:#}"
        );
    }
    // A third fresh store under --locked recomputes everything and must match the lock file.
    let o = run_quickstart(&d.0, "store-c", &["--locked"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("0 cached, 4 ran, 0 failed, 0 blocked\n"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), locks[0]);
    // Timing stays out of the hashed outputs, in the entry beside its manifest.
    let tuned = std::fs::read_link(d.0.join("store-c/out/quickstart/tuned")).unwrap();
    let entry = d.0.join("store-c/out/quickstart").join(tuned).join("..");
    let timing = std::fs::read_to_string(entry.join("timing.jsonl")).unwrap();
    let metrics = std::fs::read_to_string(entry.join("out/metrics.jsonl")).unwrap();
    assert!(!metrics.contains("tokens_per_s"), "{metrics}");
    assert_eq!(timing.lines().count(), metrics.lines().count(), "{timing}");
    for line in timing.lines() {
        let t: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            t["tokens_per_s"].as_f64().is_some_and(|v| v > 0.0),
            "{line}"
        );
    }
}

#[test]
fn malformed_rows_fail_the_stage_unless_it_skips_them() {
    let stage = |skip: bool| {
        format!("stage tuned = sft {{\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  max_steps = 1\n  skip_malformed = {skip}\n}}\n")
    };
    for skip in [false, true] {
        let d = setup(&format!("malformed-{skip}"), &stage(skip));
        let rows = std::fs::read_to_string(d.0.join("train.jsonl")).unwrap();
        std::fs::write(
            d.0.join("train.jsonl"),
            format!("{rows}{{\"messages\": [{{\"role\": \"user\"\n{{\"text\": \"no messages\"}}\n"),
        )
        .unwrap();
        let o = ptl(&d.0, &["run", "p.ptl"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if skip {
            assert_eq!(o.status.code(), Some(0), "{out}");
            assert!(out.contains("tuned: skipping 2 malformed rows:"), "{out}");
            assert!(
                out.contains("train.jsonl:13:30: not JSON: EOF while parsing"),
                "{out}"
            );
            assert!(
                out.contains("tuned: 12 rows to train on (2 malformed)"),
                "{out}"
            );
        } else {
            assert_eq!(o.status.code(), Some(1), "{out}");
            // The file's line and column (the row is cut short after its 29th character), not
            // serde_json's position inside the row, and the way to skip such rows.
            let all = text(&o);
            assert!(
                all.contains("train.jsonl:13:30: not JSON: EOF while parsing an object\n"),
                "{all}"
            );
            assert!(!all.contains("at line"), "{all}");
            assert!(all.contains("`skip_malformed = true`"), "{all}");
            assert!(
                out.contains("train.jsonl:14: a messages row needs messages"),
                "{out}"
            );
        }
    }
}

#[test]
fn gc_keeps_resumable_checkpoints_unless_asked() {
    let d = setup(
        "gc-checkpoints",
        "stage tuned = sft {\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  max_steps = 6\n  batch_size = 2\n  save_every = 2\n}\n",
    );
    assert_eq!(
        run_crashing(&d.0, 3).status.code(),
        None,
        "killed by a signal"
    );
    let checkpoints = || {
        std::fs::read_dir(d.0.join(".ptl/checkpoints"))
            .unwrap()
            .count()
    };
    let o = ptl(&d.0, &["gc"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("kept the checkpoints of 1 unfinished or running stage"),
        "{out}"
    );
    assert_eq!(checkpoints(), 1);
    let o = ptl(&d.0, &["gc", "--checkpoints"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("removed checkpoints of "), "{out}");
    assert_eq!(checkpoints(), 0);
    let out = run_ok(&d.0, &[]);
    assert!(!out.contains("resuming"), "{out}");
}

/// The dtypes of a safetensors file's tensors (from its JSON header).
fn safetensors_dtypes(file: &Path) -> std::collections::BTreeSet<String> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect()
}

/// A stage saves its model in the input checkpoint's dtype unless `save_dtype` says otherwise: a bf16
/// checkpoint trained in f32 comes back bf16 (config.json says so), and `save_dtype = "f32"` keeps
/// the f32 weights; the adapter stays f32 either way.
#[test]
fn trained_models_are_saved_in_the_checkpoints_dtype_unless_asked() {
    let d = Dir(std::env::temp_dir().join(format!("ptl-save-dtype-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&d.0);
    std::fs::create_dir_all(d.0.join("base")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            Path::new("tests/fixtures/mergekit/a").join(f),
            d.0.join("base").join(f),
        )
        .unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            Path::new("tests/fixtures/nf4/qwen3").join(f),
            d.0.join("base").join(f),
        )
        .unwrap();
    }
    common::quickstart_chat(&d.0, 8);
    let stage = |name: &str, extra: &str| {
        format!("stage {name} = sft {{\n  model = hf_model(\"base\")\n  data = jsonl(\"chat.jsonl\", format = \"messages\")\n  tuning = lora(rank = 4)\n  batch_size = 4\n  max_steps = 1\n{extra}}}\n")
    };
    std::fs::write(
        d.0.join("p.ptl"),
        stage("as_is", "") + &stage("widened", "  save_dtype = \"f32\"\n"),
    )
    .unwrap();
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for (name, dtype, recorded) in [("as_is", "BF16", "bfloat16"), ("widened", "F32", "float32")] {
        let out =
            d.0.join(String::from_utf8_lossy(&ptl(&d.0, &["path", "p.ptl", name]).stdout).trim());
        assert_eq!(
            safetensors_dtypes(&out.join("model/model.safetensors")),
            [dtype.to_string()].into(),
            "{name}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model/config.json")).unwrap())
                .unwrap();
        assert_eq!(config["dtype"], recorded, "{name}");
        assert_eq!(
            safetensors_dtypes(&out.join("adapter/adapter_model.safetensors")),
            ["F32".to_string()].into()
        );
    }
}

/// `init` offers Gemma 3: the new model loads, trains (its loss falls) and saves a folder that loads
/// again with every Gemma weight (the norms around attention and the MLP included).
#[test]
fn init_makes_a_gemma3_model_that_trains() {
    let d = common::pipeline_copy("gemma-init", &["tokenizers/tiny-chat", "data/quickstart"]);
    std::fs::write(
        d.0.join("p.ptl"),
        "stage base = init {\n  tokenizer = \"tokenizers/tiny-chat\"\n  arch = \"gemma3\"\n  layers = 6\n}\n\nstage tuned = sft {\n  model = base.model\n  data = jsonl(\"data/quickstart/train.jsonl\", format = \"messages\")\n  max_steps = 12\n  lr = 1e-2\n  batch_size = 16\n  max_len = 64\n}\n",
    )
    .unwrap();
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = metrics(&d.0, "tuned");
    let loss = |i: usize| m[i]["loss"].as_f64().unwrap();
    assert!(loss(m.len() - 1) < loss(0), "{m:?}");
    let o = ptl(&d.0, &["path", "p.ptl", "tuned"]);
    let out =
        d.0.join(String::from_utf8_lossy(&o.stdout).trim())
            .join("model");
    let mut model = Decoder::load(&out, &Device::Cpu).unwrap();
    assert_eq!(model.cfg.arch, ptl::model::config::Arch::Gemma3);
    let names: Vec<String> = model.params_mut().into_iter().map(|(n, _)| n).collect();
    assert!(names
        .iter()
        .any(|n| n.ends_with("post_feedforward_layernorm.weight")));
    assert_eq!(
        (0..6).map(|i| model.cfg.is_sliding(i)).collect::<Vec<_>>(),
        [true, true, true, true, true, false]
    );
}
