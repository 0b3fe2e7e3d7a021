//! Garbage collection: entries that no registered pipeline's lock file references are removed, with
//! the folders of runs that died mid-write and, on request, the checkpoints of unfinished stages.

use super::Store;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

/// (name, bytes) of folders removed or kept.
pub type Sizes = Vec<(String, u64)>;

pub struct GcReport {
    /// (key, bytes) of the entries removed (or that would be, with dry-run).
    pub entries: Vec<(String, u64)>,
    pub tmp: Vec<(String, u64)>,
    pub kept: usize,
    /// (key, bytes) of checkpoint folders removed: those of finished stages always, those of
    /// unfinished stages when asked.
    pub checkpoints: Sizes,
    /// (key, bytes) of checkpoints kept: unfinished stages (resumable), or stages running now.
    pub kept_checkpoints: Sizes,
}

fn size_of(path: &Path) -> u64 {
    super::hash::walk(path)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| std::fs::metadata(path.join(f)).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

impl Store {
    fn registry(&self) -> PathBuf {
        self.root.join("pipelines.json")
    }

    /// The lock files of the pipelines that ran with this store.
    pub fn registered(&self) -> Vec<PathBuf> {
        std::fs::read(self.registry())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Remembers a pipeline's lock file so gc keeps what it references.
    pub fn register(&self, lock_file: &Path) -> io::Result<()> {
        let parent = lock_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let abs = std::fs::canonicalize(parent)?.join(lock_file.file_name().unwrap_or_default());
        let _guard = self.lock("registry")?;
        let mut all = self.registered();
        if all.contains(&abs) {
            return Ok(());
        }
        all.push(abs);
        let tmp = self.registry().with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&all).map_err(io::Error::other)?,
        )?;
        std::fs::rename(tmp, self.registry())
    }

    /// Removes tmp/ folders left by processes that no longer run.
    pub fn clean_tmp(&self, dry_run: bool) -> io::Result<Vec<(String, u64)>> {
        let mut removed = Vec::new();
        for e in std::fs::read_dir(self.root.join("tmp"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').nth(1).unwrap_or("");
            if pid_alive(pid) && pid != std::process::id().to_string() {
                continue;
            }
            if pid == std::process::id().to_string() {
                continue;
            }
            let size = size_of(&e.path());
            if !dry_run {
                std::fs::remove_dir_all(e.path())?;
            }
            removed.push((name, size));
        }
        Ok(removed)
    }

    pub fn gc(&self, dry_run: bool, checkpoints: bool) -> io::Result<GcReport> {
        let mut keep = BTreeSet::new();
        for lock in self.registered() {
            if let Ok(bytes) = std::fs::read(&lock) {
                if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    if let Some(stages) = j["stages"].as_object() {
                        keep.extend(
                            stages
                                .values()
                                .filter_map(|s| s["key"].as_str().map(str::to_string)),
                        );
                    }
                }
            }
        }
        let mut entries = Vec::new();
        let mut kept = 0;
        for e in std::fs::read_dir(self.root.join("entries"))? {
            let e = e?;
            let key = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&key) {
                kept += 1;
                continue;
            }
            let _guard = self.lock(&key)?;
            let size = size_of(&e.path());
            if !dry_run {
                // Renamed away first, so no reader sees a half-deleted entry.
                let doomed = self
                    .root
                    .join("tmp")
                    .join(format!("{key}.gc.{}", std::process::id()));
                std::fs::rename(e.path(), &doomed)?;
                std::fs::remove_dir_all(&doomed)?;
            }
            entries.push((key, size));
        }
        let tmp = self.clean_tmp(dry_run)?;
        let (checkpoints, kept_checkpoints) = self.clean_checkpoints(dry_run, checkpoints)?;
        Ok(GcReport {
            entries,
            tmp,
            kept,
            checkpoints,
            kept_checkpoints,
        })
    }

    /// Removes the checkpoints of stages whose entry exists (leftovers), and with `all` those of
    /// unfinished stages too, except a stage running now (its entry lock is held).
    fn clean_checkpoints(&self, dry_run: bool, all: bool) -> io::Result<(Sizes, Sizes)> {
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        let Ok(dir) = std::fs::read_dir(self.root.join("checkpoints")) else {
            return Ok((removed, kept));
        };
        for e in dir {
            let e = e?;
            let key = e.file_name().to_string_lossy().into_owned();
            let size = size_of(&e.path());
            let guard = self.try_lock(&key)?;
            if guard.is_none() || !(all || self.has(&key)) {
                kept.push((key, size));
                continue;
            }
            if !dry_run {
                std::fs::remove_dir_all(e.path())?;
            }
            removed.push((key, size));
        }
        Ok((removed, kept))
    }
}
