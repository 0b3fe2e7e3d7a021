//! Errors below the checker (stages, training, model, data, store): typed, so the executor can point a
//! failure at the field of the `.ptl` file that caused it, give it a code and a help line, and tell the
//! user's mistakes from ptl's own. Text errors from code not converted yet arrive as [`Error::Other`].

use std::fmt;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// Stopped on request (Ctrl-C, watch mode): not a failure.
    Cancelled,
    /// A training step's loss or gradient norm was NaN or infinite.
    NonFinite {
        step: usize,
        /// `loss` or `gradient norm`.
        what: &'static str,
        value: f64,
        /// The step of the newest checkpoint, kept for inspection.
        checkpoint: Option<usize>,
    },
    /// A model folder's weights do not fit its config.json.
    ModelTensors {
        dir: PathBuf,
        problem: TensorProblem,
    },
    /// A LoRA adapter whose weights do not fit the base model.
    AdapterShape {
        dir: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// Every row of the dataset was dropped before training.
    AllRowsDropped {
        rows: usize,
        max_len: usize,
        /// The fewest tokens a row needs to keep one trained token; `None` when no row could be
        /// encoded at all.
        shortest: Option<usize>,
    },
    /// KTO rows that are all desirable or all undesirable.
    OneLabel {
        file: PathBuf,
        rows: usize,
        label: bool,
    },
    /// A batch would need more memory than the machine has.
    OutOfMemory {
        batch_size: usize,
        seq_len: usize,
        needed: u64,
        available: u64,
        /// Processes on this machine that each need `needed` (a data-parallel stage's workers).
        workers: usize,
    },
    /// A model that must read the policy's token ids (PPO's reward or value model) has another
    /// vocabulary.
    VocabularyMismatch {
        /// The stage field that names it.
        field: &'static str,
        dir: PathBuf,
        /// How the two vocabularies differ.
        detail: String,
    },
    /// The store could not be read or written (disk, permissions).
    Store(String),
    /// A bug in ptl: the cause is not the user's input.
    Internal(String),
    /// A failure described in words only (code that has no typed error yet).
    Other(String),
    /// The workers of a data-parallel stage lost one another: one left, stopped answering, or could
    /// not join.
    Workers(String),
    /// A failure a worker process of a data-parallel stage reported, as it reported it.
    Relayed(Relayed),
}

/// A failure as a worker process reports it to its launcher (one JSON line on its stdout).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Relayed {
    pub message: String,
    pub code: String,
    pub field: Option<String>,
    pub help: String,
    pub internal: bool,
}

impl Relayed {
    pub fn of(e: &Error) -> Relayed {
        Relayed {
            message: e.to_string(),
            code: e.code().to_string(),
            field: e.field().map(str::to_string),
            help: e.help(),
            internal: e.is_internal(),
        }
    }
}

#[derive(Debug)]
pub enum TensorProblem {
    Missing(String),
    /// Tensors the architecture has no place for.
    Extra(Vec<String>),
    Shape {
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

impl Error {
    /// The diagnostic code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Cancelled => "ptl::cancelled",
            Error::NonFinite { .. } => "ptl::non_finite",
            Error::ModelTensors { .. } => "ptl::model_tensors",
            Error::AdapterShape { .. } => "ptl::adapter_shape",
            Error::AllRowsDropped { .. } => "ptl::all_rows_dropped",
            Error::OneLabel { .. } => "ptl::one_label",
            Error::OutOfMemory { .. } => "ptl::out_of_memory",
            Error::VocabularyMismatch { .. } => "ptl::vocab_mismatch",
            Error::Store(_) => "ptl::store",
            Error::Internal(_) => "ptl::internal",
            Error::Other(_) => "ptl::stage_failed",
            Error::Workers(_) => "ptl::workers",
            Error::Relayed(r) => crate::train::collective::intern(&r.code),
        }
    }

    /// The stage field the failure comes from, when one field is the cause.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::NonFinite { .. } => Some("lr"),
            Error::ModelTensors { .. } | Error::AdapterShape { .. } => Some("model"),
            Error::AllRowsDropped { .. } => Some("max_len"),
            Error::OneLabel { .. } => Some("data"),
            Error::OutOfMemory { .. } => Some("batch_size"),
            Error::VocabularyMismatch { field, .. } => Some(field),
            Error::Workers(_) => Some("workers"),
            Error::Relayed(r) => r.field.as_deref().map(crate::train::collective::intern),
            _ => None,
        }
    }

    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            Error::Cancelled => "run it again: it resumes from its checkpoint".into(),
            Error::NonFinite { checkpoint, .. } => {
                let kept = match checkpoint {
                    Some(step) => format!("; the checkpoint at step {step} is kept for inspection"),
                    None => String::new(),
                };
                format!(
                    "training diverged: lower `lr`, add warmup (`warmup_ratio`), keep `max_grad_norm` clipping on, or let the stage skip such steps with `skip_nonfinite = N`{kept}"
                )
            }
            Error::ModelTensors { problem, .. } => match problem {
                TensorProblem::Missing(_) | TensorProblem::Shape { .. } => {
                    "the weights and config.json disagree: check that the folder holds one complete checkpoint of the architecture its config.json names".into()
                }
                TensorProblem::Extra(_) => {
                    "ptl refuses to drop weights silently: these tensors belong to another architecture or config (e.g. `qk_norm`, biases); fix config.json or the checkpoint".into()
                }
            },
            Error::AdapterShape { .. } => {
                "the adapter was trained on another base model: give the model it was made from".into()
            }
            Error::AllRowsDropped { shortest, .. } => match shortest {
                Some(n) => format!("raise `max_len` to at least {n}"),
                None => "check the dataset's format and the chat template".into(),
            },
            Error::OneLabel { label, .. } => format!(
                "KTO weighs desirable (label true) against undesirable (label false) completions: add rows with label = {}",
                !label
            ),
            Error::OutOfMemory { workers, .. } => {
                let fewer = if *workers > 1 { ", or use fewer `workers`" } else { "" };
                format!("lower `batch_size` (use `grad_accum` for the same effective batch) or `max_len`, or set `gradient_checkpointing = true`{fewer}")
            }
            Error::VocabularyMismatch { .. } => {
                "PPO scores the policy's own token ids: train the reward model from a model with the policy's tokenizer (e.g. the SFT model the policy starts from)".into()
            }
            Error::Store(_) => "check the disk's free space and the store's permissions".into(),
            Error::Internal(_) => {
                "this is a bug in ptl, not in your pipeline: please report it with this message".into()
            }
            Error::Other(_) => {
                "fix the cause and run again: finished stages stay in the store, and a training stage resumes from its last checkpoint".into()
            }
            Error::Workers(_) => {
                "a worker failed or stopped answering (its own error, if it had one, is above): run again to resume from the last checkpoint; a worker that is only slow needs a longer PTL_COLLECTIVE_TIMEOUT (seconds)".into()
            }
            Error::Relayed(r) => r.help.clone(),
        }
    }

    /// Whether the cause is ptl's, not the user's input.
    pub fn is_internal(&self) -> bool {
        match self {
            Error::Internal(_) => true,
            Error::Relayed(r) => r.internal,
            _ => false,
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled => f.write_str("cancelled"),
            Error::NonFinite {
                step, what, value, ..
            } => write!(f, "the {what} became {value} at step {step}"),
            Error::ModelTensors { dir, problem } => match problem {
                TensorProblem::Missing(t) => {
                    write!(f, "{}: the checkpoint has no tensor `{t}`", dir.display())
                }
                TensorProblem::Extra(ts) => write!(
                    f,
                    "{}: tensor{} {} fit{} no weight of the model its config.json describes",
                    dir.display(),
                    if ts.len() == 1 { "" } else { "s" },
                    ts.iter()
                        .take(5)
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + &if ts.len() > 5 {
                            format!(" and {} more", ts.len() - 5)
                        } else {
                            String::new()
                        },
                    if ts.len() == 1 { "s" } else { "" }
                ),
                TensorProblem::Shape {
                    tensor,
                    found,
                    expected,
                } => write!(
                    f,
                    "{}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}",
                    dir.display()
                ),
            },
            Error::AdapterShape {
                dir,
                tensor,
                found,
                expected,
            } => write!(
                f,
                "{}: adapter tensor `{tensor}` has shape {found:?}, the base model needs {expected:?}",
                dir.display()
            ),
            Error::OneLabel { file, rows, label } => write!(
                f,
                "{}: all {rows} rows to train on have label = {label}",
                file.display()
            ),
            Error::AllRowsDropped {
                rows,
                max_len,
                shortest,
            } => match shortest {
                Some(n) => write!(
                    f,
                    "all {rows} rows were dropped: within `max_len` = {max_len} tokens no row keeps a token to train on (the shortest needs {n})"
                ),
                None => write!(f, "all {rows} rows were dropped: none has a token to train on"),
            },
            Error::OutOfMemory {
                batch_size,
                seq_len,
                needed,
                available,
                workers,
            } => {
                write!(
                    f,
                    "a batch of {batch_size} sequences of {seq_len} tokens needs about {} for training",
                    mib(*needed)
                )?;
                if *workers > 1 {
                    write!(
                        f,
                        " in each of the stage's {workers} workers ({} in all)",
                        mib(needed.saturating_mul(*workers as u64))
                    )?;
                }
                write!(f, ", and {} is available", mib(*available))
            }
            Error::VocabularyMismatch { dir, detail, .. } => write!(
                f,
                "{} does not share the policy's vocabulary: {detail}",
                dir.display()
            ),
            Error::Store(why) => f.write_str(why),
            Error::Internal(why) => write!(f, "internal error: {why}"),
            Error::Other(why) => f.write_str(why),
            Error::Workers(why) => f.write_str(why),
            Error::Relayed(r) => f.write_str(&r.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Other(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error::Other(s.to_string())
    }
}

/// Code that still speaks in text keeps the message.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Error {
        Error::Other(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Other(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Other(e.to_string())
    }
}
