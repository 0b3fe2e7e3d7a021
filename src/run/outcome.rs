//! How each stage of a run ended, how a failure is reported, and the run's summary.

use crate::error::Error;
use std::fmt;

/// What happened to one stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Cached,
    /// Another `ptl run` on the same store computed it while this one waited.
    CachedByOther,
    Ran(f64),
    /// Downloaded from the remote store in this many seconds (computed by another machine).
    FromRemote(f64),
    Failed(Failure),
    Blocked(String),
    /// Not selected by `--only` / `--from`, and not in the store.
    Skipped(String),
    /// Stopped on request (watch mode, Ctrl-C); nothing was committed.
    Cancelled,
}

/// A stage's failure as it is reported: the message, the diagnostic code, the stage field it points at
/// (when one field is the cause), what to do, and whether it is ptl's fault rather than the input's.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub message: String,
    pub code: &'static str,
    pub field: Option<&'static str>,
    pub help: String,
    pub internal: bool,
}

impl Failure {
    pub fn of(e: &Error) -> Failure {
        Failure {
            message: e.to_string(),
            code: e.code(),
            field: e.field(),
            help: e.help(),
            internal: e.is_internal(),
        }
    }

    /// A failure described only in words.
    pub fn plain(message: impl Into<String>) -> Failure {
        Failure::of(&Error::Other(message.into()))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Default)]
pub struct Summary {
    pub outcomes: Vec<(String, Outcome)>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| {
            matches!(
                o,
                Outcome::Cached
                    | Outcome::CachedByOther
                    | Outcome::FromRemote(_)
                    | Outcome::Ran(_)
                    | Outcome::Skipped(_)
            )
        })
    }
}
