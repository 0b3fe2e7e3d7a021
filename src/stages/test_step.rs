//! `test_step` (test builds only): a stage that sleeps in steps, may fail on purpose, logs that it ran,
//! and writes a `model` output derived from its inputs' contents, for the engine's tests and benches.

use super::schema::*;
use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::run::context::RunContext;
use crate::store::hash::{combine, hash_file_uncached, walk};

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "test_step",
        summary: "test-only: sleeps, may fail, writes a model derived from its inputs",
        fields: vec![
            optional("model", Type::Model, "an upstream model"),
            optional("data", Type::Dataset(&[]), "a dataset"),
            field(
                "text",
                Type::Str,
                Default::Value(Value::Str(String::new())),
                "mixed into the output",
            ),
            int("sleep_ms", 0, "time to spend, in `steps` steps"),
            int("steps", 10, "steps to spend the time in"),
            boolean("fail", false, "fail after sleeping"),
            int(
                "pad_mb",
                0,
                "also write model/pad.bin: this many MiB of bytes derived from the text and inputs",
            ),
            optional(
                "log",
                Type::Str,
                "append the stage name to this file when the stage runs",
            ),
        ],
        outputs: vec![
            output(
                "model",
                Type::Model,
                "model/weights.txt: a hash of the text and the inputs",
            ),
            output("metrics", Type::Metrics, "metrics.jsonl"),
        ],
        refused: vec![],
        rules: vec![],
    }
}

/// `test_unbuilt` (test builds only): a kind with a schema and no execution, as a kind is before its
/// run is built, so that the engine's `blocked` path stays tested.
pub fn unbuilt() -> Kind {
    Kind {
        version: 1,
        run: None,
        plan_note: None,
        outside: None,
        name: "test_unbuilt",
        summary: "test-only: a kind whose execution is not built",
        fields: vec![optional("model", Type::Model, "an upstream model")],
        outputs: vec![output("model", Type::Model, "never written")],
        refused: vec![],
        rules: vec![],
    }
}

fn hash_input(path: &std::path::Path) -> Result<String, String> {
    let err = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    if path.is_dir() {
        let files = walk(path).map_err(err)?;
        let pairs = files
            .iter()
            .map(|f| {
                Ok((
                    f.to_string_lossy().into_owned(),
                    hash_file_uncached(&path.join(f)).map_err(err)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(combine(&pairs))
    } else {
        hash_file_uncached(path).map_err(err)
    }
}

/// `bytes` pseudo-random bytes (blake3's output stream keyed by `content`): large entries for the
/// remote store's bench that no transfer could compress.
fn pad(path: &std::path::Path, content: &str, bytes: u64) -> Result<(), String> {
    let mut stream = blake3::Hasher::new()
        .update(content.as_bytes())
        .finalize_xof();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.fill(&mut buf[..n]);
        std::io::Write::write_all(&mut file, &buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    std::io::Write::flush(&mut file).map_err(|e| e.to_string())
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let steps = match ctx.param("steps") {
        Value::Int(n) => (*n).max(1) as u64,
        _ => 1,
    };
    let sleep = match ctx.param("sleep_ms") {
        Value::Int(n) => (*n).max(0) as u64,
        _ => 0,
    };
    for step in 0..steps {
        if ctx.cancelled() {
            return Err(crate::error::Error::Cancelled);
        }
        std::thread::sleep(std::time::Duration::from_millis(sleep / steps));
        (ctx.progress)(step + 1, steps, "");
    }
    if let Value::Str(log) = ctx.param("log") {
        let path = ctx.base_dir.join(log);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, format!("{}\n", ctx.stage).as_bytes())
            .map_err(|e| e.to_string())?;
    }
    if ctx.param("fail") == &Value::Bool(true) {
        return Err("failed on purpose (fail = true)".into());
    }
    let mut content = match ctx.param("text") {
        Value::Str(t) => t.clone(),
        _ => String::new(),
    };
    for field in ["model", "data"] {
        if let Some(p) = ctx.input(field) {
            content.push('\n');
            content.push_str(&hash_input(p)?);
        }
    }
    let model = ctx.out.join("model");
    std::fs::create_dir_all(&model).map_err(|e| e.to_string())?;
    std::fs::write(
        model.join("weights.txt"),
        blake3::hash(content.as_bytes()).to_hex().as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    if let Value::Int(mb) = ctx.param("pad_mb") {
        if *mb > 0 {
            pad(&model.join("pad.bin"), &content, (*mb as u64) << 20)?;
        }
    }
    std::fs::write(
        ctx.out.join("metrics.jsonl"),
        format!("{{\"steps\": {steps}}}\n"),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}
