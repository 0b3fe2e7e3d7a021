//! Store entries: written under tmp/, hashed, fsynced, described by a manifest, renamed into place.
//! A killed run leaves at most a tmp/ folder, never an entry that reads as a hit.

use super::hash::{combine, hash_file_uncached, walk};
use super::Store;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub hash: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub kind_version: u32,
    pub ptl_version: String,
    /// What the key was computed from: parameters with input content hashes.
    pub key_inputs: serde_json::Value,
    /// Output name → content hash (`out/<name>/...` or `out/<name>.<ext>`).
    pub outputs: BTreeMap<String, String>,
    /// Every file under out/, by relative path.
    pub files: BTreeMap<String, FileInfo>,
    pub seconds: f64,
    pub created_unix: u64,
}

impl Manifest {
    /// The manifest of a shared artifact (tokenized data, reference log-probs): no stage key
    /// document, no timing (`commit` fills in the files and output hashes).
    pub fn artifact(key: &str, stage: String, kind: &str, kind_version: u32) -> Manifest {
        Manifest {
            key: key.to_string(),
            stage,
            kind: kind.to_string(),
            kind_version,
            ptl_version: env!("CARGO_PKG_VERSION").into(),
            key_inputs: serde_json::Value::Null,
            outputs: Default::default(),
            files: Default::default(),
            seconds: 0.0,
            created_unix: 0,
        }
    }
}

/// An entry being written: the stage writes its outputs into `out`.
pub struct Pending {
    pub dir: PathBuf,
    pub out: PathBuf,
}

/// The files of an output: `<name>/...` or `<name>.<ext>`.
fn belongs(file: &str, output: &str) -> bool {
    file.strip_prefix(output).is_some_and(|rest| {
        rest.starts_with('/') || (rest.starts_with('.') && !rest[1..].contains('/'))
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Hashes every file under `out` (in parallel).
pub fn hash_tree(out: &Path) -> io::Result<BTreeMap<String, FileInfo>> {
    let files = walk(out)?;
    let infos: Vec<io::Result<(String, FileInfo)>> = files
        .par_iter()
        .map(|rel| {
            let p = out.join(rel);
            let size = std::fs::metadata(&p)?.len();
            Ok((
                rel.to_string_lossy().into_owned(),
                FileInfo {
                    hash: hash_file_uncached(&p)?,
                    size,
                },
            ))
        })
        .collect();
    infos.into_iter().collect()
}

/// Output hashes from the file list.
pub fn output_hashes(
    files: &BTreeMap<String, FileInfo>,
    outputs: &[&str],
) -> BTreeMap<String, String> {
    outputs
        .iter()
        .map(|o| {
            let pairs: Vec<(String, String)> = files
                .iter()
                .filter(|(f, _)| belongs(f, o))
                .map(|(f, i)| (f.clone(), i.hash.clone()))
                .collect();
            (o.to_string(), combine(&pairs))
        })
        .collect()
}

impl Store {
    /// Starts an entry for `key` in tmp/.
    pub fn begin(&self, key: &str) -> io::Result<Pending> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{key}.{}", super::unique_suffix()));
        let out = dir.join("out");
        std::fs::create_dir_all(&out)?;
        Ok(Pending { dir, out })
    }

    /// Hashes and fsyncs a pending entry, writes its manifest and renames it into entries/.
    /// `manifest.files` and `manifest.outputs` are filled in here.
    pub fn commit(
        &self,
        pending: Pending,
        mut manifest: Manifest,
        outputs: &[&str],
    ) -> io::Result<Manifest> {
        let hashed = hash_tree(&pending.out).and_then(|files| {
            manifest.outputs = output_hashes(&files, outputs);
            manifest.files = files;
            fault("commit")
        });
        if let Err(e) = hashed {
            let _ = std::fs::remove_dir_all(&pending.dir);
            return Err(e);
        }
        self.install(pending, &manifest)
    }

    /// Fsyncs a pending entry whose files `manifest` already describes (hashed here, or checked as
    /// they were downloaded), writes the manifest and renames the entry into entries/.
    pub fn install(&self, pending: Pending, manifest: &Manifest) -> io::Result<Manifest> {
        let result = (|| {
            for rel in manifest.files.keys() {
                std::fs::File::open(pending.out.join(rel))?.sync_all()?;
            }
            let path = pending.dir.join("manifest.json");
            let bytes = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
            let mut f = std::fs::File::create(&path)?;
            io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            fsync_dir(&pending.out)?;
            fsync_dir(&pending.dir)?;
            let target = self.entry_dir(&manifest.key);
            if target.exists() {
                // Another run committed the same key first; keep its entry.
                let _ = std::fs::remove_dir_all(&pending.dir);
                return self.manifest(&manifest.key);
            }
            std::fs::rename(&pending.dir, &target)?;
            fsync_dir(&self.root.join("entries"))?;
            Ok(manifest.clone())
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&pending.dir);
        }
        result
    }

    /// Abandons a pending entry.
    pub fn abort(&self, pending: Pending) {
        let _ = std::fs::remove_dir_all(&pending.dir);
    }

    /// Re-hashes every entry; returns a line per problem found.
    pub fn verify(&self) -> io::Result<(usize, Vec<String>)> {
        let mut problems = Vec::new();
        let mut count = 0;
        for e in std::fs::read_dir(self.root.join("entries"))? {
            let e = e?;
            let key = e.file_name().to_string_lossy().into_owned();
            count += 1;
            let manifest = match self.manifest(&key) {
                Ok(m) => m,
                Err(err) => {
                    problems.push(format!("{key}: unreadable manifest: {err}"));
                    continue;
                }
            };
            if manifest.key != key {
                problems.push(format!("{key}: manifest names key {}", manifest.key));
            }
            let out = e.path().join("out");
            let actual = match hash_tree(&out) {
                Ok(a) => a,
                Err(err) => {
                    problems.push(format!("{key}: cannot read outputs: {err}"));
                    continue;
                }
            };
            for (file, info) in &manifest.files {
                match actual.get(file) {
                    None => problems.push(format!("{key}: {file} is missing")),
                    Some(a) if a != info => {
                        problems.push(format!("{key}: {file} does not match its hash"))
                    }
                    Some(_) => {}
                }
            }
            for file in actual.keys().filter(|f| !manifest.files.contains_key(*f)) {
                problems.push(format!("{key}: {file} is not in the manifest"));
            }
        }
        Ok((count, problems))
    }
}

/// Test-only fault injection: `PTL_FAULT=<point>` makes that point fail as a full disk would.
#[cfg(feature = "test-kinds")]
pub fn fault(point: &str) -> io::Result<()> {
    if std::env::var("PTL_FAULT").is_ok_and(|f| f == point) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "no space left on device (simulated)",
        ));
    }
    Ok(())
}

#[cfg(not(feature = "test-kinds"))]
pub fn fault(_point: &str) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::belongs;

    #[test]
    fn outputs_own_their_folder_or_their_extension() {
        assert!(belongs("model/config.json", "model"));
        assert!(belongs("metrics.jsonl", "metrics"));
        assert!(!belongs("models/x", "model"));
        assert!(!belongs("metrics.d/x", "metrics"));
    }
}
