//! `ptl serve` throughput as clients see it: the shared bench model (benches/common) with 4 LoRA
//! adapters (rank 16, every projection), C concurrent streaming completion requests (C = 1, 8, 32), all to
//! one adapter or spread over the 4; the decode rate (waves of N and of 1 new tokens: the difference
//! in completion tokens over the difference in wall time) and the mean time to the first token,
//! against `ptl generate` one prompt at a time on the same model (its decode rate, measured the same
//! way, as benches/generate.rs does). Greedy, f32, CPU.
//!
//! Run with `cargo bench --bench serve [-- --new N]`.

mod common;

use common::{ptl_generate, tokenizer, words, INIT_STAGE};
use ptl::lang::value::{Lora, Tuning};
use ptl::model::decoder::Decoder;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADAPTERS: usize = 4;

/// A running server, stopped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ptl serve` and returns it with its base URL.
fn serve(dir: &Path, model: &Path) -> (Server, String) {
    let mut args = vec![
        "serve".to_string(),
        "--model".into(),
        format!("base={}", model.display()),
        "--port".into(),
        "0".into(),
        "--max-batch".into(),
        "32".into(),
    ];
    for i in 0..ADAPTERS {
        args.push("--adapter".into());
        args.push(format!(
            "a{i}={}",
            dir.join(format!("adapter{i}")).display()
        ));
    }
    let log = dir.join("serve.log");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_ptl"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.split("listening on ").nth(1) {
            let url = at
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches("/v1");
            return (server, url.to_string());
        }
        assert!(Instant::now() < deadline, "ptl serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One streamed request: (seconds to the first token, completion tokens).
fn stream(url: &str, model: &str, prompt: &str, new: usize) -> (f64, usize) {
    let body = serde_json::json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": new,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let r = ureq::post(format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let reader = std::io::BufReader::new(r.into_body().into_reader());
    let (mut first, mut tokens) = (None, 0);
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
        if first.is_none()
            && chunk["choices"][0]["text"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        {
            first = Some(start.elapsed().as_secs_f64());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    (first.unwrap_or(start.elapsed().as_secs_f64()), tokens)
}

/// C concurrent requests: (completion tokens, wall seconds, mean time to first token).
fn wave(url: &str, prompts: &[String], c: usize, spread: bool, new: usize) -> (usize, f64, f64) {
    let start = Instant::now();
    let results: Vec<(f64, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..c)
            .map(|k| {
                let model = format!("a{}", if spread { k % ADAPTERS } else { 0 });
                let prompt = prompts[k % prompts.len()].clone();
                s.spawn(move || stream(url, &model, &prompt, new))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = results.iter().map(|r| r.1).sum();
    let ttft = results.iter().map(|r| r.0).sum::<f64>() / c as f64;
    (tokens, secs, ttft)
}

/// The decode rate of C concurrent requests (waves of `new` and of 1 token: the difference in
/// tokens over the difference in time, so reading the prompts cancels out) and the mean time to
/// the first token.
fn decode_rate(url: &str, prompts: &[String], c: usize, spread: bool, new: usize) -> (f64, f64) {
    let (n_long, long, ttft) = wave(url, prompts, c, spread, new);
    let (n_short, short, _) = wave(url, prompts, c, spread, 1);
    ((n_long - n_short) as f64 / (long - short), ttft)
}

/// `ptl generate` one prompt at a time: its decode rate (tokens/s).
fn one_at_a_time(dir: &Path, model: &Path, new: usize) -> f64 {
    let ((long, n_long), (short, n_short)) = (
        ptl_generate(dir, model, 1, new),
        ptl_generate(dir, model, 1, 1),
    );
    (n_long - n_short) as f64 / (long - short)
}

fn main() {
    let new = common::arg("--new", 32);
    let dir = common::fresh_dir("bench-serve");
    tokenizer(&dir.join("tokenizer"));
    std::fs::write(
        dir.join("bench.ptl"),
        format!("config {{\n  seed = 0\n}}\n\n{INIT_STAGE}"),
    )
    .unwrap();
    common::run_bench_pipeline(&dir);
    let model = dir.join(".ptl/out/bench/base/model");
    for i in 0..ADAPTERS {
        let mut m = Decoder::load(&model, &candle_core::Device::Cpu).unwrap();
        let tuning = Tuning::Lora(Lora {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
            rslora: false,
        });
        m.apply_tuning(&tuning, i as u64).unwrap();
        m.save_adapter(
            &dir.join(format!("adapter{i}")),
            &tuning,
            &model.display().to_string(),
        )
        .unwrap();
    }
    let mut seed = 11u64;
    let prompts: Vec<String> = (0..16)
        .map(|i| words(&mut seed, 32 - (i % 4) * 4))
        .collect();
    let rows: String = prompts
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({"prompt": p})))
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), rows).unwrap();
    let alone = one_at_a_time(&dir, &model, new);
    println!(
        "{}",
        serde_json::json!({"engine": "ptl generate, one at a time", "new_tokens": new, "tokens_per_s": (alone * 10.0).round() / 10.0})
    );
    let (server, url) = serve(&dir, &model);
    // Warm up (first-touch of the weights, thread pools).
    wave(&url, &prompts, 4, true, 4);
    for c in [1, 8, 32] {
        for spread in [false, true] {
            let (rate, ttft) = decode_rate(&url, &prompts, c, spread, new);
            println!(
                "{}",
                serde_json::json!({
                    "engine": "ptl serve",
                    "concurrent": c,
                    "adapters": if spread { ADAPTERS } else { 1 },
                    "new_tokens": new,
                    "tokens_per_s": (rate * 10.0).round() / 10.0,
                    "vs_one_at_a_time": (rate / alone * 100.0).round() / 100.0,
                    "time_to_first_token_ms": (ttft * 1e4).round() / 10.0,
                })
            );
        }
    }
    drop(server);
}
