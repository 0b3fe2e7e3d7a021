//! Data-parallel stages (`workers = N`) through `ptl run`: N worker processes on loopback reach the
//! weights of one process on the N-times batch, a killed or silent worker fails the stage within the
//! collective timeout and leaves no process behind, and checkpoints resume with N workers.

mod common;

use common::{ptl, setup, stage_out, text};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An sft stage on the test model with `fields`.
fn pipeline(fields: &str) -> String {
    format!(
        "stage tuned = sft {{\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  {fields}\n}}\n"
    )
}

fn run(dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .envs(env.iter().copied())
        .env_remove("PTL_STORE")
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Every tensor of a safetensors file, as f32 values.
fn safetensors_f32(file: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (k, v)
        })
        .collect()
}

/// The trained model's weights.
fn weights(dir: &Path) -> HashMap<String, Vec<f32>> {
    safetensors_f32(&stage_out(dir, "tuned").join("model/model.safetensors"))
}

/// The loss of every logged step.
fn losses(dir: &Path) -> Vec<f64> {
    common::stage_metrics(dir, "tuned")
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect()
}

/// The largest difference between two models' weights.
fn furthest(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn two_workers_reach_the_weights_of_one_on_the_doubled_batch() {
    let trained = |name: &str, batch: usize, accum: usize, workers: usize| {
        let d = setup(
            name,
            &pipeline(&format!(
                "tuning = full\n  lr = 1e-3\n  max_steps = 5\n  max_len = 32\n  batch_size = {batch}\n  grad_accum = {accum}\n  workers = {workers}"
            )),
        );
        let o = run(&d.0, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(
            text(&o).contains("training on 2 workers"),
            workers == 2,
            "{}",
            text(&o)
        );
        (weights(&d.0), losses(&d.0), d)
    };
    let (two, two_losses, two_dir) = trained("dp-two", 2, 2, 2);
    // The same micro-batches of 2 rows, accumulated in one process.
    let (accumulated, accumulated_losses, _) = trained("dp-accumulated", 2, 4, 1);
    // One process, micro-batches of 4 rows (other shapes: other rounding).
    let (doubled, doubled_losses, one_dir) = trained("dp-doubled", 4, 2, 1);
    let moved = furthest(&doubled, &weights_of_start(&one_dir.0));
    eprintln!(
        "moved {moved:e}; two vs accumulated {:e}; two vs doubled {:e}; accumulated vs doubled {:e}",
        furthest(&two, &accumulated),
        furthest(&two, &doubled),
        furthest(&accumulated, &doubled)
    );
    eprintln!("{two_losses:?}\n{accumulated_losses:?}\n{doubled_losses:?}");
    assert!(moved > 1e-3, "training moved the weights (at most {moved})");
    // The same sums in another order: the ring's.
    let order = furthest(&two, &accumulated);
    assert!(
        order <= 5e-7,
        "2 workers vs their micro-batches in one process: {order}"
    );
    // Micro-batches of other shapes round otherwise, in one process as well; Adam's normalized
    // step turns that into weight differences of about lr / 200 after 5 steps.
    let worst = furthest(&two, &doubled);
    assert!(worst <= 1e-5, "2 workers × 2 rows vs 1 × 4 rows: {worst}");
    assert_eq!(doubled_losses.len(), 5);
    for (x, y) in doubled_losses.iter().zip(&two_losses) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "losses {doubled_losses:?} vs {two_losses:?}"
        );
    }
    // Worker 1's scratch is gone, and the entry holds what a one-process stage writes.
    assert!(!stage_out(&two_dir.0, "tuned").join("../workers").exists());
}

/// The starting model's weights.
fn weights_of_start(dir: &Path) -> HashMap<String, Vec<f32>> {
    safetensors_f32(&dir.join("m/model.safetensors"))
}

/// The processes whose parent is `pid`, with their environment's RANK.
fn workers_of(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid != pid {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap_or_default();
        let rank = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("RANK=").map(str::to_string));
        if let Some(rank) = rank {
            found.push((child, rank));
        }
    }
    found
}

/// A long two-worker stage started in `dir`, once its workers have trained a step; its stdout
/// (JSON events) is read on a thread.
fn started(dir: &Path) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl", "--format", "json"])
        .env("PTL_COLLECTIVE_TIMEOUT", "3")
        .env_remove("PTL_STORE")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"stage_progress\"") && line.contains("\"step\":2") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the workers train two steps");
    (child, reader)
}

fn wait(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), t.elapsed());
        }
        assert!(
            t.elapsed() < limit,
            "ptl run is still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` has ended (gone, or a zombie its parent has not reaped yet).
fn ended(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

const LONG: &str = "lr = 1e-2\n  tuning = full\n  max_steps = 100000\n  batch_size = 2\n  workers = 2\n  save_every = 0\n  save_minutes = 0";

#[test]
fn a_killed_or_silent_worker_fails_the_stage_within_the_timeout() {
    for (name, sig, want) in [
        ("killed", "KILL", "worker 1 of 2 was killed by signal 9"),
        ("silent", "STOP", "no word from worker 1 in 3 s"),
    ] {
        let d = setup(&format!("dp-{name}"), &pipeline(LONG));
        let (mut child, reader) = started(&d.0);
        let workers = workers_of(child.id());
        assert_eq!(workers.len(), 2, "{name}: {workers:?}");
        let (one, _) = workers.iter().find(|(_, r)| r == "1").unwrap();
        signal(*one, sig);
        let (code, took) = wait(&mut child, Duration::from_secs(60));
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let out = reader.join().unwrap();
        assert_eq!(code, Some(1), "{name}: {out}{stderr}");
        assert!(
            out.contains(want) || stderr.contains(want),
            "{name}: {out}{stderr}"
        );
        // Measured: 0.05 s after the kill; 3.1 s for the silent one (the timeout is 3 s).
        assert!(took < Duration::from_secs(15), "{name}: {took:?}");
        for (pid, _) in &workers {
            assert!(ended(*pid), "{name}: worker {pid} is left running");
        }
    }
}

#[test]
fn ctrl_c_stops_every_worker_with_a_checkpoint_and_the_rerun_resumes() {
    let d = setup("dp-interrupt", &pipeline(LONG));
    let (mut child, reader) = started(&d.0);
    let workers = workers_of(child.id());
    signal(child.id(), "INT");
    let (code, _) = wait(&mut child, Duration::from_secs(60));
    let out = reader.join().unwrap();
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("saved a checkpoint at step"), "{out}");
    for (pid, _) in &workers {
        assert!(ended(*pid), "worker {pid} is left running");
    }
    let plan = String::from_utf8_lossy(&ptl(&d.0, &["plan", "p.ptl"]).stdout).into_owned();
    assert!(
        plan.contains("resumes from its checkpoint at step"),
        "{plan}"
    );
    assert!(plan.contains("tuned (sft) [2 workers]"), "{plan}");
}

#[test]
fn a_crashed_two_worker_stage_resumes_and_ends_bit_identical() {
    // LoRA dropout: each worker draws its own masks, and the checkpoint keeps every worker's
    // generator.
    let p = pipeline(
        "lr = 1e-2\n  tuning = lora(rank = 4, dropout = 0.1)\n  max_steps = 8\n  batch_size = 2\n  workers = 2\n  save_every = 3",
    );
    let whole = setup("dp-whole", &p);
    let o = run(&whole.0, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let crashed = setup("dp-crashed", &p);
    let o = run(&crashed.0, &[("PTL_FAULT", "crash_after_step:5")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("killed by signal 6"), "{}", text(&o));
    let o = run(&crashed.0, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("resuming from the checkpoint at step 3"),
        "{}",
        text(&o)
    );
    assert_eq!(losses(&whole.0), losses(&crashed.0));
    common::same_model(&whole.0, &crashed.0, "tuned");
}

#[test]
fn stages_that_cannot_share_a_step_say_so_before_running() {
    for (name, pipeline, said) in [
        (
            "dp-check",
            "config { workers = 2 }\n\nstage tuned = sft {\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  device = \"cuda\"\n}\n",
            ["ptl::workers_unsupported", "from config.workers"],
        ),
        (
            "dp-check-kinds",
            "config { workers = 0 }\n\nstage rl = ppo {\n  model = hf_model(\"m\")\n  reward = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  workers = 2\n  device = \"cuda\"\n}\n",
            [
                "`workers` must be at least 1",
                "workers = 2, set here",
            ],
        ),
    ] {
        let d = setup(name, pipeline);
        let o = ptl(&d.0, &["check", "p.ptl"]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let t = text(&o);
        for s in said {
            assert!(t.contains(s), "{name}: {t}");
        }
    }
}
