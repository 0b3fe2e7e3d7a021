//! A stage and the remote store: before it computes, its entry is downloaded if another machine has
//! computed it (or is computing it: then this run waits for it); after, the new entry is uploaded.

use crate::error::Error;
use crate::store::remote::{Claim, Lease, Remote};
use crate::store::{Manifest, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a run waiting for another machine's lease looks again.
const POLL: Duration = Duration::from_secs(1);

/// What the remote store gave a stage about to run.
pub enum Before {
    /// The entry, downloaded and checked.
    Fetched(Manifest),
    /// Compute it here; the lease (when one could be taken) keeps other machines waiting meanwhile.
    Compute(Option<Lease>),
}

/// Looks for `key` in the remote store; waits while another machine holds its lease. A remote that
/// cannot be reached, or an entry that fails its hashes, means computing here (said in the log).
pub fn before(
    remote: &Remote,
    store: &Store,
    key: &str,
    cancel: &AtomicBool,
    log: &dyn Fn(&str),
) -> Result<Before, Error> {
    let mut waited = false;
    let mut trust_manifest = true;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if trust_manifest {
            match remote.manifest(key) {
                Ok(Some(m)) => match download(remote, store, &m, log) {
                    Ok(()) => return Ok(Before::Fetched(local_manifest(store, key)?)),
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        log(&format!("{e}; computing it again"));
                        trust_manifest = false;
                    }
                    Err(e) => {
                        log(&format!(
                            "cannot download from the remote store {}: {e}; computing it here",
                            remote.url()
                        ));
                        return Ok(Before::Compute(None));
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    log(&format!(
                        "remote store {} not used: {e}; computing it here",
                        remote.url()
                    ));
                    return Ok(Before::Compute(None));
                }
            }
        }
        match remote.claim(key) {
            Ok(Claim::Held(lease)) => {
                // The holder before us may have finished between the look above and the claim.
                if trust_manifest && matches!(remote.manifest(key), Ok(Some(_))) {
                    drop(lease);
                    continue;
                }
                return Ok(Before::Compute(Some(lease)));
            }
            Ok(Claim::Busy { owner }) => {
                if !waited {
                    log(&format!(
                        "waiting for {owner}, which is computing this stage for the remote store"
                    ));
                }
                waited = true;
                std::thread::sleep(POLL);
            }
            Err(e) => {
                log(&format!(
                    "cannot take the remote store's lease: {e}; computing it here"
                ));
                return Ok(Before::Compute(None));
            }
        }
    }
}

/// Downloads the entry `manifest` describes into `store`, saying so in the log.
pub fn download(
    remote: &Remote,
    store: &Store,
    manifest: &Manifest,
    log: &dyn Fn(&str),
) -> std::io::Result<()> {
    let moved = remote.download(store, manifest)?;
    log(&format!(
        "downloaded from the remote store {}: {}",
        remote.url(),
        moved.describe()
    ));
    Ok(())
}

/// The local entry's manifest after a download (another run's, when one committed the key first).
pub fn local_manifest(store: &Store, key: &str) -> Result<Manifest, Error> {
    store
        .manifest(key)
        .map_err(|e| Error::Store(format!("store error: {e}")))
}

/// The failure of a stage outside --only/--from whose remote entry could not be used: it is never
/// computed.
pub fn not_fetched() -> Error {
    Error::Store(
        "not selected, and its entry in the remote store could not be used (see the log)".into(),
    )
}

/// Uploads a stage's new entry; a failure is said in the log (the local result stands).
pub fn after(remote: &Remote, store: &Store, key: &str, log: &dyn Fn(&str)) {
    match remote.upload(store, key) {
        Ok(moved) => log(&format!(
            "uploaded to the remote store {}: {}",
            remote.url(),
            moved.describe()
        )),
        Err(e) => log(&format!(
            "could not upload to the remote store {}: {e} (the result is in the local store)",
            remote.url()
        )),
    }
}
