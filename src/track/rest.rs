//! A minimal client for MLflow's REST API (2.0) over blocking HTTP(S): the five calls tracking needs.

use super::Access;
use serde_json::{json, Value};
use std::fmt;
use std::time::Duration;

/// How long to wait for a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one whole request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The most of a response body that is read (MLflow's answers to these calls are a few hundred bytes).
const MAX_RESPONSE: u64 = 4 << 20;

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The server answered with an HTTP error; `code` is MLflow's `error_code` when the body had one.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer: connection refused, timeout, not HTTP, not JSON.
    Transport(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api {
                status,
                code,
                message,
            } if code.is_empty() => {
                write!(f, "HTTP {status}: {message}")
            }
            Error::Api {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
            Error::Transport(why) => f.write_str(why),
        }
    }
}

/// One metric value of a `log-batch` call.
pub(crate) struct Metric {
    pub key: String,
    pub value: f64,
    pub timestamp_ms: i64,
    pub step: i64,
}

/// The most metrics and params one `log-batch` call may carry (MLflow's documented limits).
pub(crate) const MAX_BATCH_METRICS: usize = 1000;
pub(crate) const MAX_BATCH_PARAMS: usize = 100;

/// A connection to one MLflow tracking server.
pub(crate) struct Client {
    /// `<uri>/api/2.0/mlflow/`
    base: String,
    agent: ureq::Agent,
    /// The `Authorization` header every call carries, if any.
    authorization: Option<String>,
}

impl Client {
    /// Checks the URI's form and reads the CA file `access` names (no network I/O).
    pub fn new(uri: &str, access: &Access) -> Result<Client, String> {
        let uri = uri.trim();
        let host = match uri
            .strip_prefix("http://")
            .or_else(|| uri.strip_prefix("https://"))
        {
            Some(rest) => rest,
            None => {
                return Err(format!(
                    "`{uri}` is not the http:// or https:// URI of an MLflow tracking server (ptl does \
                     not write local `file:` or database stores; start `mlflow server` and point at it)"
                ))
            }
        };
        if host.trim_matches('/').is_empty() {
            return Err(format!("`{uri}` names no host"));
        }
        let mut tls = ureq::tls::TlsConfig::builder().disable_verification(access.insecure_tls);
        if let Some(path) = &access.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Client {
            base: format!("{}/api/2.0/mlflow/", uri.trim_end_matches('/')),
            agent,
            authorization: access.authorization(),
        })
    }

    /// The id of the experiment called `name`, created if there is none.
    pub fn experiment_id(&self, name: &str) -> Result<String, Error> {
        // Twice: another process may create the experiment between our lookup and our create.
        for _ in 0..2 {
            match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
                Ok(v) => {
                    let e = &v["experiment"];
                    if e["lifecycle_stage"].as_str() == Some("deleted") {
                        return Err(Error::Transport(format!(
                            "experiment `{name}` is deleted on the server; restore it or set another \
                             `track.experiment`"
                        )));
                    }
                    return string_field(e, "experiment_id");
                }
                Err(Error::Api { code, .. }) if code == "RESOURCE_DOES_NOT_EXIST" => {}
                Err(e) => return Err(e),
            }
            match self.post("experiments/create", &json!({ "name": name })) {
                Ok(v) => return string_field(&v, "experiment_id"),
                Err(Error::Api { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::Transport(format!(
            "experiment `{name}` could be neither found nor created"
        )))
    }

    /// Creates a run and returns its id.
    pub fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_ms: i64,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": start_ms,
            "tags": tags,
        });
        let v = self.post("runs/create", &body)?;
        let info = &v["run"]["info"];
        // `run_uuid` is the field's name before MLflow 1.x's rename; servers still send both.
        string_field(info, "run_id").or_else(|_| string_field(info, "run_uuid"))
    }

    /// Logs metrics and params (at most `MAX_BATCH_METRICS` and `MAX_BATCH_PARAMS`) in one call.
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
    ) -> Result<(), Error> {
        let metrics: Vec<Value> = metrics
            .iter()
            .map(|m| {
                json!({
                    "key": m.key,
                    "value": number(m.value),
                    "timestamp": m.timestamp_ms,
                    "step": m.step,
                })
            })
            .collect();
        let params: Vec<Value> = params
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let body = json!({ "run_id": run_id, "metrics": metrics, "params": params, "tags": [] });
        self.post("runs/log-batch", &body).map(|_| ())
    }

    /// Ends a run with `status` (FINISHED, FAILED or KILLED).
    pub fn end_run(&self, run_id: &str, status: &str, end_ms: i64) -> Result<(), Error> {
        let body = json!({ "run_id": run_id, "status": status, "end_time": end_ms });
        self.post("runs/update", &body).map(|_| ())
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, Error> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        answer(req.call())
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        answer(req.send(body.to_string()))
    }
}

/// A double as MLflow's protobuf-JSON reads it: NaN and the infinities as strings (JSON has no literal).
fn number(x: f64) -> Value {
    if x.is_nan() {
        json!("NaN")
    } else if x.is_infinite() {
        json!(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(x)
    }
}

fn string_field(v: &Value, field: &str) -> Result<String, Error> {
    match v[field].as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(Error::Transport(format!(
            "the server's answer has no `{field}`: {}",
            clip(&v.to_string())
        ))),
    }
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, Error> {
    let mut resp = r.map_err(|e| Error::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .lossy_utf8(true)
        .read_to_string()
        .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?;
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    if (200..300).contains(&status) {
        // Some calls answer `{}`; an empty body counts as that.
        return match parsed {
            Some(v) => Ok(v),
            None if text.trim().is_empty() => Ok(json!({})),
            None => Err(Error::Transport(format!(
                "HTTP {status} with a body that is not JSON: {}",
                clip(&text)
            ))),
        };
    }
    let (code, message) = match &parsed {
        Some(v) => (
            v["error_code"].as_str().unwrap_or_default().to_string(),
            v["message"].as_str().map_or_else(|| clip(&text), clip),
        ),
        None => (String::new(), clip(&text)),
    };
    Err(Error::Api {
        status,
        code,
        message,
    })
}

/// The first 300 characters of a server's text, for a warning.
fn clip(s: &str) -> String {
    let s = s.trim();
    let cut = super::params::truncate(s, 300);
    if cut.len() < s.len() {
        cut + "…"
    } else {
        cut
    }
}
