//! The store of a worker on another node than its launcher (placed by Ray): its own folder, into
//! which it downloads the stage's inputs from the remote store (verified as every download is), and
//! where it writes its scratch; removed when the worker ends.

use crate::error::Error;
use crate::lang::pipeline::Pipeline;
use crate::run::workers::Spec;
use crate::store::Store;
use std::path::{Path, PathBuf};

/// The worker's own folder; dropping it removes it.
pub struct OwnStore {
    pub store: Store,
    root: PathBuf,
}

impl Drop for OwnStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `(key, the path below the entry)` of `path` when it lies in an entry of the store at `root`.
fn in_entry(root: &Path, path: &Path) -> Option<(String, PathBuf)> {
    let rel = path.strip_prefix(root.join("entries")).ok()?;
    let mut parts = rel.components();
    let key = parts.next()?.as_os_str().to_str()?.to_string();
    Some((key, parts.as_path().to_path_buf()))
}

/// Opens worker `rank`'s own store, fetches every input of `spec` that lies in the launcher's store
/// into it, and points `spec`'s inputs and scratch at it.
pub fn open(
    spec: &mut Spec,
    p: &Pipeline,
    rank: usize,
    token: &str,
) -> crate::error::Result<OwnStore> {
    let root = std::env::temp_dir().join(format!(
        "ptl-worker-{}-{rank}",
        &token[..token.len().min(16)]
    ));
    let store = Store::open(&root)
        .map_err(|e| Error::Store(format!("cannot create {}: {e}", root.display())))?;
    let own = OwnStore {
        store,
        root: root.clone(),
    };
    let remote = crate::store::remote::of_pipeline(p)
        .map_err(Error::Store)?
        .ok_or_else(|| {
            Error::Workers(
                "a worker on another node reads the stage's inputs from the remote store, and \
                 there is none"
                    .into(),
            )
        })?;
    let mut fetched = 0;
    for paths in spec.inputs.values_mut() {
        for path in paths.iter_mut() {
            let Some((key, below)) = in_entry(&spec.store, path) else {
                continue;
            };
            if !own.store.has(&key) {
                let manifest = remote
                    .manifest(&key)
                    .map_err(|e| Error::Store(format!("the remote entry {key}: {e}")))?
                    .ok_or_else(|| {
                        Error::Store(format!(
                            "the remote store has no entry {key}, an input of this stage"
                        ))
                    })?;
                remote
                    .download(&own.store, &manifest)
                    .map_err(|e| Error::Store(format!("downloading the entry {key}: {e}")))?;
                fetched += 1;
            }
            *path = own.store.entry_dir(&key).join(below);
        }
    }
    crate::run::workers::send(&crate::run::workers::Message::Log {
        line: format!(
            "downloaded {fetched} input entr{} from the remote store into its own store {}",
            if fetched == 1 { "y" } else { "ies" },
            root.display()
        ),
    });
    spec.scratch = root.join("scratch");
    spec.store = root;
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_in_an_entry_is_its_key_and_the_rest() {
        let root = Path::new("/s");
        assert_eq!(
            in_entry(root, Path::new("/s/entries/abc/out/model")),
            Some(("abc".to_string(), PathBuf::from("out/model")))
        );
        assert_eq!(in_entry(root, Path::new("/data/train.jsonl")), None);
        assert_eq!(in_entry(root, Path::new("/s/tmp/x")), None);
    }
}
