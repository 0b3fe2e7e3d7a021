//! Helpers shared by the integration tests that drive the `ptl` binary.

use std::path::Path;

/// The stages a `test_step` pipeline logged (`log = "ran.log"`), sorted; the log is emptied.
pub fn ran(dir: &Path) -> Vec<String> {
    let path = dir.join("ran.log");
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let mut lines: Vec<String> = log.lines().map(str::to_string).collect();
    lines.sort();
    lines
}
