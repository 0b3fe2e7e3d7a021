//! The content-addressed artifact store: one entry per stage key, committed atomically, one lock per
//! entry, a hash cache for inputs, named links to outputs, verification and garbage collection.
//!
//! Layout of a store directory (default `.ptl/` beside the pipeline file):
//! `entries/<key>/` (manifest.json + out/), `tmp/` (entries being written), `locks/`, `out/<pipeline>/<stage>`
//! (links to entries), `hashcache.json`, `pipelines.json` (lock files that reference entries).

pub mod checkpoints;
pub mod entry;
pub mod gc;
pub mod hash;
pub mod locate;
pub mod remote;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use entry::Manifest;

/// `<pid>.<n>`: a suffix for temporary names that no other writer uses, in this process (threads and
/// watch-mode generations write the same files) or another. Starts with the pid, which `clean_tmp` reads.
pub fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", std::process::id())
}

pub struct Store {
    pub root: PathBuf,
    /// The shared tier (`store { remote = ... }`): looked in after this one, written after it.
    pub remote: Option<remote::Remote>,
}

/// An exclusive lock on a store entry (or another named resource); released on drop.
pub struct Lock {
    _file: File,
}

impl Store {
    /// Opens the store at `root`, creating its folders.
    pub fn open(root: &Path) -> io::Result<Store> {
        if root.exists() && !root.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        for sub in ["entries", "tmp", "locks", "out"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            remote: None,
        })
    }

    /// The store at `root` as it is, for reading: nothing is created (a missing store reads as empty).
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            remote: None,
        }
    }

    /// This store with `remote` as its shared tier.
    pub fn with_remote(mut self, remote: Option<remote::Remote>) -> Store {
        self.remote = remote;
        self
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    /// Whether a committed entry exists for `key` (a manifest is written before the entry appears).
    pub fn has(&self, key: &str) -> bool {
        self.entry_dir(key).join("manifest.json").is_file()
    }

    pub fn manifest(&self, key: &str) -> io::Result<Manifest> {
        let bytes = std::fs::read(self.entry_dir(key).join("manifest.json"))?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }

    /// Takes the lock named `name` (blocking until another process releases it).
    pub fn lock(&self, name: &str) -> io::Result<Lock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("locks").join(format!("{name}.lock")))?;
        file.lock()?;
        Ok(Lock { _file: file })
    }

    /// Takes the lock named `name` if no one holds it (`None`: someone does).
    pub fn try_lock(&self, name: &str) -> io::Result<Option<Lock>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("locks").join(format!("{name}.lock")))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Points `out/<pipeline>/<stage>` at an entry's outputs (a relative symlink, replaced atomically).
    pub fn link(&self, pipeline: &str, stage: &str, key: &str) -> io::Result<PathBuf> {
        let dir = self.root.join("out").join(pipeline);
        std::fs::create_dir_all(&dir)?;
        let link = dir.join(stage);
        let target = Path::new("../../entries").join(key).join("out");
        if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            return Ok(link);
        }
        let tmp = dir.join(format!(".{stage}.{}.tmp", unique_suffix()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &link)?;
        Ok(link)
    }

    /// Where `ptl path` points for a stage.
    pub fn link_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root.join("out").join(pipeline).join(stage)
    }
}
