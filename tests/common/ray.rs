//! A real Ray head for the tests: `ray start --head --block` from the harness's own virtual environment
//! (tests/common/venv.rs), every port on a free port of 127.0.0.1, its Jobs API on the dashboard's
//! port; its workers reach the shared moto server (tests/common/s3.rs) through the AWS variables.

use super::venv::python_env;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A free port of 127.0.0.1 that no other Ray process of this test binary was given (two asks of
/// the system's free port can return the same one, and Ray refuses a port given twice).
fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = super::mlflow::free_port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The ports every node of a cluster opens (each given its own free port).
const NODE_PORTS: [&str; 6] = [
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
];

/// The Ray the tests run against.
pub const VERSION: &str = "2.60.0";

pub struct Head {
    /// The Jobs API: `http://127.0.0.1:PORT`.
    pub address: String,
    /// Its GCS (`127.0.0.1:PORT`), which another node joins.
    pub gcs: String,
    /// The Python of the harness's Ray.
    pub python: std::path::PathBuf,
    child: Child,
    /// Nodes that joined it (`join`), ended before it.
    nodes: Vec<Child>,
}

impl Drop for Head {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = Command::new("kill")
                .args(["-TERM", &node.id().to_string()])
                .status();
            let _ = node.wait();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The head the tests of one binary share; it ends with the test binary.
pub fn shared() -> &'static Head {
    static HEAD: OnceLock<Head> = OnceLock::new();
    HEAD.get_or_init(start)
}

fn start() -> Head {
    start_with(4)
}

/// A head of its own with `cpus` CPUs (it ends when dropped).
pub fn start_with(cpus: u32) -> Head {
    let venv = python_env(
        &format!("ray-{VERSION}"),
        &[&format!("ray[default]=={VERSION}")],
    );
    let s3 = super::s3::shared();
    let dashboard = free_port();
    // A folder per head: a test may start a cluster of its own beside the shared one.
    static HEADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let temp = std::env::temp_dir().join(format!(
        "ptl-ray-{}-{}",
        std::process::id(),
        HEADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).unwrap();
    let log_path = temp.join("head.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = |flag: &str| [flag.to_string(), free_port().to_string()];
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/run_until_parent_exits.py"))
        .arg(venv.join("bin/ray"))
        .args(["start", "--head", "--block", "--disable-usage-stats"])
        .args([
            "--node-ip-address",
            "127.0.0.1",
            "--dashboard-host",
            "127.0.0.1",
        ])
        .args(["--num-cpus", &cpus.to_string(), "--num-gpus", "0"])
        .args(["--dashboard-port", &dashboard.to_string()])
        .arg("--temp-dir")
        .arg(&temp);
    let gcs = free_port();
    cmd.args(["--port", &gcs.to_string()]);
    cmd.args(port("--ray-client-server-port"));
    for flag in NODE_PORTS {
        cmd.args(port(flag));
    }
    cmd.envs(s3.env())
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut head = Head {
        address: format!("http://127.0.0.1:{dashboard}"),
        gcs: format!("127.0.0.1:{gcs}"),
        python: venv.join("bin/python"),
        child: cmd.spawn().expect("starting `ray start --head`"),
        nodes: Vec::new(),
    };
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ready = agent
            .get(format!("{}/api/jobs/", head.address))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return head;
        }
        let exited = head.child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the Ray head did not come up ({exited:?}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Head {
    /// Starts another node of `cpus` CPUs on this machine that joins the head, and waits until the
    /// cluster counts it.
    pub fn join(&mut self, cpus: u32) {
        let venv = self
            .python
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let temp = std::env::temp_dir()
            .join(format!(
                "ptl-ray-{}-{}",
                std::process::id(),
                self.gcs.replace(['.', ':'], "-")
            ))
            .join(format!("node{}", self.nodes.len() + 1));
        let _ = std::fs::remove_dir_all(&temp);
        std::fs::create_dir_all(&temp).unwrap();
        let log_path = temp.join("node.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(&self.python);
        cmd.arg(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/run_until_parent_exits.py"),
        )
        .arg(venv.join("bin/ray"))
        .args(["start", "--block", "--disable-usage-stats"])
        .args(["--address", &self.gcs, "--node-ip-address", "127.0.0.1"])
        .args(["--num-cpus", &cpus.to_string(), "--num-gpus", "0"]);
        for flag in NODE_PORTS {
            cmd.args([flag.to_string(), free_port().to_string()]);
        }
        cmd.envs(super::s3::shared().env())
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.nodes
            .push(cmd.spawn().expect("starting `ray start --address`"));
        let want = self.nodes.len() + 1;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let alive = self.nodes_alive().unwrap_or(0);
            if alive >= want {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("the Ray node did not join ({alive} of {want} alive); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// How many nodes the dashboard counts alive.
    fn nodes_alive(&self) -> Option<usize> {
        let mut r = ureq::get(format!("{}/nodes?view=summary", self.address))
            .call()
            .ok()?;
        let j: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        let nodes = j["data"]["summary"].as_array()?;
        Some(
            nodes
                .iter()
                .filter(|n| n["raylet"]["state"] == "ALIVE")
                .count(),
        )
    }

    /// What the Jobs API says of job `id`.
    pub fn job(&self, id: &str) -> serde_json::Value {
        let mut r = ureq::get(format!("{}/api/jobs/{id}", self.address))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// A job's status (`PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED`, `STOPPED`).
    pub fn status(&self, id: &str) -> String {
        self.job(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every job's submission id and status.
    pub fn jobs(&self) -> Vec<(String, String)> {
        let mut r = ureq::get(format!("{}/api/jobs/", self.address))
            .call()
            .unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        j.as_array()
            .unwrap()
            .iter()
            .map(|job| {
                (
                    job["submission_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    job["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}
