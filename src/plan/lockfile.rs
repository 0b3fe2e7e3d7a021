//! `FILE.ptl.lock`: per stage its key, parameters, input hashes and output hashes. Stable, sorted,
//! diff-friendly JSON meant to be committed; `ptl run --locked` refuses to change it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LockFile {
    pub version: u32,
    pub stages: BTreeMap<String, LockedStage>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LockedStage {
    pub kind: String,
    pub kind_version: u32,
    pub key: String,
    /// Parameters as written (paths, `stage.output` references), defaults filled in.
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
}

/// `pipelines/x.ptl` → `pipelines/x.ptl.lock`.
pub fn path_for(pipeline: &Path) -> PathBuf {
    let mut s = pipeline.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl LockFile {
    pub fn load(path: &Path) -> io::Result<LockFile> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::other(format!("{} is not a valid lock file: {e}", path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LockFile {
                version: 1,
                stages: BTreeMap::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        text.push('\n');
        let tmp = PathBuf::from(format!(
            "{}.{}.tmp",
            path.display(),
            crate::store::unique_suffix()
        ));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}
