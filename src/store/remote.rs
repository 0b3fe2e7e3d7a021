//! The store's remote tier: entries shared through an object store (an S3 bucket, or a folder every
//! machine mounts), so that machines running the same pipeline compute each stage once.
//!
//! Layout under the remote's prefix: `objects/<blake3>` (file contents, named by their hash, so an
//! entry's unchanged files are stored once), `entries/<key>.json` (the manifest, written after every
//! object it names: a reader never sees a partial entry) and `leases/<key>.json` (which machine is
//! computing that entry now, so the others wait for it instead of computing it too).

use super::entry::Manifest;
use super::Store;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files larger than this go up in parts of this size (S3 limits one PUT to 5 GB).
const PART: usize = 8 << 20;
/// How long a lease holds without renewal (`PTL_REMOTE_LEASE_SECONDS`, default 60): a machine that
/// dies stops blocking the others after this. Its holder renews it every third of it.
fn lease_seconds() -> u64 {
    std::env::var("PTL_REMOTE_LEASE_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|s| *s >= 3)
        .unwrap_or(60)
}

/// A remote store: where it is and a client for it.
pub struct Remote {
    url: String,
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
    /// Objects that did not match their hash when downloaded: uploaded again, whatever is there.
    refused: Mutex<HashSet<String>>,
}

/// What one download or upload moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transfer {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl Transfer {
    /// `3 files, 12.4 MB in 0.8 s`
    pub fn describe(&self) -> String {
        format!(
            "{} file{}, {:.1} MB in {:.1} s",
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.bytes as f64 / 1e6,
            self.seconds
        )
    }
}

/// The body of `leases/<key>.json`.
#[derive(Serialize, Deserialize)]
struct LeaseBody {
    owner: String,
    expires_unix: u64,
}

/// The right to compute one entry; renewed in the background, given up on drop.
pub struct Lease {
    objects: Arc<dyn ObjectStore>,
    path: ObjectPath,
    handle: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.renewer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.handle.block_on(self.objects.delete(&self.path));
    }
}

/// Who holds an entry's lease, when another machine does.
pub enum Claim {
    Held(Lease),
    /// Held by `owner` (host and process) until its lease expires.
    Busy {
        owner: String,
    },
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A name for this process that other machines can show: `host:pid`.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// The remote store a pipeline uses: its `store { remote = ... }`, else `$PTL_REMOTE_STORE` (`""`:
/// none), opened.
pub fn of_pipeline(p: &crate::lang::pipeline::Pipeline) -> Result<Option<Remote>, String> {
    let written = match p.store.get("remote") {
        Some(crate::lang::value::Value::Str(url)) => Some(url.as_str()),
        _ => None,
    };
    configured(written)?
        .map(|url| Remote::open(&url))
        .transpose()
}

/// The remote store's address: `written` in the pipeline, else `$PTL_REMOTE_STORE`; `None` for none.
fn configured(written: Option<&str>) -> Result<Option<String>, String> {
    let url = match written {
        Some(url) => url.to_string(),
        None => std::env::var("PTL_REMOTE_STORE").unwrap_or_default(),
    };
    let url = url.trim().to_string();
    if let Some(why) = crate::lang::settings::bad_remote(&url) {
        return Err(format!("PTL_REMOTE_STORE=\"{url}\": {why}"));
    }
    Ok((!url.is_empty()).then_some(url))
}

impl Remote {
    /// A client for `url` (`s3://bucket/prefix`: credentials, region and endpoint from the usual
    /// `AWS_*` variables; `file:///folder`). Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote, String> {
        let fail = |e: &dyn std::fmt::Display| format!("remote store {url}: {e}");
        let (objects, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(10))
                            .with_timeout(Duration::from_secs(300)),
                    )
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(30),
                        ..RetryConfig::default()
                    });
                // A plain-HTTP endpoint (a local MinIO or moto) is what its address says.
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_default();
                if endpoint.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    builder = builder.with_region("us-east-1");
                }
                let s3 = builder.build().map_err(|e| fail(&e))?;
                (Arc::new(s3), prefix.to_string())
            } else if let Some(path) = url.strip_prefix("file://") {
                std::fs::create_dir_all(path).map_err(|e| fail(&e))?;
                let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| fail(&e))?;
                (Arc::new(fs), String::new())
            } else {
                return Err(fail(&"not an s3:// or file:// address"));
            };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ptl-remote")
            .enable_all()
            .build()
            .map_err(|e| fail(&e))?;
        Ok(Remote {
            url: url.to_string(),
            objects,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            runtime,
            refused: Mutex::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        p.extend(rel.split('/'));
        p
    }

    fn manifest_path(&self, key: &str) -> ObjectPath {
        self.path(&format!("entries/{key}.json"))
    }

    fn object_path(&self, hash: &str) -> ObjectPath {
        self.path(&format!("objects/{hash}"))
    }

    fn lease_path(&self, key: &str) -> ObjectPath {
        self.path(&format!("leases/{key}.json"))
    }

    /// The bytes at `path`; `None` when there is no such object.
    fn get_bytes(&self, path: &ObjectPath) -> io::Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            match self.objects.get(path).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(other)?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(other(e)),
            }
        })
    }

    /// The manifest of the remote entry for `key`, if there is one.
    pub fn manifest(&self, key: &str) -> io::Result<Option<Manifest>> {
        let Some(bytes) = self.get_bytes(&self.manifest_path(key))? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable remote manifest: {e}"),
            )
        })?;
        if m.key != key {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the remote manifest of {key} names key {}", m.key),
            ));
        }
        Ok(Some(m))
    }

    /// Downloads the entry `manifest` describes into `store`, checking every file against its hash
    /// and size as it arrives. A file that does not match is refused (`InvalidData`): nothing is
    /// committed, and its object is uploaded again by the next upload that has it.
    pub fn download(&self, store: &Store, manifest: &Manifest) -> io::Result<Transfer> {
        let started = std::time::Instant::now();
        let pending = store.begin(&manifest.key)?;
        let result = self.runtime.block_on(async {
            let mut moved = Transfer::default();
            for (rel, info) in &manifest.files {
                if rel.split('/').any(|part| part == ".." || part.is_empty()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the remote manifest names an unsafe path {rel}"),
                    ));
                }
                let dest = pending.out.join(rel);
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = io::BufWriter::new(std::fs::File::create(&dest)?);
                let mut hasher = blake3::Hasher::new();
                let mut size = 0u64;
                let mut stream = self
                    .objects
                    .get(&self.object_path(&info.hash))
                    .await
                    .map_err(other)?
                    .into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(other)?;
                    hasher.update(&chunk);
                    file.write_all(&chunk)?;
                    size += chunk.len() as u64;
                }
                file.flush()?;
                let hash = hasher.finalize().to_hex().to_string();
                if hash != info.hash || size != info.size {
                    self.refused
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(info.hash.clone());
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the remote copy of {rel} does not match the hash its manifest gives \
                             (objects/{}: {size} bytes hashing to {hash}); refused",
                            info.hash
                        ),
                    ));
                }
                moved.files += 1;
                moved.bytes += size;
            }
            Ok(moved)
        });
        match result {
            Ok(mut moved) => {
                store.install(pending, manifest)?;
                moved.seconds = started.elapsed().as_secs_f64();
                Ok(moved)
            }
            Err(e) => {
                store.abort(pending);
                Err(e)
            }
        }
    }

    /// Uploads the local entry `key`: every object it names that the remote lacks (or that a download
    /// refused), then its manifest.
    pub fn upload(&self, store: &Store, key: &str) -> io::Result<Transfer> {
        let started = std::time::Instant::now();
        let manifest = store.manifest(key)?;
        let out = store.entry_dir(key).join("out");
        // One file per distinct content.
        let mut by_hash: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
        for (rel, info) in &manifest.files {
            by_hash.entry(&info.hash).or_insert((rel, info.size));
        }
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let moved = self.runtime.block_on(async {
            let mut moved = Transfer::default();
            for (hash, (rel, size)) in by_hash {
                let path = self.object_path(hash);
                if !refused.contains(hash) {
                    match self.objects.head(&path).await {
                        Ok(meta) if meta.size == size => continue,
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(other(e)),
                    }
                }
                self.put_file(&path, &out.join(rel), size).await?;
                moved.files += 1;
                moved.bytes += size;
            }
            Ok::<_, io::Error>(moved)
        })?;
        // Test-only: dies here as `kill -9` would, every object up and the manifest not.
        #[cfg(feature = "test-kinds")]
        if std::env::var("PTL_FAULT").is_ok_and(|f| f == "crash_before_remote_manifest") {
            std::process::abort();
        }
        let body = serde_json::to_vec_pretty(&manifest).map_err(other)?;
        self.runtime
            .block_on(
                self.objects
                    .put(&self.manifest_path(key), PutPayload::from(body)),
            )
            .map_err(other)?;
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|h| !manifest.files.values().any(|i| &i.hash == h));
        Ok(Transfer {
            seconds: started.elapsed().as_secs_f64(),
            ..moved
        })
    }

    /// One file to one object: a single PUT, or parts for large files. Either way the object appears
    /// whole or not at all.
    async fn put_file(
        &self,
        path: &ObjectPath,
        file: &std::path::Path,
        size: u64,
    ) -> io::Result<()> {
        let mut reader = std::fs::File::open(file)?;
        if size <= PART as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            reader.read_to_end(&mut bytes)?;
            self.objects
                .put(path, PutPayload::from(bytes))
                .await
                .map_err(other)?;
            return Ok(());
        }
        let upload = self.objects.put_multipart(path).await.map_err(other)?;
        let mut parts = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            parts.wait_for_capacity(10).await.map_err(other)?;
            parts.write(&buf[..n]);
        }
        parts.finish().await.map_err(other)?;
        Ok(())
    }

    /// Takes the lease on computing `key`, or says who holds it. An expired lease (its holder died or
    /// lost the network) is broken and taken.
    pub fn claim(&self, key: &str) -> io::Result<Claim> {
        let path = self.lease_path(key);
        let me = owner();
        for _ in 0..3 {
            let body = LeaseBody {
                owner: me.clone(),
                expires_unix: now_unix() + lease_seconds(),
            };
            let bytes = serde_json::to_vec(&body).map_err(other)?;
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let put = self.runtime.block_on(self.objects.put_opts(
                &path,
                PutPayload::from(bytes),
                create,
            ));
            match put {
                Ok(_) => return Ok(Claim::Held(self.renewing(path, me))),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(other(e)),
            }
            let Some(held) = self.get_bytes(&path)? else {
                continue; // given up meanwhile: try again
            };
            match serde_json::from_slice::<LeaseBody>(&held) {
                Ok(l) if l.expires_unix > now_unix() => return Ok(Claim::Busy { owner: l.owner }),
                _ => {
                    let _ = self.runtime.block_on(self.objects.delete(&path));
                }
            }
        }
        Ok(Claim::Busy {
            owner: "another machine".into(),
        })
    }

    /// A held lease whose expiry a background thread pushes forward until it is dropped.
    fn renewing(&self, path: ObjectPath, me: String) -> Lease {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = self.runtime.handle().clone();
        let objects = self.objects.clone();
        let renewer = {
            let (stop, handle, objects, path) =
                (stop.clone(), handle.clone(), objects.clone(), path.clone());
            std::thread::Builder::new()
                .name("ptl-lease".into())
                .spawn(move || loop {
                    std::thread::park_timeout(Duration::from_secs(lease_seconds() / 3));
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let body = LeaseBody {
                        owner: me.clone(),
                        expires_unix: now_unix() + lease_seconds(),
                    };
                    if let Ok(bytes) = serde_json::to_vec(&body) {
                        let _ = handle.block_on(objects.put(&path, PutPayload::from(bytes)));
                    }
                })
                .ok()
        };
        Lease {
            objects,
            path,
            handle,
            stop,
            renewer,
        }
    }
}
