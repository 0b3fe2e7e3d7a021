//! `eval`: scores models on a dataset: loss, perplexity, exact match of greedy answers, reward and win rate.

use super::rules;
use super::schema::*;
use crate::data::encode::{EncodeOptions, Encoded, Encoder};
use crate::data::rows::{self, Example};
use crate::data::tokenizer::TextTokenizer;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::model::decoder::{argmax, Decoder};
use crate::run::context::RunContext;
use crate::train::supervised::{batch, batch_loss, Sequence};
use candle_core::Device;
use serde_json::{json, Value as Json};

pub const METRICS: &[&str] = &["loss", "perplexity", "exact_match", "reward", "win_rate"];

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: Some(run),
        name: "eval",
        summary: "evaluate models: loss, perplexity, exact match, reward, win rate",
        fields: vec![
            required(
                "models",
                Type::list(Type::Model),
                "the models to compare: `[base, sft.model, ...]`",
            ),
            required("data", Type::Dataset(&[]), "held-out rows in any format"),
            optional(
                "reward",
                Type::RewardModel,
                "a reward model, for the `reward` and `win_rate` metrics",
            ),
            field(
                "metrics",
                Type::list(Type::Enum(METRICS)),
                Default::Value(Value::List(vec![
                    Value::Str("loss".into()),
                    Value::Str("perplexity".into()),
                ])),
                "which metrics to compute",
            ),
            int(
                "max_new_tokens",
                64,
                "tokens generated per answer (exact_match, reward, win_rate)",
            ),
            int("batch_size", 8, "rows per forward pass"),
            int("max_len", 1024, "tokens per sequence"),
            optional("limit", Type::Int, "evaluate only the first N rows"),
            super::common::skip_malformed(),
            field(
                "seed",
                Type::Int,
                Default::Config("seed"),
                "seed for sampling (default: config.seed)",
            ),
        ],
        outputs: vec![output(
            "metrics",
            Type::Metrics,
            "metrics.json: one object per model",
        )],
        refused: vec![],
        rules: vec![eval_rules],
    }
}

fn eval_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::positive(s, d, "max_new_tokens");
    rules::positive(s, d, "batch_size");
    rules::positive(s, d, "max_len");
    rules::positive(s, d, "limit");
    if let Value::List(models) = s.get("models") {
        if models.is_empty() {
            d.push(
                Diag::error(
                    "ptl::empty_list",
                    format!("eval stage `{}` has no models", s.name),
                )
                .label(s.loc("models"), "empty")
                .help("list at least one model: `models = [base, sft.model]`"),
            );
        }
        let metrics = s.get("metrics").strings();
        for needs_reward in ["reward", "win_rate"] {
            if metrics.contains(&needs_reward) && !s.is_set("reward") {
                d.push(
                    Diag::error(
                        "ptl::missing_field",
                        format!("metric \"{needs_reward}\" needs a reward model"),
                    )
                    .label(
                        s.loc("metrics"),
                        format!("\"{needs_reward}\" asked for here"),
                    )
                    .help("add `reward = <reward_model stage>.model` to the stage"),
                );
            }
        }
        if metrics.contains(&"win_rate") && models.len() < 2 {
            d.push(
                Diag::error(
                    "ptl::out_of_range",
                    "metric \"win_rate\" compares models: it needs at least two",
                )
                .label(s.loc("models"), "only one model")
                .help("win rates are reported for each model against the first one in `models`"),
            );
        }
    }
}

/// How a model's entry in `models` is named in metrics.json: the path as written, or `stage.output`.
fn label(v: &Json) -> String {
    match v {
        Json::Object(o) if o.contains_key("hf_model") => {
            o["hf_model"].as_str().unwrap_or("").into()
        }
        Json::Object(o) if o.contains_key("stage") => format!(
            "{}.{}",
            o["stage"].as_str().unwrap_or(""),
            o["output"].as_str().unwrap_or("")
        ),
        other => other.to_string(),
    }
}

fn count(ctx: &RunContext, k: &str, default: usize) -> usize {
    ctx.number(k)
        .filter(|n| *n > 0.0)
        .map_or(default, |n| n as usize)
}

/// A conversation split into the prompt (every message before the last assistant turn) and the
/// reference answer (that turn's content); `None` when the row does not end with an answer.
fn prompt_and_answer(ex: &Example) -> Option<(Vec<Json>, String)> {
    let Example::Chat(messages) = ex else {
        return None;
    };
    let (last, prompt) = messages.split_last()?;
    (last["role"] == "assistant").then(|| {
        (
            prompt.to_vec(),
            last["content"].as_str().unwrap_or("").to_string(),
        )
    })
}

/// Mean loss over the rows' trained tokens (assistant tokens of conversations, all tokens of text).
fn loss(
    model: &Decoder,
    enc: &Encoder,
    rows: &[rows::Row],
    batch_size: usize,
) -> Result<(f64, f64), String> {
    let seqs: Vec<Sequence> = rows
        .iter()
        .filter_map(|r| match enc.encode(&r.example) {
            Ok(Encoded::Sequence { ids, mask, .. }) if ids.len() >= 2 => {
                Some(Sequence { ids, mask })
            }
            _ => None,
        })
        .collect();
    let (mut sum, mut tokens) = (0.0, 0.0);
    for chunk in seqs.chunks(batch_size) {
        let rows: Vec<Vec<&Sequence>> = chunk.iter().map(|s| vec![s]).collect();
        let l = batch_loss(model, &batch(&rows))?;
        if l.tokens > 0.0 {
            sum += l.value * l.tokens;
            tokens += l.tokens;
        }
    }
    if tokens == 0.0 {
        return Err("no row has a token to score".into());
    }
    Ok((sum / tokens, tokens))
}

/// The share of answers that greedy decoding reproduces exactly (whitespace at the ends ignored),
/// and a few examples.
fn exact_match(
    model: &Decoder,
    tok: &TextTokenizer,
    enc: &Encoder,
    stop: &[u32],
    rows: &[rows::Row],
    max_new: usize,
    cancelled: &dyn Fn() -> bool,
) -> crate::error::Result<(f64, usize, Vec<Json>)> {
    let (mut hits, mut total, mut examples) = (0usize, 0usize, Vec::new());
    for r in rows {
        if cancelled() {
            return Err(crate::error::Error::Cancelled);
        }
        let Some((prompt, reference)) = prompt_and_answer(&r.example) else {
            continue;
        };
        let text = enc
            .render(&prompt, true)
            .map_err(|e| format!("row at line {}: {e:?}", r.line))?
            .text;
        let ids = tok.encode(&text, false)?.ids;
        let new = model.generate(&ids, max_new, stop, &mut |l: &[f32]| argmax(l))?;
        let answer = tok.inner.decode(&new, true).unwrap_or_default();
        let hit = answer.trim() == reference.trim();
        hits += usize::from(hit);
        total += 1;
        if examples.len() < 5 {
            examples.push(
                json!({"line": r.line, "reference": reference, "answer": answer, "match": hit}),
            );
        }
    }
    if total == 0 {
        return Err("exact_match needs conversations that end with an assistant answer".into());
    }
    Ok((hits as f64 / total as f64, total, examples))
}

fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let labels: Vec<String> = ctx.params_json["models"]
        .as_array()
        .map_or(vec![], |m| m.iter().map(label).collect());
    let dirs = ctx.inputs.get("models").cloned().unwrap_or_default();
    if dirs.len() != labels.len() {
        return Err("the models' folders could not all be found".into());
    }
    let (data, format) = ctx.dataset("data")?;
    let (mut rows, problems) = rows::read(&data, format)?;
    super::common::report_malformed(ctx, &problems)?;
    rows.truncate(ctx.number("limit").map_or(usize::MAX, |n| n as usize));
    let wanted: Vec<String> = match ctx.param("metrics") {
        m @ Value::List(_) => m.strings().into_iter().map(str::to_owned).collect(),
        _ => vec!["loss".into(), "perplexity".into()],
    };
    for m in &wanted {
        if m == "reward" || m == "win_rate" {
            return Err(
                format!("the `{m}` metric needs reward models, which are not built yet").into(),
            );
        }
    }
    let opts = EncodeOptions {
        max_len: count(ctx, "max_len", 1024),
        ..EncodeOptions::default()
    };
    let mut results = Vec::new();
    let total = labels.len() as u64;
    for (i, (name, dir)) in labels.iter().zip(&dirs).enumerate() {
        // The note names the model being scored (step i: the ones before it are done).
        (ctx.progress)(i as u64, total, name);
        let model = Decoder::load(dir, &Device::Cpu)?;
        let tok = TextTokenizer::load(dir)?;
        let enc = Encoder::new(&tok, None, opts.clone())?;
        let mut entry = serde_json::Map::new();
        entry.insert("model".into(), json!(name));
        entry.insert("rows".into(), json!(rows.len()));
        let mut line = format!("{name}:");
        if wanted.iter().any(|m| m == "loss" || m == "perplexity") {
            let (l, tokens) = loss(&model, &enc, &rows, count(ctx, "batch_size", 8))?;
            entry.insert("tokens".into(), json!(tokens));
            if wanted.iter().any(|m| m == "loss") {
                entry.insert("loss".into(), json!(l));
                line += &format!(" loss {l:.4}");
            }
            if wanted.iter().any(|m| m == "perplexity") {
                entry.insert("perplexity".into(), json!(l.exp()));
                line += &format!(" perplexity {:.3}", l.exp());
            }
        }
        if wanted.iter().any(|m| m == "exact_match") {
            let stop = tok.stop_ids(dir);
            let cancel = ctx.cancel;
            let (em, n, examples) = exact_match(
                &model,
                &tok,
                &enc,
                &stop,
                &rows,
                count(ctx, "max_new_tokens", 64),
                &|| cancel.load(std::sync::atomic::Ordering::Relaxed),
            )?;
            entry.insert("exact_match".into(), json!(em));
            entry.insert("answered".into(), json!(n));
            entry.insert("examples".into(), Json::Array(examples));
            line += &format!(" exact match {:.1}% of {n}", em * 100.0);
        }
        (ctx.log)(&line);
        // TensorBoard / MLflow: eval/<metric> with the model's position in `models` as the step.
        let values: Vec<(String, f64)> = ["loss", "perplexity", "exact_match"]
            .iter()
            .filter_map(|m| {
                entry
                    .get(*m)
                    .and_then(Json::as_f64)
                    .map(|v| (crate::track::eval_tag(m), v))
            })
            .collect();
        let values: Vec<(&str, f64)> = values.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        ctx.tracker.log(i as u64, &values);
        (ctx.progress)(i as u64 + 1, total, name);
        results.push(Json::Object(entry));
    }
    let path = ctx.out.join("metrics.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({"models": results})).map_err(|e| e.to_string())?,
    )
    .map_err(|e| crate::error::Error::Store(format!("cannot write {}: {e}", path.display())))
}
