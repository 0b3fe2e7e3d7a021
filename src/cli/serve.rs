//! `ptl serve`: the models a pipeline built (or model folders given directly) behind an
//! OpenAI-compatible server. A LoRA stage is served as an adapter on the model it started from, so
//! a base is in memory once however many adapters use it.

use crate::lang::pipeline::Pipeline;
use crate::lang::types::Type;
use crate::lang::value::{Tuning, Value};
use crate::plan::compute::Compute;
use crate::plan::inputs::output_path;
use crate::plan::{Plan, Status};
use crate::serve::{ModelSpec, Settings};
use crate::store::Store;
use std::path::{Path, PathBuf};

pub struct ServeArgs {
    pub pipeline: Option<PathBuf>,
    pub stages: Option<Vec<String>>,
    pub set: Vec<String>,
    pub store: Option<PathBuf>,
    /// `DIR` or `NAME=DIR`.
    pub models: Vec<String>,
    /// `NAME=DIR`, on the first `--model`.
    pub adapters: Vec<String>,
    pub settings: Settings,
    pub compute: Compute,
}

/// `NAME=DIR`, or `DIR` named after its folder.
fn named(arg: &str) -> (String, PathBuf) {
    match arg.split_once('=') {
        Some((name, dir)) if !name.is_empty() => (name.to_string(), PathBuf::from(dir)),
        _ => {
            let dir = PathBuf::from(arg);
            let name = dir
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned());
            (name, dir)
        }
    }
}

/// The folder of a model value: an `hf_model` path, or an upstream stage's output in the store.
fn model_dir(p: &Pipeline, plan: &Plan, store: &Store, v: &Value) -> Option<(String, PathBuf)> {
    match v {
        Value::HfModel(path) => {
            let (name, _) = named(&path.written);
            Some((name, path.resolved.clone()))
        }
        Value::Output { stage, output, .. } => {
            let key = plan.stages[*stage].key.as_ref()?;
            Some((
                p.stages[*stage].name.clone(),
                output_path(store, &key.key, output),
            ))
        }
        _ => None,
    }
}

/// What a pipeline's stages serve: each built stage with a model output; a LoRA stage as an
/// adapter on the model it started from.
fn pipeline_specs(
    p: &Pipeline,
    plan: &Plan,
    store: &Store,
    file: &Path,
    only: Option<&[String]>,
) -> Result<Vec<ModelSpec>, String> {
    let serves_model = |id: usize| {
        p.stages[id]
            .kind
            .outputs
            .iter()
            .any(|o| o.name == "model" && o.ty == Type::Model)
    };
    let ids: Vec<usize> = match only {
        Some(names) => names
            .iter()
            .map(|n| {
                let id = p
                    .stage_id(n)
                    .ok_or_else(|| format!("no stage named `{n}`"))?;
                if serves_model(id) {
                    Ok(id)
                } else {
                    Err(format!(
                        "stage `{n}` ({}) has no model to serve",
                        p.stages[id].kind.name
                    ))
                }
            })
            .collect::<Result<_, String>>()?,
        None => (0..p.stages.len()).filter(|&id| serves_model(id)).collect(),
    };
    if ids.is_empty() {
        return Err("the pipeline has no stage that makes a model".into());
    }
    let unbuilt: Vec<&str> = ids
        .iter()
        .filter(|&&id| plan.stages[id].status != Status::Cached)
        .map(|&id| p.stages[id].name.as_str())
        .collect();
    if !unbuilt.is_empty() {
        return Err(format!(
            "not built yet: {}; run `ptl run {}` first (or serve other stages with --stages)",
            unbuilt.join(", "),
            file.display()
        ));
    }
    let mut specs: Vec<ModelSpec> = Vec::new();
    let mut adapters: Vec<((String, PathBuf), (String, PathBuf))> = Vec::new();
    for id in ids {
        let s = &p.stages[id];
        let key = plan.stages[id]
            .key
            .as_ref()
            .ok_or_else(|| format!("stage `{}` has no key", s.name))?;
        let out = output_path(store, &key.key, "model");
        let adapter = out.with_file_name("adapter");
        let lora = matches!(
            s.params.get("tuning"),
            Some(Value::Tuning(Tuning::Lora(_) | Tuning::Qlora { .. }))
        );
        let base = s
            .params
            .get("model")
            .and_then(|v| model_dir(p, plan, store, v));
        match (lora && adapter.is_dir(), base) {
            (true, Some(base)) => adapters.push((base, (s.name.clone(), adapter))),
            _ => specs.push(ModelSpec {
                name: s.name.clone(),
                dir: out,
                adapters: Vec::new(),
            }),
        }
    }
    for ((base_name, base_dir), adapter) in adapters {
        let same = |d: &Path| d.canonicalize().ok() == base_dir.canonicalize().ok();
        match specs.iter_mut().find(|s| same(&s.dir)) {
            Some(spec) => spec.adapters.push(adapter),
            None => specs.push(ModelSpec {
                name: base_name,
                dir: base_dir,
                adapters: vec![adapter],
            }),
        }
    }
    Ok(specs)
}

pub fn run(a: ServeArgs) -> i32 {
    let fail = |e: String| {
        errln!("error: {e}");
        1
    };
    let specs = match &a.pipeline {
        Some(file) => {
            let Some((p, plan)) = super::engine::planned(file, &a.set, a.store.as_deref(), false)
            else {
                return 1;
            };
            let store = Store::at(&super::engine::store_dir(file, a.store.as_deref()));
            match pipeline_specs(&p, &plan, &store, file, a.stages.as_deref()) {
                Ok(s) => s,
                Err(e) => return fail(e),
            }
        }
        None => {
            if a.models.is_empty() {
                errln!("error: give a pipeline file, or --model DIR");
                return 2;
            }
            let mut specs: Vec<ModelSpec> = a
                .models
                .iter()
                .map(|m| {
                    let (name, dir) = named(m);
                    ModelSpec {
                        name,
                        dir,
                        adapters: Vec::new(),
                    }
                })
                .collect();
            for arg in &a.adapters {
                match arg.split_once('=') {
                    Some((name, dir)) if !name.is_empty() => specs[0]
                        .adapters
                        .push((name.to_string(), PathBuf::from(dir))),
                    _ => {
                        errln!("error: --adapter takes NAME=DIR, not `{arg}`");
                        return 2;
                    }
                }
            }
            specs
        }
    };
    let log = |m: &str| errln!("serving {m}");
    let state = match crate::serve::load(&specs, &a.settings, &a.compute, &log) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let ready = |addr: std::net::SocketAddr| {
        errln!("listening on http://{addr}/v1 (Ctrl-C stops after the requests in flight)");
    };
    match crate::serve::serve(state, &a.settings, &ready) {
        Ok(()) => 0,
        Err(e) => fail(e.to_string()),
    }
}
