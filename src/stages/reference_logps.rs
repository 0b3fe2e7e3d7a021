//! Reference log-probs as a store artifact of their own (TRL's `precompute_ref_log_probs`): computed
//! once per reference model (its content), dataset encoding (the tokenized artifact's key), batch
//! size and objective, kept in the store, and reused by every stage that needs the same ones — a
//! second `dpo` stage with another `beta` on the same data computes none, and `ptl plan` says so.

use super::schema::PlanView;
use crate::data::artifact::{self, DataSpec};
use crate::data::encode::EncodeOptions;
use crate::lang::value::Value;
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use crate::store::hash::HashCache;
use crate::store::{Manifest, Store};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Bumped when what the artifact holds changes.
const VERSION: u32 = 1;

/// What a stage's reference log-probs are computed from.
pub struct RefSpec {
    /// The reference model's folder.
    pub reference: PathBuf,
    /// The stage's tuning when the reference is the starting policy itself (its LoRA layers at zero
    /// compute the same values through other kernels, so they are kept apart); `None` for a separate
    /// reference model.
    pub via_policy: Option<serde_json::Value>,
    pub data: DataSpec,
    pub batch_size: usize,
    /// The objective whose sequences are scored (`dpo` pairs, `kto` rows with mismatched pairs).
    pub objective: &'static str,
}

/// The stage's dataset encoded with the starting model's tokenizer, from its parameters and the local
/// paths of its inputs.
pub fn data_spec(
    params: &BTreeMap<String, Value>,
    inputs: &BTreeMap<String, Vec<PathBuf>>,
) -> Option<DataSpec> {
    let first = |f: &str| inputs.get(f).and_then(|v| v.first()).cloned();
    let Some(Value::Dataset { format, .. }) = params.get("data") else {
        return None;
    };
    Some(DataSpec {
        data: first("data")?,
        format: *format,
        tokenizer: first("model")?,
        template: None,
        opts: EncodeOptions::from_stage(params),
    })
}

/// The spec of a `dpo` or `kto` stage: the `reference` model, else the starting model (by way of the
/// policy and its tuning).
fn spec_of(
    params: &BTreeMap<String, Value>,
    inputs: &BTreeMap<String, Vec<PathBuf>>,
    tuning: serde_json::Value,
    batch_size: usize,
    objective: &'static str,
) -> Option<RefSpec> {
    let first = |f: &str| inputs.get(f).and_then(|v| v.first()).cloned();
    let (reference, via_policy) = match first("reference") {
        Some(r) => (r, None),
        None => (first("model")?, Some(tuning)),
    };
    Some(RefSpec {
        reference,
        via_policy,
        data: data_spec(params, inputs)?,
        batch_size,
        objective,
    })
}

fn key(store: &Store, spec: &RefSpec) -> Result<String, String> {
    let mut cache = HashCache::load(&store.root);
    let reference = cache
        .dir(&spec.reference)
        .map_err(|e| format!("cannot read {}: {e}", spec.reference.display()))?;
    let data = artifact::key(&spec.data, &mut cache)?;
    let _ = cache.save();
    let doc = serde_json::json!({
        "ptl_reference_logps": VERSION,
        "reference": reference,
        "via_policy": spec.via_policy,
        "data": data,
        "batch_size": spec.batch_size,
        "objective": spec.objective,
    });
    Ok(blake3::hash(doc.to_string().as_bytes())
        .to_hex()
        .to_string())
}

const FILE: &str = "logps.json";

/// A `dpo` or `kto` stage's reference log-probs for `objective`: from the store, or computed once by
/// `score` on the `reference` model (loaded for inference in the run's dtype) or, without one, on the
/// starting `policy` (for LoRA its adapters are still zero: the base).
pub fn for_stage<T: Serialize + DeserializeOwned>(
    ctx: &RunContext,
    policy: &Decoder,
    batch_size: usize,
    objective: &'static str,
    score: impl Fn(&Decoder) -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    let spec = spec_of(
        ctx.params,
        &ctx.inputs,
        tuning_json(ctx.params),
        batch_size,
        objective,
    )
    .ok_or("the stage's model or data could not be found")?;
    cached(ctx.store, &spec, ctx.log, || match ctx.input("reference") {
        Some(dir) => score(&ctx.compute.load(dir)?),
        None => {
            // The starting policy scores as it trains: autocast when it trains that way.
            let _autocast = crate::model::matmul::Autocast::start(policy.autocast);
            score(policy)
        }
    })
}

/// The log-probs from the store, else `compute`d and committed first.
fn cached<T: Serialize + DeserializeOwned>(
    store: &Store,
    spec: &RefSpec,
    log: &dyn Fn(&str),
    compute: impl FnOnce() -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    let key = key(store, spec)?;
    let io = |e: std::io::Error| crate::error::Error::Store(format!("store error: {e}"));
    let _guard = store.lock(&key).map_err(io)?;
    let file = store.entry_dir(&key).join("out").join(FILE);
    if store.has(&key) {
        let bytes = std::fs::read(&file).map_err(io)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            crate::error::Error::Store(format!("corrupt reference log-probs {key}: {e}"))
        })?;
        log("reference log-probs found in the store");
        return Ok(value);
    }
    log(&format!(
        "computing the reference log-probs ({})",
        spec.reference.display()
    ));
    let value = compute()?;
    let pending = store.begin(&key).map_err(io)?;
    let bytes =
        serde_json::to_vec(&value).map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    if let Err(e) = std::fs::write(pending.out.join(FILE), bytes) {
        store.abort(pending);
        return Err(io(e));
    }
    let manifest = Manifest::artifact(
        &key,
        format!("reference log-probs of {}", spec.reference.display()),
        "reference_logps",
        VERSION,
    );
    store.commit(pending, manifest, &["logps"]).map_err(io)?;
    Ok(value)
}

/// `ptl plan`'s line for a stage whose reference log-probs are already in the store.
pub fn plan_note(view: &PlanView, objective: &'static str) -> Option<String> {
    let tuning = tuning_json(view.params);
    let batch_size = view.params.get("batch_size")?.as_number()? as usize;
    let spec = spec_of(view.params, view.inputs, tuning, batch_size, objective)?;
    let key = key(view.store, &spec).ok()?;
    view.store
        .has(&key)
        .then(|| "reuses the reference log-probs in the store".to_string())
}

/// The stage's tuning as JSON (part of the key when the reference is the policy itself).
fn tuning_json(params: &BTreeMap<String, Value>) -> serde_json::Value {
    match params.get("tuning") {
        Some(Value::Tuning(t)) => t.to_json(),
        _ => serde_json::Value::Null,
    }
}
