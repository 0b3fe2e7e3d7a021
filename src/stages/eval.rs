//! `eval`: scores models on a dataset: loss, perplexity, exact match of greedy answers, and with a
//! reward model the reward of those answers, win rates and preference accuracy (`eval_reward`).

use super::eval_reward;
use super::rules;
use super::schema::*;
use crate::data::encode::{EncodeOptions, Encoded, Encoder};
use crate::data::rows::{self, Side};
use crate::data::tokenizer::TextTokenizer;
use crate::lang::diag::Diag;
use crate::lang::types::Type;
use crate::lang::value::Value;
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use crate::train::supervised::{batch, batch_loss, Sequence};
use serde_json::{json, Value as Json};

pub const METRICS: &[&str] = &[
    "loss",
    "perplexity",
    "exact_match",
    "reward",
    "win_rate",
    "pref_accuracy",
];

pub fn kind() -> Kind {
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "eval",
        summary: "evaluate models: loss, perplexity, exact match, reward, win rate, preference accuracy",
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
                "a reward model, for the `reward` and `win_rate` metrics (and `pref_accuracy` of the reward model itself)",
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
        ]
        .into_iter()
        .chain(crate::plan::compute::stage_fields())
        .collect(),
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
    rules::device(s, d);
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

/// Mean loss over the rows' trained tokens (assistant tokens of conversations, all tokens of text,
/// the chosen completion of preference rows).
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
            // Preference rows: the chosen completion after its prompt.
            Ok(Encoded::Pair {
                prompt_ids,
                chosen_ids,
                ..
            }) => {
                let mut mask = vec![0u8; prompt_ids.len()];
                mask.resize(prompt_ids.len() + chosen_ids.len(), 1);
                Some(Sequence {
                    ids: [prompt_ids, chosen_ids].concat(),
                    mask,
                })
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

/// What the stage asked for.
struct Wanted(Vec<String>);

impl Wanted {
    fn any(&self, metrics: &[&str]) -> bool {
        self.0.iter().any(|m| metrics.contains(&m.as_str()))
    }
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
    let wanted = Wanted(match ctx.param("metrics") {
        m @ Value::List(_) => m.strings().into_iter().map(str::to_owned).collect(),
        _ => vec!["loss".into(), "perplexity".into()],
    });
    let opts = EncodeOptions {
        max_len: count(ctx, "max_len", 1024),
        ..EncodeOptions::default()
    };
    let batch_size = count(ctx, "batch_size", 8);
    let max_new = count(ctx, "max_new_tokens", 64);
    let judge = match ctx.input("reward") {
        Some(dir) if wanted.any(&["reward", "win_rate", "pref_accuracy"]) => {
            Some(eval_reward::Judge::load(dir, ctx.compute)?)
        }
        _ => None,
    };
    let prompts = eval_reward::prompts(&rows);
    let needs_answers = wanted.any(&["exact_match", "reward", "win_rate"]);
    if needs_answers && prompts.is_empty() {
        return Err("exact_match, reward and win_rate need rows with a prompt and an answer: conversations that end with an assistant turn, or preference rows".into());
    }
    let mut results = Vec::new();
    let mut all_rewards: Vec<Vec<f64>> = Vec::new();
    let total = labels.len() as u64;
    for (i, (name, dir)) in labels.iter().zip(&dirs).enumerate() {
        // The note names the model being scored (step i: the ones before it are done).
        (ctx.progress)(i as u64, total, name);
        let model = ctx.compute.load(dir)?;
        let tok = TextTokenizer::load(dir)?;
        let enc = Encoder::new(&tok, None, opts.clone())?;
        let mut entry = serde_json::Map::new();
        entry.insert("model".into(), json!(name));
        entry.insert("rows".into(), json!(rows.len()));
        let mut line = format!("{name}:");
        if wanted.any(&["loss", "perplexity"]) {
            let (l, tokens) = loss(&model, &enc, &rows, batch_size)?;
            entry.insert("tokens".into(), json!(tokens));
            if wanted.any(&["loss"]) {
                entry.insert("loss".into(), json!(l));
                line += &format!(" loss {l:.4}");
            }
            if wanted.any(&["perplexity"]) {
                entry.insert("perplexity".into(), json!(l.exp()));
                line += &format!(" perplexity {:.3}", l.exp());
            }
        }
        if wanted.any(&["pref_accuracy"]) {
            if let Some(acc) = eval_reward::policy_pref_accuracy(&model, &enc, &rows, batch_size)? {
                entry.insert("pref_accuracy".into(), json!(acc));
                line += &format!(" pref accuracy {:.1}%", acc * 100.0);
            }
        }
        if needs_answers {
            let stop = tok.stop_ids(dir);
            let mut answers = Vec::with_capacity(prompts.len());
            for batch in prompts.chunks(batch_size.max(1)) {
                if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(crate::error::Error::Cancelled);
                }
                answers.extend(eval_reward::greedy_answers(
                    &model, &tok, &enc, &stop, batch, max_new,
                )?);
            }
            entry.insert("answered".into(), json!(answers.len()));
            let hits: Vec<bool> = prompts
                .iter()
                .zip(&answers)
                .map(|(p, a)| a.trim() == p.answer.trim())
                .collect();
            if wanted.any(&["exact_match"]) {
                let em = hits.iter().filter(|h| **h).count() as f64 / hits.len() as f64;
                entry.insert("exact_match".into(), json!(em));
                line += &format!(" exact match {:.1}% of {}", em * 100.0, hits.len());
            }
            let rewards = match &judge {
                Some(j) => {
                    let items: Vec<(&Side, Side)> = prompts
                        .iter()
                        .zip(&answers)
                        .map(|(p, a)| (&p.prompt, Side::Text(a.clone())))
                        .collect();
                    let r = j.rewards(&items)?;
                    if wanted.any(&["reward"]) {
                        let mean = r.iter().sum::<f64>() / r.len() as f64;
                        entry.insert("reward".into(), json!(mean));
                        line += &format!(" reward {mean:.3}");
                    }
                    r
                }
                None => vec![],
            };
            let examples: Vec<Json> = prompts
                .iter()
                .zip(&answers)
                .zip(&hits)
                .enumerate()
                .take(5)
                .map(|(k, ((p, a), hit))| {
                    let mut e =
                        json!({"line": p.line, "reference": p.answer, "answer": a, "match": hit});
                    if let Some(r) = rewards.get(k) {
                        e["reward"] = json!(r);
                    }
                    e
                })
                .collect();
            entry.insert("examples".into(), Json::Array(examples));
            all_rewards.push(rewards);
        }
        (ctx.log)(&line);
        // TensorBoard / MLflow: eval/<metric> with the model's position in `models` as the step.
        log_metrics(ctx, i, &entry);
        (ctx.progress)(i as u64 + 1, total, name);
        results.push(entry);
    }
    if wanted.any(&["win_rate"]) && judge.is_some() {
        for (i, (entry, rate)) in results
            .iter_mut()
            .zip(eval_reward::win_rates(&all_rewards))
            .enumerate()
            .skip(1)
        {
            entry.insert("win_rate".into(), json!(rate));
            (ctx.log)(&format!(
                "{}: wins {:.1}% against {} (ties half)",
                labels[i],
                rate * 100.0,
                labels[0]
            ));
            ctx.tracker.log(
                i as u64,
                &[(crate::track::eval_tag("win_rate").as_str(), rate)],
            );
        }
    }
    let mut doc = json!({"models": results});
    if let (Some(j), true) = (&judge, wanted.any(&["pref_accuracy"])) {
        if let Some(acc) = eval_reward::judge_pref_accuracy(j, &rows)? {
            let name = label(&ctx.params_json["reward"]);
            (ctx.log)(&format!(
                "{name}: pref accuracy {:.1}% (reward of chosen above rejected)",
                acc * 100.0
            ));
            doc["reward_model"] = json!({"model": name, "pref_accuracy": acc});
        }
    }
    let path = ctx.out.join("metrics.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?,
    )
    .map_err(|e| crate::error::Error::Store(format!("cannot write {}: {e}", path.display())))
}

/// Logs a model's metrics to the trackers as eval/<metric>, the model's position as the step.
fn log_metrics(ctx: &mut RunContext, i: usize, entry: &serde_json::Map<String, Json>) {
    let values: Vec<(String, f64)> = METRICS
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
}
