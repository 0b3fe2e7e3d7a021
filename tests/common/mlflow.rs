//! Real MLflow servers for the tests: the pinned MLflow from the harness's own virtual environment
//! (tests/common/venv.rs), on a free port of 127.0.0.1, optionally with the basic-auth app and TLS.

use super::venv::python_env;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The MLflow the tests run against (with the `auth` extra, for the basic-auth app).
pub const VERSION: &str = "3.17.2";
/// The basic-auth app's admin, created on the server's first start.
pub const ADMIN: (&str, &str) = ("admin", "ptl-test-password");

pub struct Server {
    /// `http://127.0.0.1:PORT` or `https://...`
    pub uri: String,
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The launcher stops the server's whole process group when it gets SIGTERM.
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// How a server is started.
#[derive(Default)]
pub struct Options {
    /// The basic-auth app, with [`ADMIN`] as its admin.
    pub basic_auth: bool,
    /// HTTPS with tests/fixtures/tls/cert.pem (a certificate for 127.0.0.1 that the test CA signed).
    pub tls: bool,
}

/// The CA file that verifies a TLS server's certificate.
pub fn tls_cert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem")
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The plain server the tests of one binary share: `PTL_TEST_MLFLOW_URI` when set, else one started
/// here, which ends with the test binary.
pub fn shared() -> &'static str {
    static SERVER: OnceLock<Server> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            if let Some(uri) = std::env::var("PTL_TEST_MLFLOW_URI")
                .ok()
                .filter(|u| !u.trim().is_empty())
            {
                return Server {
                    uri: uri.trim().trim_end_matches('/').to_string(),
                    child: None,
                };
            }
            let dir = std::env::temp_dir().join(format!("ptl-mlflow-{}", std::process::id()));
            start(&dir, &Options::default())
        })
        .uri
}

/// Starts a server with its stores in `dir` and waits until it answers.
pub fn start(dir: &Path, opts: &Options) -> Server {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let venv = python_env(
        &format!("mlflow-{VERSION}"),
        &[&format!("mlflow[auth]=={VERSION}")],
    );
    let port = free_port();
    let scheme = if opts.tls { "https" } else { "http" };
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/run_until_parent_exits.py"))
        .arg(venv.join("bin/mlflow"))
        .arg("server")
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(dir.join("artifacts"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--workers", "1"])
        .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if opts.basic_auth {
        let ini = dir.join("basic_auth.ini");
        std::fs::write(
            &ini,
            format!(
                "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{}\nadmin_username = {}\n\
                 admin_password = {}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
                dir.join("auth.db").display(),
                ADMIN.0,
                ADMIN.1
            ),
        )
        .unwrap();
        cmd.args(["--app-name", "basic-auth"])
            .env("MLFLOW_AUTH_CONFIG_PATH", &ini)
            .env("MLFLOW_FLASK_SERVER_SECRET_KEY", "ptl-tests");
    }
    if opts.tls {
        let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        cmd.arg("--uvicorn-opts").arg(format!(
            "--ssl-keyfile {} --ssl-certfile {}",
            tls.join("key.pem").display(),
            tls.join("cert.pem").display()
        ));
    }
    let mut server = Server {
        uri: format!("{scheme}://127.0.0.1:{port}"),
        child: Some(cmd.spawn().expect("starting `mlflow server`")),
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if health(&server.uri) {
            return server;
        }
        let exited = server.child.as_mut().unwrap().try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("`mlflow server` did not come up ({exited:?}); its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An HTTP(S) client that trusts the test certificate.
pub fn agent() -> ureq::Agent {
    let pem = std::fs::read(tls_cert()).unwrap();
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

fn health(uri: &str) -> bool {
    agent()
        .get(format!("{uri}/health"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}
