//! The schemas of the `config` and `track` blocks.

use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::stages::schema::{choice, field, int, optional, Default, FieldSchema};
use std::sync::OnceLock;

pub const DTYPES: &[&str] = &["auto", "f32", "bf16", "f16"];

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
