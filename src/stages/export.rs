//! `export`: writes a model as a standalone HF directory at a path of the user's choice: in the
//! store like every output, then copied to the destination through a temporary name and a rename,
//! so a reader never sees half a model. A later run finds the stage in the store and copies again
//! only when the destination is gone or changed.

use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use std::path::{Path, PathBuf};

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: Some(outside),
        name: "export",
        summary: "write a model to a directory as a standalone HF checkpoint",
        fields: vec![
            required(
                "model",
                Type::Model,
                "the model to export (an adapter is merged first)",
            ),
            required(
                "path",
                Type::Str,
                "destination directory, relative to the pipeline file",
            ),
            choice(
                "dtype",
                &["auto", "f32", "bf16", "f16"],
                "auto",
                "dtype of the written weights (auto: as trained)",
            ),
            int("shard_mb", 5000, "largest safetensors shard, in MB"),
            choice(
                "format",
                &["hf", "gguf"],
                "hf",
                "hf: a transformers folder at `path`; gguf: one llama.cpp file at `path` (Llama, Mistral, Qwen2, Qwen3)",
            ),
            choice(
                "quant",
                &["f32", "f16", "q8_0"],
                "f16",
                "gguf: how the weight matrices are stored (norms stay f32)",
            ),
        ],
        outputs: vec![output("model", Type::Model, "the exported model")],
        refused: vec![],
        rules: vec![export_rules],
    }
}

fn export_rules(s: &StageView, d: &mut Vec<Diag>) {
    if matches!(s.get("path"), Value::Str(p) if p.trim().is_empty()) {
        d.push(
            Diag::error(
                "ptl::out_of_range",
                format!("export stage `{}` has an empty path", s.name),
            )
            .label(s.loc("path"), "empty")
            .help("give a directory such as `path = \"out/assistant\"`"),
        );
    }
    super::rules::positive(s, d, "shard_mb");
}

/// The stage's fields, typed (the schema holds the defaults).
#[derive(serde::Deserialize)]
struct ExportParams {
    path: String,
    dtype: String,
    shard_mb: usize,
    format: String,
    quant: crate::model::gguf::Quant,
}

/// The dtype to write: as asked, or for "auto" the one config.json records (f32 when it says none).
pub fn write_dtype(asked: &str, model_dir: &Path) -> candle_core::DType {
    use candle_core::DType;
    let recorded = || -> Option<DType> {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model_dir.join("config.json")).ok()?).ok()?;
        match c["dtype"].as_str().or(c["torch_dtype"].as_str())? {
            "bfloat16" => Some(DType::BF16),
            "float16" => Some(DType::F16),
            _ => Some(DType::F32),
        }
    };
    match asked {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        _ => recorded().unwrap_or(DType::F32),
    }
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let params: ExportParams = ctx.typed()?;
    let dest = ctx.base_dir.join(&params.path);
    let store = absolute(&ctx.store.root);
    if absolute(&dest).starts_with(&store) {
        return Err(format!(
            "`path` {} is inside the store ({}): export writes outside it (the store's own copy is `{}.model`)",
            dest.display(),
            store.display(),
            ctx.stage
        )
        .into());
    }
    let mut model = Decoder::load(&model_dir, ctx.device())?;
    let written = ctx.out.join("model");
    if params.format == "gguf" {
        std::fs::create_dir_all(&written)?;
        let file = written.join(GGUF_FILE);
        crate::model::gguf::write(&mut model, &model_dir, &file, params.quant, ctx.stage)?;
        publish(&file, &dest)?;
        (ctx.log)(&format!(
            "exported to {} (GGUF, {:?})",
            dest.display(),
            params.quant
        ));
        return Ok(());
    }
    let dtype = write_dtype(&params.dtype, &model_dir);
    let shard = params.shard_mb.saturating_mul(1 << 20);
    model.save_hf_as(&model_dir, &written, shard, dtype)?;
    publish(&written, &dest)?;
    (ctx.log)(&format!(
        "exported to {} ({})",
        dest.display(),
        crate::model::tuning::torch_dtype_name(dtype)?
    ));
    Ok(())
}

/// `path` made absolute against the working directory, `..` and `.` resolved where the path exists.
fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Resolve symlinks of the longest existing prefix, keep the rest as written.
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return abs,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

/// The GGUF file's name inside the stage's stored output.
const GGUF_FILE: &str = "model.gguf";

/// Copies `from` (a file, or a folder of files) to `to` through a hidden temporary sibling and a
/// rename: `to` is either the old copy or the whole new one, never half of it. A file replaces the
/// old one in the rename; an old folder is renamed aside first and removed after.
fn publish(from: &Path, to: &Path) -> crate::error::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = to
        .file_name()
        .map_or("export".into(), |n| n.to_string_lossy().into_owned());
    let suffix = crate::store::unique_suffix();
    let tmp = parent.join(format!(".{name}.tmp-{suffix}"));
    let folder = from.is_dir();
    let copy = || -> std::io::Result<()> {
        if folder {
            std::fs::create_dir_all(&tmp)?;
            for f in std::fs::read_dir(from)? {
                let f = f?.path();
                if let Some(n) = f.file_name() {
                    std::fs::copy(&f, tmp.join(n))?;
                }
            }
        } else {
            std::fs::copy(from, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
        }
        if folder && to.exists() {
            let old = parent.join(format!(".{name}.old-{suffix}"));
            std::fs::rename(to, &old)?;
            std::fs::rename(&tmp, to)?;
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::rename(&tmp, to)
        }
    };
    copy().map_err(|e| {
        let _ = if folder {
            std::fs::remove_dir_all(&tmp)
        } else {
            std::fs::remove_file(&tmp)
        };
        crate::error::Error::Other(format!("cannot write the export to {}: {e}", to.display()))
    })
}

/// The destination must hold every file of the stored export with the same size; otherwise the
/// stage runs again (and copies again).
fn outside(v: &OutsideView) -> Option<String> {
    let Some(Value::Str(path)) = v.params.get("path") else {
        return None;
    };
    let dest = v.base_dir.join(path);
    let stored = v.out.join("model");
    if v.params.get("format") == Some(&Value::Str("gguf".into())) {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        let same =
            size(&stored.join(GGUF_FILE)).is_some() && size(&stored.join(GGUF_FILE)) == size(&dest);
        return (!same).then(|| format!("the export at {} is missing or changed", dest.display()));
    }
    let same = std::fs::read_dir(&stored).ok()?.flatten().all(|f| {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        size(&f.path()).is_some() && size(&f.path()) == size(&dest.join(f.file_name()))
    });
    (!same).then(|| format!("the export at {} is missing or changed", dest.display()))
}
