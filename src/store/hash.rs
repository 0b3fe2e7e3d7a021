//! Content hashes (blake3) of input files and directories, remembered by (path, device, inode, size,
//! mtime, ctime) so that unchanged inputs are never read again.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files at least this large are hashed by several threads over a memory map.
const PARALLEL_FILE: u64 = 8 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    inode: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cached {
    stamp: Stamp,
    hash: String,
}

/// The hash cache of one store (`<store>/hashcache.json`).
pub struct HashCache {
    file: PathBuf,
    entries: BTreeMap<String, Cached>,
    dirty: bool,
}

/// The blake3 hash of a file's bytes, streamed (large files: memory-mapped, several threads).
pub fn hash_file_uncached(path: &Path) -> io::Result<String> {
    let size = std::fs::metadata(path)?.len();
    let mut h = blake3::Hasher::new();
    if size >= PARALLEL_FILE {
        h.update_mmap_rayon(path)?;
    } else {
        h.update_reader(std::fs::File::open(path)?)?;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Every regular file under `dir`, as sorted relative paths.
pub fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                go(root, &path, out)?;
            } else if meta.is_file() {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Combines (relative path, file hash) pairs into one hash for a directory tree.
pub fn combine(files: &[(String, String)]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"ptl-tree-v1\n");
    for (path, hash) in files {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(hash.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

impl HashCache {
    pub fn load(store: &Path) -> HashCache {
        let file = store.join("hashcache.json");
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            file,
            entries,
            dirty: false,
        }
    }

    /// Writes the cache if it changed (atomically: a crash leaves the old or the new file).
    pub fn save(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let tmp = self
            .file
            .with_extension(format!("json.{}.tmp", super::unique_suffix()));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&self.entries).map_err(io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &self.file)?;
        self.dirty = false;
        Ok(())
    }

    fn key(path: &Path) -> String {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    }

    /// Hashes of many files; those not cached are hashed in parallel.
    pub fn files(&mut self, paths: &[PathBuf]) -> io::Result<Vec<String>> {
        let mut out: Vec<Option<String>> = Vec::with_capacity(paths.len());
        let mut misses = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let meta = std::fs::metadata(p)?;
            let stamp = Stamp::of(&meta);
            let key = Self::key(p);
            match self.entries.get(&key) {
                Some(c) if c.stamp == stamp => out.push(Some(c.hash.clone())),
                _ => {
                    out.push(None);
                    misses.push((i, key, stamp));
                }
            }
        }
        let hashed: Vec<io::Result<String>> = misses
            .par_iter()
            .map(|(i, _, _)| hash_file_uncached(&paths[*i]))
            .collect();
        for ((i, key, stamp), hash) in misses.into_iter().zip(hashed) {
            let hash = hash?;
            // A file that changed while it was read is hashed again next time.
            if std::fs::metadata(&paths[i]).map(|m| Stamp::of(&m)).ok() == Some(stamp.clone()) {
                self.entries.insert(
                    key,
                    Cached {
                        stamp,
                        hash: hash.clone(),
                    },
                );
                self.dirty = true;
            }
            out[i] = Some(hash);
        }
        Ok(out.into_iter().map(|h| h.unwrap_or_default()).collect())
    }

    pub fn file(&mut self, path: &Path) -> io::Result<String> {
        Ok(self.files(&[path.to_path_buf()])?.remove(0))
    }

    /// The hash of a directory: its files' relative paths and contents.
    pub fn dir(&mut self, dir: &Path) -> io::Result<String> {
        let rel = walk(dir)?;
        let abs: Vec<PathBuf> = rel.iter().map(|r| dir.join(r)).collect();
        let hashes = self.files(&abs)?;
        let pairs: Vec<(String, String)> = rel
            .iter()
            .map(|r| r.to_string_lossy().into_owned())
            .zip(hashes)
            .collect();
        Ok(combine(&pairs))
    }

    /// A file or directory.
    pub fn path(&mut self, path: &Path) -> io::Result<String> {
        if std::fs::metadata(path)?.is_dir() {
            self.dir(path)
        } else {
            self.file(path)
        }
    }
}
