//! Latency of `ptl watch` from a file save to the start of the affected stage (goal ≤ 150 ms with the
//! default 50 ms debounce). Run with `cargo bench --bench watch`; docs/performance.md records it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn main() {
    let dir = std::env::temp_dir().join(format!("ptl-bench-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = |v: usize| {
        format!("stage a = test_step {{\n  text = \"v{v}\"\n}}\n\nstage b = test_step {{\n  model = a.model\n}}\n")
    };
    std::fs::write(dir.join("p.ptl"), pipeline(0)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["watch", "p.ptl", "--format", "json"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let wait = |needle: &str| loop {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("watch answers");
        if line.contains(needle) {
            return at;
        }
    };
    wait("\"idle\"");
    let mut latencies = Vec::new();
    for v in 1..=15 {
        std::thread::sleep(Duration::from_millis(100));
        let saved = Instant::now();
        std::fs::write(dir.join("p.ptl"), pipeline(v)).unwrap();
        let started = wait("\"stage_started\",\"stage\":\"a\"");
        latencies.push(started - saved);
        wait("\"idle\"");
    }
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "save → stage start: median {:.1} ms, min {:.1} ms, max {:.1} ms (15 saves, 50 ms debounce)",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[0]),
        ms(latencies[latencies.len() - 1])
    );
    let _ = std::fs::remove_dir_all(&dir);
}
