//! Helpers shared by the integration tests (each test file uses some of them).
#![allow(dead_code)]

pub mod machine;
pub mod mlflow;
pub mod npm;
pub mod ray;
pub mod s3;
pub mod venv;

/// The quickstart's tiny chat model, SFT-trained briefly (`base`, then `tuned`, seed 3): the start of
/// the online-RL tests' pipelines (`concat!(tiny_sft_stages!(), "stage ...")`).
#[allow(unused_macros)]
macro_rules! tiny_sft_stages {
    () => {
        r#"config {
  seed = 3
}

stage base = init {
  tokenizer = "tokenizers/tiny-chat"
  size = "tiny"
}

stage tuned = sft {
  model = base.model
  data = jsonl("data/quickstart/train.jsonl", format = "messages")
  max_steps = 60
  lr = 5e-3
  batch_size = 32
  max_len = 64
  log_every = 60
}

"#
    };
}

use std::path::{Path, PathBuf};

/// The stages a `test_step` pipeline logged (`log = "ran.log"`), sorted; the log is emptied.
pub fn ran(dir: &Path) -> Vec<String> {
    let path = dir.join("ran.log");
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let mut lines: Vec<String> = log.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// A byte-level BPE tokenizer.json for the fixtures' 256-token vocabulary (GPT-2's byte-to-char map,
/// no merges), with byte 255 as EOS.
pub fn byte_tokenizer(dir: &Path) {
    let mut bs: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut vocab = serde_json::Map::new();
    for (b, c) in bs.iter().zip(&cs) {
        vocab.insert(
            char::from_u32(*c).unwrap().to_string(),
            serde_json::json!(b),
        );
    }
    let eos = char::from_u32(cs[bs.iter().position(|b| *b == 255).unwrap()])
        .unwrap()
        .to_string();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"eos_token": eos}).to_string(),
    )
    .unwrap();
}

/// A temporary folder, removed when dropped.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Dir {
    /// A fresh, empty temporary folder named after `name`.
    pub fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("ptl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

/// A training test's folder: the llama fixture with a byte-level tokenizer in `m/`, a chat template
/// `chat.jinja`, 12 chat rows `train.jsonl` ("i+1=" → i+1), two text rows `text.jsonl`, and `p.ptl`.
pub fn setup(name: &str, pipeline: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("ptl-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("m")).unwrap();
    for f in std::fs::read_dir("tests/fixtures/models/llama").unwrap() {
        let f = f.unwrap().path();
        if f.file_name().is_some_and(|n| n != "expected.json") {
            std::fs::copy(&f, dir.join("m").join(f.file_name().unwrap())).unwrap();
        }
    }
    byte_tokenizer(&dir.join("m"));
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

/// Runs the ptl binary in `dir`.
pub fn ptl(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(args)
        .current_dir(dir)
        .env_remove("PTL_STORE")
        .output()
        .unwrap()
}

/// stdout then stderr of a finished command.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output folder of `stage` of p.ptl in `dir` (`ptl path`).
pub fn stage_out(dir: &Path, stage: &str) -> std::path::PathBuf {
    let o = ptl(dir, &["path", "p.ptl", stage]);
    dir.join(String::from_utf8_lossy(&o.stdout).trim())
}

/// The lines of `stage`'s metrics.jsonl.
pub fn stage_metrics(dir: &Path, stage: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(stage_out(dir, stage).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every tensor of a stage's trained model, as f32 values.
pub fn trained_weights(dir: &Path, stage: &str) -> Vec<(String, Vec<f32>)> {
    let file = stage_out(dir, stage).join("model/model.safetensors");
    let mut w: Vec<(String, Vec<f32>)> =
        candle_core::safetensors::load(file, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                let t = t.to_dtype(candle_core::DType::F32).unwrap();
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (k, v)
            })
            .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The largest difference between two models' weights (as [`trained_weights`] reads them; same
/// tensor names).
pub fn furthest(x: &[(String, Vec<f32>)], y: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .flat_map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            x.iter().zip(y).map(|(x, y)| (x - y).abs())
        })
        .fold(0f32, f32::max)
}

/// Runs p.ptl in `dir` (which must train on 2 workers) and, for each `(two, one)` pair of its
/// stages, asserts that `one` moved the weights of `from` by more than 1e-3 and that `two` ended
/// with the same weights, bit for bit; returns each pair's metrics (3 steps each).
pub fn two_workers_as_one(
    dir: &Path,
    from: &str,
    pairs: &[(&str, &str)],
) -> Vec<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    let o = ptl(dir, &["run", "p.ptl"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("training on 2 workers"), "{t}");
    let start = trained_weights(dir, from);
    pairs
        .iter()
        .map(|&(two, one)| {
            let (a, b) = (trained_weights(dir, two), trained_weights(dir, one));
            let (moved, apart) = (furthest(&b, &start), furthest(&a, &b));
            eprintln!("{two} vs {one}: moved {moved:e}, apart {apart:e}");
            assert!(moved > 1e-3, "{one} moved the weights by at most {moved}");
            assert_eq!(apart, 0.0, "{two} vs {one}");
            let (ma, mb) = (stage_metrics(dir, two), stage_metrics(dir, one));
            assert_eq!(ma.len(), 3);
            (ma, mb)
        })
        .collect()
}

/// Asserts that two runs wrote the same model for `stage`, byte for byte.
pub fn same_model(a: &Path, b: &Path, stage: &str) {
    for f in ["model.safetensors", "config.json"] {
        assert!(
            std::fs::read(stage_out(a, stage).join("model").join(f)).unwrap()
                == std::fs::read(stage_out(b, stage).join("model").join(f)).unwrap(),
            "{f} differs after resuming"
        );
    }
}

/// Runs `before` (the stages upstream of the one under test) with `--only`, then the whole
/// pipeline p.ptl killed by `PTL_FAULT=crash_after_step:N` (`crash`), then again: the rerun's output
/// must contain `resumed` (the stage's "resuming from the checkpoint at step M" line).
pub fn crash_then_resume(dir: &Path, before: &[&str], crash: &str, resumed: &str) {
    for stage in before {
        let o = ptl(dir, &["run", "p.ptl", "--only", stage]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .env("PTL_FAULT", crash)
        .env_remove("PTL_STORE")
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "killed by a signal: {}", text(&o));
    let o = ptl(dir, &["run", "p.ptl"]);
    assert!(text(&o).contains(resumed), "{}", text(&o));
}

/// `ptl run p.ptl` in `dir` with extra environment variables; it must succeed. Returns its output.
pub fn run_ok(dir: &Path, env: &[(&str, &str)]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    let text = text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    text
}

/// The first line of a stage's metrics.jsonl, after a run of `p.ptl` in `dir`.
pub fn first_logged_step(dir: &Path, stage: &str) -> serde_json::Value {
    let o = ptl(dir, &["path", "p.ptl", stage]);
    let out = dir.join(String::from_utf8_lossy(&o.stdout).trim());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    serde_json::from_str(metrics.lines().next().unwrap()).unwrap()
}

/// Compares `keys` of ptl's logged step with a reference's (within `abs`, or `rel` of the reference's
/// magnitude when that is larger); prints every difference; returns one line per key out of bounds.
pub fn compare_metrics<'a>(
    label: &str,
    got: &serde_json::Value,
    want: &serde_json::Value,
    keys: impl IntoIterator<Item = &'a str>,
    abs: f64,
    rel: f64,
) -> Vec<String> {
    let mut problems = Vec::new();
    for key in keys {
        let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        eprintln!(
            "{label:36} {key:20} ptl {g:.7}  reference {w:.7}  diff {:+.2e}",
            g - w
        );
        if (g - w).abs() > abs.max(rel * w.abs()) {
            problems.push(format!("{label} {key}: ptl {g} vs reference {w}"));
        }
    }
    problems
}

/// [`compare_metrics`] for a case that also holds TRL's values from a float64 run of the same
/// trainer (its "float64" map): those keys against them within `float64_abs`, the others against
/// TRL's float32 values.
#[allow(dead_code)]
pub fn compare_metrics_with_float64<'a>(
    label: &str,
    got: &serde_json::Value,
    want: &serde_json::Value,
    keys: impl IntoIterator<Item = &'a str>,
    (abs, rel): (f64, f64),
    float64_abs: f64,
) -> Vec<String> {
    let exact = &want["float64"];
    let (f32_keys, f64_keys): (Vec<&str>, Vec<&str>) =
        keys.into_iter().partition(|k| exact.get(k).is_none());
    let mut problems = compare_metrics(label, got, want, f32_keys, abs, rel);
    let label = format!("{label} (TRL in float64)");
    problems.extend(compare_metrics(
        &label,
        got,
        exact,
        f64_keys,
        float64_abs,
        0.0,
    ));
    problems
}

/// A JSON list of token ids.
pub fn token_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON list of numbers, as f32.
pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The preference fixture (tests/fixtures/dpo: `policy/`, `reference/`, `data.jsonl`) in a temporary
/// folder, symlinks followed.
pub fn preference_workdir(name: &str) -> Dir {
    fixture_workdir(name, "dpo", &["policy", "reference"], &["data.jsonl"])
}

/// The folders `dirs` and files `files` of tests/fixtures/`fixture` in a temporary folder, symlinks
/// followed.
pub fn fixture_workdir(name: &str, fixture: &str, dirs: &[&str], files: &[&str]) -> Dir {
    let entries: Vec<&str> = dirs.iter().chain(files).copied().collect();
    copy_into_temp(
        &format!("{fixture}-{name}"),
        &Path::new("tests/fixtures").join(fixture),
        &entries,
    )
}

/// The first `n` rows of the quickstart's chat data (pipelines/data/quickstart/train.jsonl) written to
/// `dir`/chat.jsonl.
pub fn quickstart_chat(dir: &Path, n: usize) {
    let rows: String = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/quickstart/train.jsonl"),
    )
    .unwrap()
    .lines()
    .take(n)
    .map(|l| format!("{l}\n"))
    .collect();
    std::fs::write(dir.join("chat.jsonl"), rows).unwrap();
}

/// `entries` (files, or folders of files) of pipelines/ in a temporary folder, at the same
/// relative paths.
pub fn pipeline_copy(name: &str, entries: &[&str]) -> Dir {
    copy_into_temp(
        &format!("pipeline-{name}"),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"),
        entries,
    )
}

/// `entries` of `from` (files, or folders whose files are copied, symlinks followed) in a fresh
/// temporary folder named after `name`, at the same relative paths.
fn copy_into_temp(name: &str, from: &Path, entries: &[&str]) -> Dir {
    let dir = std::env::temp_dir().join(format!("ptl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in entries {
        let (src, dst) = (from.join(entry), dir.join(entry));
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            for f in std::fs::read_dir(&src).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    Dir(dir)
}

/// Runs `pipeline` (whose stage `aligned` trains for one step) in a fresh preference folder; the
/// step's logged metrics.
pub fn preference_step_one(name: &str, pipeline: &str) -> serde_json::Value {
    let d = preference_workdir(name);
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    let o = ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
    first_logged_step(&d.0, "aligned")
}
