//! The schemas of the `config`, `track` and `store` blocks.

use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::stages::schema::{choice, field, int, optional, Default, FieldSchema};
use std::sync::OnceLock;

pub const DTYPES: &[&str] = &["auto", "f32", "bf16", "f16"];

/// The run-wide blocks of a pipeline file: each at most once, only in the file that is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Config,
    Track,
    Store,
}

impl Block {
    pub const ALL: [Block; 3] = [Block::Config, Block::Track, Block::Store];

    /// The keyword that opens the block (and the first part of its `--set` paths).
    pub fn word(self) -> &'static str {
        match self {
            Block::Config => "config",
            Block::Track => "track",
            Block::Store => "store",
        }
    }

    /// The block a keyword opens.
    pub fn named(word: &str) -> Option<Block> {
        Block::ALL.into_iter().find(|b| b.word() == word)
    }

    /// What the block is for, in a few words (`ptl doc`).
    pub fn summary(self) -> &'static str {
        match self {
            Block::Config => "run-wide settings",
            Block::Track => "where metrics go",
            Block::Store => "a remote store shared with other machines",
        }
    }

    pub fn fields(self) -> &'static [FieldSchema] {
        match self {
            Block::Config => config_fields(),
            Block::Track => track_fields(),
            Block::Store => store_fields(),
        }
    }
}

pub fn config_fields() -> &'static [FieldSchema] {
    static F: OnceLock<Vec<FieldSchema>> = OnceLock::new();
    F.get_or_init(|| {
        vec![
            int("seed", 42, "seed every stage uses unless it sets its own"),
            field(
                "device",
                Type::Str,
                Default::Value(Value::Str("auto".into())),
                "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\" (auto: cuda when ptl is built with it and a GPU is present)",
            ),
            choice(
                "dtype",
                DTYPES,
                "auto",
                "compute dtype (auto: f32 on cpu, bf16 on cuda); training keeps f32 weights and optimizer state",
            ),
            int("threads", 0, "CPU threads of the run (0: all cores)"),
            int(
                "workers",
                1,
                "processes each training stage trains on, data-parallel, unless it sets its own `workers` (the run's threads are shared out among them)",
            ),
            optional(
                "executor",
                Type::Executor,
                "where stages run: unset (this machine) or ray(address = \"http://head:8265\", ...)",
            ),
        ]
    })
}

pub fn track_fields() -> &'static [FieldSchema] {
    static F: OnceLock<Vec<FieldSchema>> = OnceLock::new();
    F.get_or_init(|| {
        vec![
            optional(
                "tensorboard",
                Type::Str,
                "directory for TensorBoard event files (unset: off)",
            ),
            optional(
                "mlflow",
                Type::Str,
                "MLflow tracking URI (unset or \"\": off)",
            ),
            optional(
                "experiment",
                Type::Str,
                "MLflow experiment name (default: the pipeline file's name)",
            ),
        ]
    })
}

pub fn store_fields() -> &'static [FieldSchema] {
    static F: OnceLock<Vec<FieldSchema>> = OnceLock::new();
    F.get_or_init(|| {
        vec![optional(
            "remote",
            Type::Str,
            "a shared store: \"s3://bucket/prefix\" or \"file:///shared/folder\" (unset: $PTL_REMOTE_STORE; \"\": none)",
        )]
    })
}

/// Why `url` cannot name a remote store (`None`: it can). The empty string means none.
pub fn bad_remote(url: &str) -> Option<String> {
    if url.is_empty() {
        return None;
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or_default();
        return bucket
            .is_empty()
            .then(|| "an s3:// address names a bucket: s3://bucket/prefix".to_string());
    }
    if let Some(path) = url.strip_prefix("file://") {
        return (!path.starts_with('/')).then(|| {
            "a file:// address holds an absolute path: file:///shared/folder".to_string()
        });
    }
    Some("a remote store is an s3://bucket/prefix or file:///shared/folder address".to_string())
}

/// The error for a `device` that names no device ptl knows, pointing at `loc`.
pub fn bad_device(device: &str, loc: crate::lang::source::Loc) -> Option<crate::lang::diag::Diag> {
    (!valid_device(device)).then(|| {
        crate::lang::diag::Diag::error("ptl::out_of_range", format!("unknown device \"{device}\""))
            .label(loc, "not a device")
            .help("devices: \"auto\", \"cpu\", \"cuda\", \"cuda:0\", \"cuda:1\", ...")
    })
}

/// Whether `device` names a device ptl knows.
pub fn valid_device(d: &str) -> bool {
    matches!(d, "auto" | "cpu") || cuda_index(d).is_some()
}

/// The GPU a `device` names: 0 for "cuda", N for "cuda:N"; `None` for anything else.
pub fn cuda_index(d: &str) -> Option<usize> {
    match d.strip_prefix("cuda")? {
        "" => Some(0),
        n => n
            .strip_prefix(':')
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok(),
    }
}
