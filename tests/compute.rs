//! `config { device, dtype, threads }` mean what they say: keys hold the device class and dtype
//! actually used (on a machine without CUDA, "auto" and "cpu" are one key), training in bf16 (f32
//! master weights, bf16 compute) follows the f32 loss curve, and `threads = 1` keeps a run on one
//! core.

mod common;

use common::{text, Dir};
use serde_json::Value;
use std::path::Path;

/// The quickstart's tokenizer and pretraining data in a temporary folder, with `pipeline`.
fn workdir(name: &str, pipeline: &str) -> Dir {
    let d = common::pipeline_copy(
        &format!("compute-{name}"),
        &["tokenizers/tiny-chat", "data/quickstart"],
    );
    std::fs::write(d.0.join("p.ptl"), pipeline).unwrap();
    d
}

/// Tests that train hold this, so that the CPU-use measurement runs alone.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pipeline(config: &str, steps: usize) -> String {
    format!(
        "config {{\n{config}}}\n\nstage base = init {{\n  tokenizer = \"tokenizers/tiny-chat\"\n  size = \"tiny\"\n}}\n\nstage trained = pt {{\n  model = base.model\n  data = jsonl(\"data/quickstart/pretrain.jsonl\", format = \"text\")\n  max_steps = {steps}\n  batch_size = 4\n  max_len = 256\n}}\n\nstage score = eval {{\n  models = [base.model]\n  data = jsonl(\"data/quickstart/test.jsonl\", format = \"messages\")\n  metrics = [\"loss\", \"exact_match\"]\n  max_new_tokens = 4\n  limit = 4\n}}\n"
    )
}

/// `ptl ARGS` in `dir`, bf16 computing in bf16 on every CPU (these tests are about what the dtype
/// means, not about the CPU that runs them; `bf16_falls_back_to_f32_on_a_cpu_without_bf16` is).
fn ptl(dir: &Path, args: &[&str]) -> std::process::Output {
    ptl_cpu(dir, args, true)
}

fn ptl_cpu(dir: &Path, args: &[&str], emulate_bf16: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"));
    cmd.args(args).env("PTL_STORE", "store").current_dir(dir);
    if emulate_bf16 {
        cmd.env("PTL_CPU_BF16", "emulate");
    } else {
        cmd.env_remove("PTL_CPU_BF16");
    }
    cmd.output().unwrap()
}

fn plan(dir: &Path) -> Value {
    let o = ptl(dir, &["plan", "p.ptl", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn cuda_here() -> bool {
    // A ptl built without the `cuda` feature never picks a GPU.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["score", "-", "--input", "-", "--device", "cuda"])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&o.stderr).contains("built without CUDA")
}

#[test]
fn auto_and_cpu_are_one_key_on_a_machine_without_a_gpu() {
    assert!(
        !cuda_here(),
        "these tests describe the CPU build; the CUDA ones run where a GPU is"
    );
    let auto = workdir(
        "auto",
        &pipeline("  device = \"auto\"\n  dtype = \"auto\"\n", 2),
    );
    let cpu = workdir(
        "cpu",
        &pipeline("  device = \"cpu\"\n  dtype = \"f32\"\n", 2),
    );
    let (a, c) = (plan(&auto.0), plan(&cpu.0));
    assert_eq!(a["compute"], "cpu, f32");
    assert_eq!(a["stages"][0]["key"], c["stages"][0]["key"], "{a:#}\n{c:#}");
    let o = ptl(&auto.0, &["plan", "p.ptl"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("compute  cpu, f32\n"),
        "{}",
        text(&o)
    );
    // Another dtype is another key.
    let bf16 = workdir("bf16-key", &pipeline("  dtype = \"bf16\"\n", 2));
    assert_ne!(plan(&bf16.0)["stages"][0]["key"], a["stages"][0]["key"]);
}

/// Loss per logged step of stage `trained`.
fn losses(dir: &Path) -> Vec<f64> {
    let o = ptl(dir, &["path", "p.ptl", "trained"]);
    let out = dir.join(String::from_utf8_lossy(&o.stdout).trim());
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Within this of the f32 run's loss at every step (relative; measured 5.3e-4 over 30 steps).
const BF16_LOSS: f64 = 2e-3;

#[test]
fn bf16_training_follows_the_f32_loss_curve() {
    let _alone = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let run = |dtype: &str| {
        let d = workdir(
            &format!("train-{dtype}"),
            &pipeline(&format!("  dtype = \"{dtype}\"\n"), 30).replace(
                "  batch_size = 4\n",
                "  batch_size = 4\n  lr = 5e-3\n  log_every = 1\n",
            ),
        );
        let o = ptl(&d.0, &["run", "p.ptl"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        losses(&d.0)
    };
    let (half, full) = (run("bf16"), run("f32"));
    assert_eq!(half.len(), 30);
    let worst = half
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0f64, f64::max);
    eprintln!("bf16 vs f32 loss, worst relative difference over 30 steps: {worst:.2e}");
    assert!(worst <= BF16_LOSS, "bf16 {half:?}\nf32 {full:?}");
    assert!(half[29] < half[0] * 0.8, "bf16 training learns: {half:?}");
    assert!(worst > 0.0, "the bf16 run computed in f32");
}

/// On a CPU without AVX512-BF16, bf16 would be slower than f32 (each product widened to f32): the
/// plan says so and the stage computes (and is keyed) in f32. With the instructions, it is bf16.
#[test]
fn bf16_falls_back_to_f32_on_a_cpu_without_bf16() {
    let half = workdir("fallback-bf16", &pipeline("  dtype = \"bf16\"\n", 2));
    let full = workdir("fallback-f32", &pipeline("  dtype = \"f32\"\n", 2));
    for d in [&half, &full] {
        let o = ptl_cpu(&d.0, &["run", "p.ptl", "--only", "base"], false);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let plan_of = |d: &Dir| {
        let o = ptl_cpu(&d.0, &["plan", "p.ptl", "--format", "json"], false);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let (h, f) = (plan_of(&half), plan_of(&full));
    let trained = |j: &Value| {
        let stages = j["stages"].as_array().unwrap();
        let s = stages.iter().find(|s| s["name"] == "trained").unwrap();
        assert!(s["key"].is_string(), "{j:#}");
        s["key"].clone()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.split_whitespace().any(|flag| flag == "avx512_bf16") {
        assert_eq!(h["compute"], "cpu, bf16", "{h:#}");
        assert_ne!(trained(&h), trained(&f));
    } else {
        assert_eq!(
            h["compute"],
            "cpu, f32 (bf16 asked: this CPU has no AVX512-BF16, where bf16 would be slower than f32)"
        );
        assert_eq!(trained(&h), trained(&f), "{h:#}\n{f:#}");
        let o = ptl_cpu(&half.0, &["plan", "p.ptl"], false);
        assert!(text(&o).contains("no AVX512-BF16"), "{}", text(&o));
    }
    // Asked for explicitly, bf16 is bf16 on any CPU.
    assert_eq!(plan(&half.0)["compute"], "cpu, bf16");
}

#[test]
fn a_cuda_device_without_cuda_is_a_clear_error() {
    let d = workdir("cuda", &pipeline("  device = \"cuda\"\n", 2));
    let o = ptl(&d.0, &["plan", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("this ptl was built without CUDA"),
        "{}",
        text(&o)
    );
}

/// CPU seconds (user + system) of a running process, from /proc (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Runs the pipeline (its training stage is most of it), sampling the process's CPU time: CPU
/// seconds per wall second at the last sample.
fn cores_used(threads: usize) -> f64 {
    let d = workdir(
        &format!("threads-{threads}"),
        &pipeline(&format!("  threads = {threads}\n"), 40),
    );
    let start = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .env("PTL_STORE", "store")
        .current_dir(&d.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut last = (0.0, 0.0);
    while child.try_wait().unwrap().is_none() {
        if let Some(cpu) = cpu_seconds(child.id()) {
            last = (cpu, start.elapsed().as_secs_f64());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(last.1 > 1.0, "the run was too short to measure: {last:?}");
    last.0 / last.1
}

#[test]
fn threads_1_keeps_the_run_on_one_core() {
    let _alone = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let one = cores_used(1);
    eprintln!("threads = 1: {one:.2} cores");
    assert!(one < 1.15, "threads = 1 used {one:.2} cores");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        let all = cores_used(0);
        eprintln!("threads = 0 ({cores} cores): {all:.2} cores");
        // On some 2-vCPU machines two threads overlap little (1.24–1.27 cores on an Intel Xeon VM,
        // with the same code), so the bound asks for clearly more than one core, not for two.
        assert!(
            all > one + 0.15,
            "threads = 0 used {all:.2} cores, threads = 1 {one:.2}"
        );
    } else {
        eprintln!("one core here: only the threads = 1 bound is checked");
    }
}

/// A training or eval stage's own `device` and `dtype` override the config's for that stage alone:
/// the plan says where it computes, and its key is the key of the same stage under a config that
/// asks for the same (what is used, not where it was written); an unknown device is a check error.
#[test]
fn a_stage_can_compute_elsewhere_than_the_config_says() {
    let own = workdir(
        "stage-own",
        &pipeline("", 2).replace(
            "  max_len = 256\n",
            "  max_len = 256\n  dtype = \"bf16\"\n  device = \"cpu\"\n",
        ),
    );
    let config = workdir("stage-config", &pipeline("  dtype = \"bf16\"\n", 2));
    // The init stage first, so that the stages after it have keys.
    for d in [&own, &config] {
        let o = ptl(&d.0, &["run", "p.ptl", "--only", "base"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let (a, c) = (plan(&own.0), plan(&config.0));
    let stage = |j: &Value, name: &str| {
        j["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(a["compute"], "cpu, f32");
    assert_eq!(stage(&a, "trained")["compute"], "cpu, bf16");
    assert_eq!(stage(&a, "score")["compute"], "cpu, f32");
    assert!(stage(&a, "trained")["key"].is_string(), "{a:#}");
    assert_eq!(stage(&a, "trained")["key"], stage(&c, "trained")["key"]);
    assert!(stage(&a, "score")["key"].is_string(), "{a:#}");
    assert_ne!(stage(&a, "score")["key"], stage(&c, "score")["key"]);
    let o = ptl(&own.0, &["plan", "p.ptl"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("trained (pt) [cpu, bf16]"),
        "{}",
        text(&o)
    );
    let bad = workdir(
        "stage-bad",
        &pipeline("", 2).replace("  max_len = 256\n", "  max_len = 256\n  device = \"gpu\"\n"),
    );
    let o = ptl(&bad.0, &["check", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unknown device \"gpu\""), "{}", text(&o));
}
