//! What the workers of a data-parallel stage (`workers = N`) do together: sum their gradients and
//! share small records, behind one interface whatever carries them (the TCP ring of `ring`).

use std::fmt;

/// Why a collective did not complete: a worker left, went silent, or spoke out of turn. Every
/// collective fails with one of these within its timeout; none waits forever.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectiveError(pub String);

impl fmt::Display for CollectiveError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<CollectiveError> for crate::error::Error {
    fn from(e: CollectiveError) -> Self {
        crate::error::Error::Workers(e.0)
    }
}

/// One worker's view of its group. Every worker calls the same collectives in the same order.
pub trait Collective: Send + Sync {
    /// This worker's index, 0..world.
    fn rank(&self) -> usize;
    /// How many workers there are.
    fn world(&self) -> usize;
    /// Sums `data` element-wise over the workers, in place; every worker ends with the same bits.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CollectiveError>;
    /// Every worker's `bytes`, in rank order.
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;

    /// Whether any worker says yes (a stop request one of them saw).
    fn any(&self, yes: bool) -> Result<bool, CollectiveError> {
        Ok(self.all_gather(&[yes as u8])?.iter().any(|b| b == &[1]))
    }

    /// Worker 0's answer, on every worker (a decision that must not differ between them).
    fn first_says(&self, yes: bool) -> Result<bool, CollectiveError> {
        Ok(self.all_gather(&[yes as u8])?.first() == Some(&vec![1]))
    }

    /// Every worker's `value`, in rank order.
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>, CollectiveError> {
        self.all_gather(&value.to_le_bytes())?
            .iter()
            .map(|b| {
                <[u8; 8]>::try_from(b.as_slice())
                    .map(u64::from_le_bytes)
                    .map_err(|_| CollectiveError("a worker sent a malformed value".into()))
            })
            .collect()
    }
}

/// A name that lives as long as the process, for a metric name that arrived from another worker
/// (each distinct name is kept once).
pub fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}
