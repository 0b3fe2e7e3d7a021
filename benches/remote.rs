//! The remote store's throughput through `ptl run`, beside `aws s3 cp`'s engine on the same server.
//!
//! A moto S3 server on 127.0.0.1 (from `PTL_BENCH_PYTHON`'s environment: `pip install
//! "moto[server]==5.2.5"`); machine A runs a one-stage pipeline whose entry holds one large file
//! (`--mb`, default 1024 MiB) and uploads it; machine B, with an empty local store, runs the same
//! pipeline and downloads it (a remote-cache hit). Then boto3's managed transfer
//! (benches/reference/s3_copy.py, what the AWS CLI runs) downloads the same object and uploads the
//! same file.
//!
//!     cargo bench --bench remote -- --mb 1024

// This bench uses a few of the shared helpers (arguments, folders, the Python side).
#[allow(dead_code)]
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AUTHORIZATION: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                             SignedHeaders=host, Signature=0";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> String {
    std::env::var("PTL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn moto(port: u16) -> Moto {
    let child = Command::new(python())
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python -m moto.server (PTL_BENCH_PYTHON needs moto[server])");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(format!("http://127.0.0.1:{port}"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "moto did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    Moto(child)
}

/// `ptl run p.ptl` in `dir` against the endpoint: wall seconds and stdout.
fn run(dir: &Path, endpoint: &str) -> (f64, String) {
    let start = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["run", "p.ptl"])
        .current_dir(dir)
        .env_remove("PTL_STORE")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (start.elapsed().as_secs_f64(), out)
}

/// The seconds in a log line `...: N files, X MB in S s`.
fn transfer_seconds(out: &str, what: &str) -> f64 {
    out.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.rsplit(" in ").next())
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("no `{what}` line in:\n{out}"))
}

fn main() {
    let mb = common::arg("--mb", 1024);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _server = moto(port);
    let put = ureq::put(format!("{endpoint}/bench"))
        .header("Authorization", AUTHORIZATION)
        .send_empty()
        .unwrap();
    assert_eq!(put.status(), 200);
    let pipeline = format!(
        "store {{\n  remote = \"s3://bench/team\"\n}}\n\nstage big = test_step {{\n  text = \"bench\"\n  pad_mb = {mb}\n}}\n"
    );
    let (a, b) = (common::fresh_dir("remote-a"), common::fresh_dir("remote-b"));
    for dir in [&a, &b] {
        std::fs::write(dir.join("p.ptl"), &pipeline).unwrap();
    }
    let bytes = (mb as f64) * 1048576.0;
    let rate = |s: f64| bytes / s / 1e6;

    let (wall_a, out_a) = run(&a, &endpoint);
    let up = transfer_seconds(&out_a, "uploaded to the remote store");
    let (wall_b, out_b) = run(&b, &endpoint);
    let down = transfer_seconds(&out_b, "downloaded from the remote store");
    println!("entry: {mb} MiB (one file)");
    println!(
        "ptl upload   {up:7.2} s  {:7.1} MB/s   (machine A's whole run: {wall_a:.2} s)",
        rate(up)
    );
    println!(
        "ptl download {down:7.2} s  {:7.1} MB/s   (machine B's whole run, a remote hit: {wall_b:.2} s)",
        rate(down)
    );

    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("p.ptl.lock")).unwrap()).unwrap();
    let key = lock["stages"]["big"]["key"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.join(".ptl/entries").join(key).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let hash = manifest["files"]["model/pad.bin"]["hash"].as_str().unwrap();
    let local = a.join(".ptl/out/p/big/model/pad.bin");
    let reference = common::python_json(
        "benches/reference/s3_copy.py",
        &[
            &endpoint,
            "bench",
            &format!("team/objects/{hash}"),
            &local.to_string_lossy(),
        ],
    );
    match reference {
        Some(r) => {
            let (d, u) = (
                r["download_s"].as_f64().unwrap(),
                r["upload_s"].as_f64().unwrap(),
            );
            println!(
                "boto3 upload_file   {u:7.2} s  {:7.1} MB/s   (aws s3 cp's engine)",
                rate(u)
            );
            println!("boto3 download_file {d:7.2} s  {:7.1} MB/s", rate(d));
            println!(
                "ptl / boto3: upload {:.2}x, download {:.2}x (time ratio, lower is faster)",
                up / u,
                down / d
            );
        }
        None => println!("boto3 reference: not run (PTL_BENCH_PYTHON lacks boto3)"),
    }
}
