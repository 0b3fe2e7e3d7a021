//! Stages on a real local Ray cluster (`ray start --head` from the harness's venv, its Jobs API on
//! 127.0.0.1), results through a real S3 server (moto): a pipeline with two independent stages runs as
//! Ray jobs and leaves the lock file a local run leaves; a failing stage shows its job's log; Ctrl-C
//! stops the jobs; a driver that died finds its job again; a job that asks for a GPU the cluster lacks
//! fails with the resource named instead of waiting forever.

mod common;

use common::machine::{err, out, three_stages, Machine};
use common::{ray, s3};
use std::time::{Duration, Instant};

/// The three stages on `executor`, with a remote store in `bucket`.
fn pipeline(executor: &str, bucket: &str, a_ms: u64, b_fails: bool) -> String {
    let header = format!(
        "config {{\n  executor = {executor}\n}}\n\nstore {{\n  remote = \"s3://{bucket}/team\"\n}}\n\n"
    );
    three_stages(&header, a_ms, b_fails)
}

fn bucket(name: &str) -> String {
    let bucket = format!("ptl-ray-{name}-{}", std::process::id());
    s3::shared().create_bucket(&bucket);
    bucket
}

fn on_ray(extra: &str) -> String {
    format!("ray(address = \"{}\"{extra})", ray::shared().address)
}

#[test]
fn independent_stages_run_as_ray_jobs_and_leave_the_local_lock_file() {
    let bucket = bucket("lock");
    let m = Machine::new(
        "ray-lock",
        "driver",
        &pipeline(&on_ray(""), &bucket, 0, false),
    );
    let said = m.run_ok();
    assert!(
        said.ends_with("0 cached, 3 ran, 0 failed, 0 blocked\n"),
        "{said}"
    );
    for stage in ["a", "b", "c"] {
        assert!(said.contains(&format!("{stage}: Ray job ptl-")), "{said}");
        // The worker's progress arrives as this run's.
        assert!(said.contains(&format!("{stage}: step 10/10")), "{said}");
    }
    // The workers logged to the pipeline folder (the same machine here); each stage ran once.
    assert_eq!(m.ran(), ["a", "b", "c"]);
    let jobs: Vec<String> = ray::shared()
        .jobs()
        .into_iter()
        .filter(|(_, status)| status == "SUCCEEDED")
        .map(|(id, _)| id)
        .collect();
    let keys = m.lock();
    for stage in ["a", "b", "c"] {
        let key = keys["stages"][stage]["key"].as_str().unwrap();
        assert!(
            jobs.iter()
                .any(|id| id.starts_with(&format!("ptl-{}", &key[..24]))),
            "{stage}'s job is named by its key: {jobs:?}"
        );
    }
    // The same pipeline computed here, without Ray or the remote: the same lock file.
    let local = Machine::new(
        "ray-lock",
        "local",
        &pipeline(&on_ray(""), &bucket, 0, false),
    );
    let o = local.ptl(&[
        "run",
        "p.ptl",
        "--executor",
        "local",
        "--set",
        "store.remote=\"\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert_eq!(local.ran(), ["a", "b", "c"]);
    assert_eq!(local.lock(), m.lock());
}

#[test]
fn a_failing_stage_shows_its_jobs_log() {
    let bucket = bucket("fail");
    let m = Machine::new(
        "ray-fail",
        "driver",
        &pipeline(&on_ray(""), &bucket, 0, true),
    );
    let o = m.ptl(&["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    let e = err(&o);
    assert!(
        e.contains("stage `b` failed: failed on purpose (fail = true)"),
        "{e}"
    );
    assert!(e.contains("the job's last log lines:"), "{e}");
    assert!(out(&o).contains("ran      c"), "{}", out(&o));
}

#[test]
fn ctrl_c_stops_the_jobs() {
    let bucket = bucket("stop");
    let m = Machine::new(
        "ray-stop",
        "driver",
        &pipeline(&on_ray(""), &bucket, 60_000, false),
    );
    let mut child = m
        .cmd(&["run", "p.ptl"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job of `a` runs.
    let id = running_job(&m);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(ray::shared().status(&id), "STOPPED");
    assert!(m.ran().is_empty(), "a never finished");
}

/// The id of this machine's job once one runs (its metadata names the pipeline), waiting for it.
fn running_job(m: &Machine) -> String {
    let pipeline = std::fs::canonicalize(m.dir.join("p.ptl")).unwrap();
    let mine = |id: &str| {
        ray::shared().job(id)["metadata"]["ptl_pipeline"].as_str()
            == Some(&*pipeline.to_string_lossy())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = ray::shared()
            .jobs()
            .into_iter()
            .find(|(id, status)| status == "RUNNING" && !id.is_empty() && mine(id));
        if let Some((id, _)) = running {
            return id;
        }
        assert!(Instant::now() < deadline, "a's job never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_driver_that_died_finds_its_job_again() {
    let bucket = bucket("again");
    let m = Machine::new(
        "ray-again",
        "driver",
        &pipeline(&on_ray(""), &bucket, 4_000, false),
    );
    let mut first = m.cmd(&["run", "p.ptl"]).spawn().unwrap();
    running_job(&m);
    first.kill().unwrap(); // SIGKILL: the driver cannot stop its job
    first.wait().unwrap();
    let said = m.run_ok();
    assert!(said.contains("a: following Ray job ptl-"), "{said}");
    assert_eq!(m.ran(), ["a", "b", "c"], "a ran once: {said}");
}

#[test]
fn a_job_asking_for_a_missing_gpu_fails_with_the_resource_named() {
    let bucket = bucket("gpu");
    let text = pipeline(
        &on_ray(", num_gpus = 1, pending_timeout = 3"),
        &bucket,
        0,
        false,
    );
    let m = Machine::new("ray-gpu", "driver", &text);
    let started = Instant::now();
    let o = m.ptl(&["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    let e = err(&o);
    assert!(e.contains("waited 3 s without starting"), "{e}");
    assert!(e.contains("num_gpus = 1"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn the_plan_names_the_cluster_and_ray_needs_a_remote_store() {
    let m = Machine::new(
        "ray-noremote",
        "driver",
        &pipeline(&on_ray(""), "x", 0, false),
    );
    // The plan says where stages will run.
    let plan = out(&m.ptl(&["plan", "p.ptl"]));
    let line = format!(
        "executor ray {} (each stage a job asking for num_cpus = 1, num_gpus = 0)",
        ray::shared().address
    );
    assert!(plan.contains(&line), "{plan}");
    let o = m.ptl(&["run", "p.ptl", "--set", "store.remote=\"\""]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("send their results back through a remote store"),
        "{}",
        err(&o)
    );
    let o = m.ptl(&["run", "p.ptl", "--executor", "rayy"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
}

/// An sft stage on the test model training on two workers, on the cluster with `ray`'s extra
/// arguments.
fn two_worker_stage(bucket: &str, extra: &str) -> String {
    format!(
        "config {{\n  executor = {}\n}}\n\nstore {{\n  remote = \"s3://{bucket}/team\"\n}}\n\nstage tuned = sft {{\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  tuning = full\n  lr = 1e-3\n  max_steps = 3\n  batch_size = 2\n  workers = 2\n}}\n",
        on_ray(extra)
    )
}

#[test]
fn a_two_worker_stage_is_a_job_and_a_placement_group_asking_for_each_workers_cpus() {
    let bucket = bucket("workers");
    let python = format!(", python = \"{}\"", ray::shared().python.display());
    // 2 CPUs for each of the 2 workers: the head's 4.
    let d = common::setup(
        "ray-workers",
        &two_worker_stage(&bucket, &format!(", num_cpus = 2{python}")),
    );
    let m = Machine {
        dir: d.0.clone(),
        env: s3::shared().env().to_vec(),
    };
    let said = m.run_ok();
    assert!(said.contains("tuned: Ray job ptl-"), "{said}");
    assert!(said.contains("tuned: training on 2 workers"), "{said}");
    assert!(said.contains("tuned: worker 1 runs on Ray node"), "{said}");
    assert!(said.contains("tuned: step 3/3"), "{said}");
    // 3 CPUs for each: the job's 3 leave 1, too few for worker 1 (another bucket: this one has
    // the stage now).
    let d = common::setup(
        "ray-workers-big",
        &two_worker_stage(
            &self::bucket("workers-big"),
            &format!(", num_cpus = 3, pending_timeout = 3{python}"),
        ),
    );
    let m = Machine {
        dir: d.0.clone(),
        env: s3::shared().env().to_vec(),
    };
    let o = m.ptl(&["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    // The diagnostic's lines joined again.
    let e = err(&o).replace("\n  │ ", " ");
    assert!(
        e.contains("the Ray cluster did not place worker 1 within 3 s (pending_timeout): no room on its nodes for a placement group of 1 bundle(s) of num_cpus = 3, num_gpus = 0"),
        "{e}"
    );
}

/// Two sft stages on the test model, the second (`tuned`, from the first's model) on two workers;
/// `header` comes first (the executor and the remote store, or nothing).
fn two_stages_on_two_workers(header: &str) -> String {
    format!(
        "{header}stage first = sft {{\n  model = hf_model(\"m\")\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  tuning = full\n  lr = 1e-3\n  max_steps = 1\n  batch_size = 2\n}}\n\nstage tuned = sft {{\n  model = first.model\n  data = jsonl(\"train.jsonl\", format = \"messages\")\n  template = \"chat.jinja\"\n  tuning = full\n  lr = 1e-3\n  max_steps = 3\n  batch_size = 2\n  workers = 2\n}}\n"
    )
}

/// A cluster of two nodes of one CPU each (a head of its own and a node that joins it): a
/// two-worker stage's job (worker 0, one CPU) takes one node and its placement group (worker 1, one
/// CPU) the other. Worker 1 downloads the stage's input (the first stage's model) from the remote
/// store into a store of its own, the two train over their nodes, and the stage ends with the
/// weights of the same pipeline run here on two local workers, bit for bit.
#[test]
fn a_two_worker_stage_spreads_over_two_ray_nodes() {
    let mut head = ray::start_with(1);
    head.join(1);
    let bucket = bucket("nodes");
    let executor = format!(
        "ray(address = \"{}\", python = \"{}\")",
        head.address,
        head.python.display()
    );
    let d = common::setup(
        "ray-nodes",
        &two_stages_on_two_workers(&format!(
            "config {{\n  executor = {executor}\n}}\n\nstore {{\n  remote = \"s3://{bucket}/team\"\n}}\n\n"
        )),
    );
    let m = Machine {
        dir: d.0.clone(),
        env: s3::shared().env().to_vec(),
    };
    let said = m.run_ok();
    let node_of = |prefix: &str| {
        let at = said
            .find(prefix)
            .unwrap_or_else(|| panic!("{prefix}: {said}"))
            + prefix.len();
        said[at..].split_whitespace().next().unwrap().to_string()
    };
    let (zero, one) = (
        node_of("worker 0 here on Ray node "),
        node_of("worker 1 runs on Ray node "),
    );
    assert_ne!(zero, one, "{said}");
    assert!(
        said.contains("worker 1: downloaded 1 input entry from the remote store"),
        "{said}"
    );
    assert!(said.contains("tuned: step 3/3"), "{said}");
    let here = common::setup("ray-nodes-here", &two_stages_on_two_workers(""));
    let o = common::ptl(&here.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    let (on_ray, local) = (
        common::trained_weights(&d.0, "tuned"),
        common::trained_weights(&here.0, "tuned"),
    );
    let first = common::trained_weights(&here.0, "first");
    assert!(common::furthest(&local, &first) > 1e-4);
    assert_eq!(common::furthest(&on_ray, &local), 0.0);

    // Ctrl-C while a long stage trains over the two nodes: the run exits 130, and the worker Ray
    // placed (its spec file is named after the stage) ends with the job.
    let bucket = self::bucket("nodes-stop");
    let pipeline = two_stages_on_two_workers(&format!(
        "config {{\n  executor = {executor}\n}}\n\nstore {{\n  remote = \"s3://{bucket}/team\"\n}}\n\n"
    ))
    .replace("stage tuned = sft", "stage long_run = sft")
    .replace("max_steps = 3\n", "max_steps = 100000\n");
    let d = common::setup("ray-nodes-stop", &pipeline);
    let m = Machine {
        dir: d.0.clone(),
        env: s3::shared().env().to_vec(),
    };
    let placed = || processes_running("ptl-worker-long_run-");
    let mut child = m
        .cmd(&["run", "p.ptl"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while placed() == 0 {
        assert!(
            Instant::now() < deadline,
            "worker 1 of long_run never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let deadline = Instant::now() + Duration::from_secs(60);
    while placed() > 0 {
        assert!(
            Instant::now() < deadline,
            "the placed worker still runs 60 s after the run stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many processes of this machine have `pattern` in their command line.
fn processes_running(pattern: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(pattern))
        .count()
}
