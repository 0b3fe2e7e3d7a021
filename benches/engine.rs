//! Engine figures: cold hashing throughput of new inputs, and the time of a no-op `ptl run` / `ptl plan`
//! of a 100-stage chain whose first stage reads 1 GB (DVC: 3.35 s to decide the same). Run with
//! `cargo bench --bench engine`; docs/performance.md records the figures.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const GB: usize = 1 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ptl(dir: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    took
}

fn main() {
    let dir = std::env::temp_dir().join(format!("ptl-bench-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 1 GiB of JSONL rows.
    let row = format!("{{\"text\": \"{}\"}}\n", "abcdefghij".repeat(101));
    let chunk = row.repeat((8 << 20) / row.len());
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("big.jsonl")).unwrap());
        let mut written = 0;
        while written < GB {
            f.write_all(chunk.as_bytes()).unwrap();
            written += chunk.len();
        }
    }
    let size = std::fs::metadata(dir.join("big.jsonl")).unwrap().len();

    // Cold hashing: not in the hash cache (the file is in the page cache, as a just-written input is).
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        ptl::store::hash::hash_file_uncached(&dir.join("big.jsonl")).unwrap();
        times.push(start.elapsed());
    }
    let t = median(times);
    println!(
        "hash  {:.2} GB in {:.0} ms: {:.2} GB/s ({} threads)",
        size as f64 / 1e9,
        t.as_secs_f64() * 1e3,
        size as f64 / 1e9 / t.as_secs_f64(),
        rayon::current_num_threads()
    );

    let mut text = String::from("let big = jsonl(\"big.jsonl\", format = \"text\")\n\nstage s0 = test_step {\n  data = big\n}\n");
    for i in 1..100 {
        text.push_str(&format!(
            "\nstage s{i} = test_step {{\n  model = s{}.model\n  text = \"{i}\"\n}}\n",
            i - 1
        ));
    }
    std::fs::write(dir.join("chain.ptl"), text).unwrap();
    let first = ptl(&dir, &["run", "chain.ptl"]);
    println!(
        "first run (validates and hashes 1 GiB, runs 100 stages): {:.2} s",
        first.as_secs_f64()
    );
    let noop = median((0..15).map(|_| ptl(&dir, &["run", "chain.ptl"])).collect());
    let plan = median((0..15).map(|_| ptl(&dir, &["plan", "chain.ptl"])).collect());
    println!(
        "no-op run, 100 stages, 1 GiB input: {:.1} ms (median of 15, whole process)",
        noop.as_secs_f64() * 1e3
    );
    println!(
        "plan, same pipeline: {:.1} ms (median of 15, whole process)",
        plan.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
