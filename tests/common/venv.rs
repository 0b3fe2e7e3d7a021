//! Python tools the tests talk to (an MLflow server), provisioned by the harness itself: a virtual
//! environment under target/ with pinned packages, created once, reused by later runs and by the other
//! test binaries (a file lock keeps two from building it at once).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter that creates the environments: `PTL_TEST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("PTL_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The environment `name` with `packages` (pip requirement strings, pinned) installed; its folder.
pub fn python_env(name: &str, packages: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("venvs");
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(name);
    let lock = std::fs::File::create(root.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    let ready = dir.join("ptl-ready.txt");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&ready).is_ok_and(|r| r == wanted) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let log = root.join(format!("{name}.log"));
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::write(&log, &text);
        assert!(
            out.status.success(),
            "{what} failed (the tests provision their Python tools themselves: they need {} with \
             the venv module and access to PyPI):\n{text}",
            python()
        );
    };
    run(
        Command::new(python()).args(["-m", "venv"]).arg(&dir),
        &format!("creating the virtual environment {}", dir.display()),
    );
    run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
        &format!("pip install {}", packages.join(" ")),
    );
    std::fs::write(&ready, wanted).unwrap();
    dir
}
