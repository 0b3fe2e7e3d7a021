//! `merge`: a LoRA-trained model as a plain model (its adapter folded in: W' = W + scaling·B·A), or a
//! weighted merge of several models of one architecture (`linear`, `slerp`, `ties`, as mergekit), written
//! in the dtype asked for.

use super::rules;
use super::schema::*;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

pub const METHODS: &[&str] = &["linear", "slerp", "ties"];

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "merge",
        summary: "merge a LoRA adapter into its base, or several models into one (linear, slerp, ties)",
        fields: vec![
            optional(
                "model",
                Type::Model,
                "the output of a stage trained with `lora(...)` or `qlora(...)`: its adapter folded in",
            ),
            optional(
                "models",
                Type::list(Type::Model),
                "models of one architecture to merge with `method` (instead of `model`)",
            ),
            choice(
                "method",
                METHODS,
                "linear",
                "linear: weighted mean; slerp: spherical interpolation of two models; ties: task vectors on `base`",
            ),
            optional(
                "weights",
                Type::list(Type::Float),
                "one weight per model (default: equal); linear and ties",
            ),
            float("t", 0.5, "slerp: 0 gives the first model, 1 the second"),
            float("density", 1.0, "ties: share of each task vector kept (largest magnitudes)"),
            optional("base", Type::Model, "ties: the model the task vectors are measured from"),
            choice(
                "dtype",
                crate::lang::settings::DTYPES,
                "auto",
                "dtype of the written weights (auto: the first model's)",
            ),
        ],
        outputs: vec![output(
            "model",
            Type::Model,
            "the merged model, a plain HF directory",
        )],
        refused: vec![],
        rules: vec![merge_rules],
    }
}

fn merge_rules(s: &StageView, d: &mut Vec<Diag>) {
    let count = match s.get("models") {
        Value::List(m) => Some(m.len()),
        _ => None,
    };
    match (s.is_set("model"), count) {
        (true, Some(_)) | (false, None) => d.push(
            Diag::error(
                "ptl::missing_field",
                format!("merge stage `{}` needs `model` or `models`, not both", s.name),
            )
            .label(s.loc(if s.is_set("model") { "models" } else { "method" }), "here")
            .help("`model = lora_stage.model` folds an adapter in; `models = [a.model, b.model]` merges models"),
        ),
        (true, None) => lora_rule(s, d),
        (false, Some(n)) => models_rules(s, d, n),
    }
}

fn lora_rule(s: &StageView, d: &mut Vec<Diag>) {
    let upstream = match s.get("model") {
        Value::Output { stage, .. } => (s.upstream_tuning)(*stage),
        Value::HfModel(_) => None,
        _ => return,
    };
    let has_adapter = matches!(&upstream, Some(Value::Tuning(t)) if t.lora().is_some());
    if !has_adapter && !matches!(upstream, Some(Value::Error)) {
        d.push(
            Diag::error("ptl::nothing_to_merge", format!("merge stage `{}` has no adapter to merge", s.name))
                .label(s.loc("model"), "this model carries no LoRA adapter")
                .help("merge takes the output of a stage trained with `tuning = lora(...)` or `qlora(...)`; to merge models, use `models = [...]`"),
        );
    }
}

fn models_rules(s: &StageView, d: &mut Vec<Diag>, n: usize) {
    let method = s.str("method").unwrap_or("linear");
    if n < 2 {
        d.push(
            Diag::error("ptl::out_of_range", "a merge of models needs at least two")
                .label(s.loc("models"), format!("{n} model"))
                .help("list two or more models, or fold an adapter in with `model = ...`"),
        );
    }
    if method == "slerp" && n != 2 {
        d.push(
            Diag::error(
                "ptl::out_of_range",
                format!("slerp interpolates two models, not {n}"),
            )
            .label(s.loc("models"), format!("{n} models"))
            .help("use method = \"linear\" or \"ties\" for more than two"),
        );
    }
    if method == "ties" && !s.is_set("base") {
        d.push(
            Diag::error(
                "ptl::missing_field",
                "ties merges task vectors: it needs `base`",
            )
            .label(s.loc("method"), "ties")
            .help("add `base = ...`, the model the others were fine-tuned from"),
        );
    }
    if let Value::List(w) = s.get("weights") {
        if w.len() != n {
            d.push(
                Diag::error(
                    "ptl::out_of_range",
                    format!("{} weights for {n} models", w.len()),
                )
                .label(s.loc("weights"), "one weight per model")
                .help("give as many weights as `models`, in the same order"),
            );
        }
    }
    rules::within(s, d, "t", 0.0, 1.0, true);
    rules::within(s, d, "density", 0.0, 1.0, true);
    same_shapes(s, d);
}

/// Models whose family or dimensions differ cannot be merged weight by weight: refused where the
/// checker knows both (each `hf_model`'s config.json, or what a stage starts from).
fn same_shapes(s: &StageView, d: &mut Vec<Diag>) {
    let Value::List(models) = s.get("models") else {
        return;
    };
    let mut named: Vec<(String, &Value, &str)> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("model {} of {}", i + 1, models.len()), m, "models"))
        .collect();
    if s.is_set("base") {
        named.push(("`base`".into(), s.get("base"), "base"));
    }
    let known: Vec<_> = named
        .into_iter()
        .filter_map(|(what, v, field)| Some((what, (s.model_shape)(v)?, field)))
        .collect();
    let Some((first, shape, _)) = known.first() else {
        return;
    };
    for (what, other, field) in &known[1..] {
        if other != shape {
            d.push(
                Diag::error(
                    "ptl::merge_mismatch",
                    format!("merge stage `{}`: {what} is not the architecture of {first}", s.name),
                )
                .label(s.loc(field), format!("{what}: {other}"))
                .help(format!(
                    "models merge weight by weight, so they need one family and size; {first} is {shape}"
                )),
            );
        }
    }
}

/// The stage's fields, typed (the schema holds the defaults).
#[derive(serde::Deserialize)]
struct MergeParams {
    method: String,
    weights: Option<Vec<f64>>,
    t: f64,
    density: f64,
    dtype: String,
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let params: MergeParams = ctx.typed()?;
    let out = ctx.out.join("model");
    // A LoRA stage's `model` already holds its adapter folded in (W + scaling·B·A, in f32).
    if let Some(dir) = ctx.input("model") {
        let dtype = super::export::write_dtype(&params.dtype, dir);
        let mut model = Decoder::load(dir, ctx.device())?;
        return model.save_hf_as(dir, &out, 2 << 30, dtype);
    }
    let dirs = ctx.inputs.get("models").cloned().unwrap_or_default();
    let mut models = dirs
        .iter()
        .map(|d| Decoder::load(d, ctx.device()))
        .collect::<crate::error::Result<Vec<_>>>()?;
    let weights = params.weights.clone().unwrap_or(vec![1.0; models.len()]);
    let base = match ctx.input("base") {
        Some(dir) => Some(tensors(&mut Decoder::load(dir, ctx.device())?)),
        None => None,
    };
    let others: Vec<HashMap<String, Tensor>> = models[1..].iter_mut().map(tensors).collect();
    let (first, _) = models.split_first_mut().ok_or("no models to merge")?;
    for (name, t) in first.params_mut() {
        let shape = t.dims().to_vec();
        let flat = |x: &Tensor| -> crate::error::Result<Vec<f32>> {
            Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let mut xs = vec![flat(t)?];
        for (k, other) in others.iter().enumerate() {
            let o = other.get(&name).filter(|o| o.dims() == shape.as_slice()).ok_or_else(|| {
                format!(
                    "{} does not fit {}: `{name}` is missing or has another shape (models of one architecture and size merge)",
                    dirs[k + 1].display(),
                    dirs[0].display()
                )
            })?;
            xs.push(flat(o)?);
        }
        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let merged = match params.method.as_str() {
            "slerp" => crate::model::merge::slerp(refs[0], refs[1], params.t),
            "ties" => {
                let b = base
                    .as_ref()
                    .and_then(|b| b.get(&name))
                    .ok_or_else(|| format!("the base has no `{name}`"))?;
                crate::model::merge::ties(&flat(b)?, &refs, &weights, params.density)
            }
            _ => crate::model::merge::linear(&refs, &weights),
        };
        *t = Tensor::from_vec(merged, shape, t.device())?;
    }
    let dtype = super::export::write_dtype(&params.dtype, &dirs[0]);
    first.save_hf_as(&dirs[0], &out, 2 << 30, dtype)
}

/// Every weight of `model` by its checkpoint name.
fn tensors(model: &mut Decoder) -> HashMap<String, Tensor> {
    model
        .params_mut()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect()
}
