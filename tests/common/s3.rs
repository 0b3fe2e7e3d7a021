//! A real S3-compatible server for the tests: moto in server mode, from the harness's own virtual
//! environment (tests/common/venv.rs), on a free port of 127.0.0.1; and the few S3 calls the tests
//! make to it directly (create a bucket, list, overwrite or delete an object) over plain HTTP.

use super::mlflow::free_port;
use super::venv::python_env;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The moto the tests run against.
pub const VERSION: &str = "5.2.5";

pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The server the tests of one binary share; it ends with the test binary.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> Server {
    let venv = python_env(
        &format!("moto-{VERSION}"),
        &[&format!("moto[server]=={VERSION}")],
    );
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("ptl-moto-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/run_until_parent_exits.py"))
        .arg(venv.join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting moto_server");
    let mut server = Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if agent().get(&server.endpoint).call().is_ok() {
            return server;
        }
        let exited = server.child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("moto_server did not come up ({exited:?}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// moto checks who asks, not the signature: a request names its access key in the usual header.
const AUTHORIZATION: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                             SignedHeaders=host, Signature=0";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

impl Server {
    /// The variables a `ptl` process needs to reach this server (as the AWS CLI and SDKs read them).
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let r = agent()
            .put(format!("{}/{bucket}", self.endpoint))
            .header("Authorization", AUTHORIZATION)
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 200, "creating bucket {bucket}");
    }

    /// Every key under `prefix` in `bucket`, sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut r = agent()
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.endpoint
            ))
            .header("Authorization", AUTHORIZATION)
            .call()
            .unwrap();
        let xml = r.body_mut().read_to_string().unwrap();
        let mut keys: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let mut r = agent()
            .get(format!("{}/{bucket}/{key}", self.endpoint))
            .header("Authorization", AUTHORIZATION)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "GET {key}");
        r.body_mut().read_to_vec().unwrap()
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let r = agent()
            .put(format!("{}/{bucket}/{key}", self.endpoint))
            .header("Authorization", AUTHORIZATION)
            .send(body)
            .unwrap();
        assert_eq!(r.status(), 200, "PUT {key}");
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let r = agent()
            .delete(format!("{}/{bucket}/{key}", self.endpoint))
            .header("Authorization", AUTHORIZATION)
            .call()
            .unwrap();
        assert!(r.status() == 204 || r.status() == 200, "DELETE {key}");
    }
}
