//! One "machine" of the remote-store and Ray tests: a folder with a pipeline, its data, its own local
//! store and lock file, whose `ptl` reaches the shared moto server (tests/common/s3.rs).

use super::s3;
use std::path::PathBuf;
use std::process::{Command, Output};

/// `header` (run-wide blocks), then three `test_step` stages that log to ran.log: `a` (spending
/// `a_ms`), and `b` (failing when asked) and `c`, independent of each other, on its model.
pub fn three_stages(header: &str, a_ms: u64, b_fails: bool) -> String {
    format!(
        r#"{header}let d = jsonl("d.jsonl", format = "text")

stage a = test_step {{
  data = d
  text = "first"
  sleep_ms = {a_ms}
  log = "ran.log"
}}

stage b = test_step {{
  model = a.model
  text = "second"
  fail = {b_fails}
  log = "ran.log"
}}

stage c = test_step {{
  model = a.model
  log = "ran.log"
}}
"#
    )
}

/// One machine: a folder with the pipeline, its data, its own store and lock file.
pub struct Machine {
    pub dir: PathBuf,
    pub env: Vec<(&'static str, String)>,
}

impl Machine {
    pub fn new(test: &str, name: &str, pipeline: &str) -> Machine {
        let dir =
            std::env::temp_dir().join(format!("ptl-remote-{test}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("d.jsonl"),
            "{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
        )
        .unwrap();
        std::fs::write(dir.join("p.ptl"), pipeline).unwrap();
        Machine {
            dir,
            env: s3::shared().env().to_vec(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ptl"));
        c.args(args)
            .current_dir(&self.dir)
            .env_remove("PTL_STORE")
            .env_remove("PTL_FAULT")
            .env_remove("PTL_REMOTE_STORE")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    }

    pub fn ptl(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("ptl runs")
    }

    /// `ptl run p.ptl`, which must succeed; its stdout.
    pub fn run_ok(&self) -> String {
        let o = self.ptl(&["run", "p.ptl"]);
        assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
        out(&o)
    }

    pub fn ran(&self) -> Vec<String> {
        super::ran(&self.dir)
    }

    pub fn lock(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("p.ptl.lock")).unwrap())
            .unwrap()
    }

    /// Stage name → (status, remote) from `ptl plan --format json`.
    pub fn plan(&self) -> Vec<(String, String, bool)> {
        let o = self.ptl(&["plan", "p.ptl", "--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let plan: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                    s["remote"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
