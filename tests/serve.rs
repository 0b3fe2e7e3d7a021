//! `ptl serve`: the official openai client against the server (every endpoint, streaming, 64
//! concurrent clients over a base and three adapters, answers equal to transformers + PEFT's), bad
//! requests answered with OpenAI-shaped 4xx errors (a fuzz over request bodies: never a 5xx, never a
//! crash), and a pipeline's LoRA stage served as an adapter on its base.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ptl serve`, stopped when dropped; its log in a file (never a full pipe).
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `ptl serve ARGS --port 0` in `dir`; waits for its address.
fn start(dir: &Path, name: &str, args: &[&str]) -> Server {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .current_dir(dir)
        .env_remove("PTL_STORE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        url: String::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(at) = server.log().split("listening on ").nth(1) {
            let url = at.split_whitespace().next().unwrap_or_default().to_string();
            server.url = url.trim_end_matches("/v1").to_string();
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("ptl serve exited ({status}): {}", server.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ptl serve did not start: {}", server.log());
}

/// The base fixture model with the three fixture adapters.
fn adapters_server(dir: &Path, extra: &[&str]) -> Server {
    let f = fixtures();
    let base = format!("base={}", f.join("nf4/qwen3").display());
    let a = format!("a={}", f.join("serve/adapter_a").display());
    let b = format!("b={}", f.join("serve/adapter_b").display());
    let c = format!("c={}", f.join("serve/adapter_c").display());
    let mut args = vec![
        "--model",
        &base,
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--adapter",
        &c,
    ];
    args.extend(extra);
    start(dir, "server", &args)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// POSTs `body` to `path`: the status and the JSON answer.
fn post(url: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut r = agent()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn the_official_openai_client_gets_the_answers_of_transformers_and_peft() {
    let dir = common::Dir::new("serve-openai");
    let server = adapters_server(&dir.0, &[]);
    let venv = common::venv::python_env("openai-3.57.0", &["openai==3.57.0"]);
    let out = Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openai_serve_check.py"))
        .arg(format!("{}/v1", server.url))
        .arg(fixtures().join("serve/expected.json"))
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(
        out.status.success() && text.contains("all checks passed"),
        "{text}\nserver log (tail):\n{}",
        server
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn greedy_answers_equal_ptl_generate() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("serve/expected.json")).unwrap(),
    )
    .unwrap();
    let base = fixtures().join("nf4/qwen3");
    for model in ["base", "a", "b", "c"] {
        for row in want["answers"][model].as_array().unwrap() {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ptl"));
            cmd.arg("generate").arg(&base);
            if model != "base" {
                cmd.arg("--adapter")
                    .arg(fixtures().join(format!("serve/adapter_{model}")));
            }
            let o = cmd
                .args(["--chat", "--max-new-tokens", "8", "--prompt"])
                .arg(row["prompt"].as_str().unwrap())
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'),
                row["text"].as_str().unwrap(),
                "{model} {}",
                common::text(&o)
            );
        }
    }
}

/// A tiny deterministic generator for the fuzz.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

#[test]
fn bad_requests_get_openai_shaped_4xx_errors_and_the_server_keeps_serving() {
    let dir = common::Dir::new("serve-errors");
    let server = adapters_server(&dir.0, &["--max-body", "4096", "--max-tokens", "64"]);
    let url = &server.url;
    let cases: [(&str, &str, u16, Option<&str>); 12] = [
        ("/v1/chat/completions", "{bad json", 400, None),
        ("/v1/chat/completions", "[1, 2]", 400, None),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            400,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "nope", "messages": [{"role": "user", "content": "x"}]}"#,
            404,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "base", "messages": []}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "base", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
            400,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "base", "messages": [{"role": "wizard", "content": "x"}]}"#,
            400,
            Some("messages[0].role"),
        ),
        (
            "/v1/completions",
            r#"{"model": "base"}"#,
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"model": "base", "prompt": [1, 2]}"#,
            400,
            Some("prompt"),
        ),
        ("/v1/nothing", "{}", 404, None),
    ];
    for (path, body, status, param) in cases {
        let (got, json) = post(url, path, body);
        assert_eq!(got, status, "{path} {body}: {json}");
        assert!(json["error"]["message"].is_string(), "{body}: {json}");
        assert!(json["error"]["type"].is_string(), "{body}: {json}");
        if let Some(p) = param {
            assert_eq!(json["error"]["param"], p, "{body}: {json}");
        }
    }
    let (got, json) = post(url, "/v1/chat/completions", &"x".repeat(5000));
    assert_eq!(got, 413, "{json}");
    assert!(json["error"]["message"].is_string());

    // Fuzz: a valid body with random bytes cut, repeated or replaced, and fields replaced with
    // values of other types. Whatever arrives: a 2xx, or a 4xx with an OpenAI error.
    let valid = r#"{"model": "a", "messages": [{"role": "user", "content": "7+8="}], "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "n": 2, "stop": ["x"], "seed": 3, "logprobs": true, "top_logprobs": 1}"#;
    let values = [
        "null",
        "-1",
        "1e308",
        "\"\"",
        "[]",
        "{}",
        "true",
        "0",
        "99999999999999999999",
        "\"\\u0000\"",
    ];
    let mut rng = Lcg(7);
    for i in 0..300 {
        let mut body = valid.as_bytes().to_vec();
        match i % 3 {
            0 => {
                let at = rng.next(body.len());
                let n = rng.next(8).min(body.len() - at);
                body.drain(at..at + n);
            }
            1 => {
                let at = rng.next(body.len());
                let bytes = b"{}[]\":,0a\\\x00\xff";
                body[at] = bytes[rng.next(bytes.len())];
            }
            _ => {
                let fields = [
                    "\"model\": \"a\"",
                    "\"max_tokens\": 4",
                    "\"temperature\": 0.5",
                    "\"n\": 2",
                    "\"stop\": [\"x\"]",
                    "\"messages\": [",
                ];
                let f = fields[rng.next(fields.len())];
                let key = f.split(':').next().unwrap();
                let replaced = format!("{key}: {}", values[rng.next(values.len())]);
                body = valid.replacen(f, &replaced, 1).into_bytes();
            }
        }
        let mut r = agent()
            .post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(&body[..])
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        assert!(
            status < 500,
            "{status} for {}: {text}",
            String::from_utf8_lossy(&body)
        );
        if status >= 400 {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(json["error"]["message"].is_string(), "{text}");
        }
    }
    let (got, json) = post(
        url,
        "/v1/chat/completions",
        r#"{"model": "base", "messages": [{"role": "user", "content": "7+8="}], "max_tokens": 2}"#,
    );
    assert_eq!(got, 200, "still serving: {json}");
    assert!(server.log().contains("POST /v1/chat/completions 200"));
}

#[test]
fn an_api_key_is_required_when_set() {
    let dir = common::Dir::new("serve-key");
    let server = adapters_server(&dir.0, &["--api-key", "sesame"]);
    let (got, json) = post(&server.url, "/v1/models", "");
    assert_eq!(got, 405, "POST on a GET route: {json}");
    assert!(json["error"]["message"].is_string(), "{json}");
    let r = agent()
        .get(format!("{}/v1/models", server.url))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let mut r = agent()
        .get(format!("{}/v1/models", server.url))
        .header("authorization", "Bearer sesame")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let json: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(json["data"].as_array().unwrap().len(), 4);
}

const PIPELINE: &str = r#"stage base = init {
  tokenizer = "tokenizers/tiny-chat"
  size = "tiny"
}

stage tuned = sft {
  model = base.model
  data = jsonl("data/quickstart/train.jsonl", format = "messages")
  tuning = lora(rank = 4)
  max_steps = 2
  batch_size = 4
  max_len = 64
}
"#;

/// A pipeline's LoRA stage is an adapter on the model it started from; a stage not built yet is
/// refused with the command that builds it.
#[test]
fn a_pipelines_lora_stage_is_served_as_an_adapter_on_its_base() {
    let d = common::pipeline_copy("serve", &["tokenizers/tiny-chat", "data/quickstart"]);
    std::fs::write(d.0.join("p.ptl"), PIPELINE).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(["serve", "p.ptl", "--port", "0"])
        .current_dir(&d.0)
        .env_remove("PTL_STORE")
        .output()
        .unwrap();
    let text = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not built yet: base, tuned; run `ptl run p.ptl` first"),
        "{text}"
    );
    let o = common::ptl(&d.0, &["run", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    let server = start(&d.0, "pipeline", &["p.ptl"]);
    let mut r = agent()
        .get(format!("{}/v1/models", server.url))
        .call()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let ids: Vec<(String, Option<String>)> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["parent"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [("base".into(), None), ("tuned".into(), Some("base".into()))],
        "{json}"
    );
    let (got, json) = post(
        &server.url,
        "/v1/chat/completions",
        r#"{"model": "tuned", "messages": [{"role": "user", "content": "7+8="}], "max_tokens": 3, "temperature": 0}"#,
    );
    assert_eq!(got, 200, "{json}");
}

/// Ctrl-C (SIGINT) lets the requests in flight finish, then the server exits 0.
#[test]
fn ctrl_c_drains_the_requests_in_flight() {
    let dir = common::Dir::new("serve-drain");
    let mut server = adapters_server(&dir.0, &[]);
    let body = r#"{"model": "a", "messages": [{"role": "user", "content": "7+8="}], "max_tokens": 200, "temperature": 0, "stream": true}"#;
    let r = agent()
        .post(format!("{}/v1/chat/completions", server.url))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(r.into_body().into_reader()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("data: "), "{first}");
    let killed = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines
        .map(|l| l.unwrap())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("data: [DONE]"),
        "{rest:?}"
    );
    let finish = rest
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .next();
    assert!(finish.is_some(), "the answer ran to its end: {rest:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

/// A full queue answers 429 with `Retry-After` (an OpenAI error), and the requests it took complete.
#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let dir = common::Dir::new("serve-queue");
    let server = adapters_server(&dir.0, &["--max-batch", "1", "--queue", "1"]);
    let body = r#"{"model": "base", "messages": [{"role": "user", "content": "7+8="}], "max_tokens": 200, "temperature": 0}"#;
    let answers: Vec<(u16, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut r = agent()
                        .post(format!("{}/v1/chat/completions", server.url))
                        .header("content-type", "application/json")
                        .send(body)
                        .unwrap();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    (
                        r.status().as_u16(),
                        retry,
                        r.body_mut().read_to_string().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(!refused.is_empty(), "{answers:?}");
    for (_, retry, text) in &refused {
        assert_eq!(retry.as_deref(), Some("1"));
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(json["error"]["type"], "rate_limit_error", "{text}");
    }
    assert!(
        answers.iter().all(|a| a.0 == 200 || a.0 == 429),
        "{answers:?}"
    );
    assert!(answers.iter().any(|a| a.0 == 200), "{answers:?}");
}
