//! `ptl data show` and `ptl data stats`: what a stage will train on, rendered, tokenized and masked by
//! the same code the training stages use.

use super::OutputFormat;
use crate::data::artifact::{self, DataSpec, Tokenized};
use crate::data::encode::{EncodeOptions, Encoded, Skip};
use crate::data::tokenizer::TextTokenizer;
use crate::lang::check::check_file;
use crate::lang::diag::render;
use crate::lang::pipeline::Pipeline;
use crate::lang::types::Format;
use crate::lang::value::Value;
use crate::store::Store;
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct DataArgs {
    pub input: PathBuf,
    pub target: Option<String>,
    pub set: Vec<String>,
    pub store: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub format_in: Option<String>,
    pub max_len: Option<usize>,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    pub template: Option<PathBuf>,
    pub rows: usize,
    pub offset: usize,
    pub format: OutputFormat,
}

/// The model folder a model value comes from: a local folder, or the base of the stage that trains it.
fn model_dir(p: &Pipeline, v: &Value) -> Option<PathBuf> {
    match v {
        Value::HfModel(path) => Some(path.resolved.clone()),
        // Training stages keep their base model's tokenizer; a stage that makes a model from a
        // tokenizer folder (`init`) copies that folder's tokenizer into it.
        Value::Output { stage, .. } => {
            let upstream = &p.stages[*stage];
            let params = &upstream.params;
            params
                .get("model")
                .or_else(|| match params.get("models") {
                    Some(Value::List(l)) => l.first(),
                    _ => None,
                })
                .and_then(|m| model_dir(p, m))
                .or_else(|| {
                    p.path_params(upstream)
                        .find(|(field, _, _)| *field == "tokenizer")
                        .map(|(_, _, resolved)| resolved)
                })
        }
        Value::List(items) => items.first().and_then(|m| model_dir(p, m)),
        _ => None,
    }
}

/// The stage's options, with the command line's on top.
fn opts_from(params: &std::collections::BTreeMap<String, Value>, args: &DataArgs) -> EncodeOptions {
    let stage = EncodeOptions::from_stage(params);
    EncodeOptions {
        max_len: args.max_len.unwrap_or(stage.max_len),
        train_on_prompt: args.train_on_prompt || stage.train_on_prompt,
        mask_history: args.mask_history || stage.mask_history,
        ..stage
    }
}

/// The data, tokenizer and options a pipeline TARGET (a stage or a dataset binding) stands for.
fn spec_from_pipeline(p: &Pipeline, target: &str, args: &DataArgs) -> Result<DataSpec, String> {
    let base = p
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dataset = |v: &Value| match v {
        Value::Dataset { path, format } => Some((path.resolved.clone(), *format)),
        _ => None,
    };
    if let Some(id) = p.stage_id(target) {
        let params = &p.stages[id].params;
        let (data, format) = params
            .get("data")
            .and_then(dataset)
            .ok_or_else(|| format!("stage {target} reads no dataset"))?;
        let tokenizer = match &args.tokenizer {
            Some(t) => t.clone(),
            None => params
                .get("model")
                .or_else(|| params.get("models"))
                .and_then(|m| model_dir(p, m))
                .ok_or_else(|| {
                    format!("cannot tell stage {target}'s tokenizer: give --tokenizer DIR")
                })?,
        };
        let template = match params.get("template") {
            Some(Value::Str(t)) => Some(base.join(t)),
            _ => args.template.clone(),
        };
        return Ok(DataSpec {
            data,
            format,
            tokenizer,
            template,
            opts: opts_from(params, args),
        });
    }
    if let Some((data, format)) = p.datasets.get(target).and_then(dataset) {
        // The tokenizer of the first stage that reads this dataset, unless one is given.
        let reader = p.stages.iter().find(|s| {
            s.params
                .get("data")
                .and_then(dataset)
                .is_some_and(|(d, _)| d == data)
        });
        let tokenizer = match (&args.tokenizer, reader) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => s
                .params
                .get("model")
                .or_else(|| s.params.get("models"))
                .and_then(|m| model_dir(p, m))
                .ok_or_else(|| {
                    format!("cannot tell the tokenizer for {target}: give --tokenizer DIR")
                })?,
            (None, None) => return Err(format!("no stage reads {target}: give --tokenizer DIR")),
        };
        let params = reader.map(|s| s.params.clone()).unwrap_or_default();
        return Ok(DataSpec {
            data,
            format,
            tokenizer,
            template: args.template.clone(),
            opts: opts_from(&params, args),
        });
    }
    let mut names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    names.extend(p.datasets.keys().map(String::as_str));
    Err(format!(
        "`{target}` is neither a stage nor a dataset binding; try: {}",
        names.join(", ")
    ))
}

fn spec(args: &DataArgs) -> Result<(DataSpec, Option<Store>), Option<String>> {
    let is_pipeline = args.input.extension().is_some_and(|e| e == "ptl");
    if is_pipeline {
        let target = args
            .target
            .as_deref()
            .ok_or("give a TARGET: a stage or a dataset binding".to_string())?;
        let c = check_file(&args.input, &args.set);
        if c.pipeline.is_none() {
            err!("{}", render(&c.diags, &c.sources, super::color()));
            return Err(None);
        }
        let p = c.pipeline.expect("checked");
        let spec = spec_from_pipeline(&p, target, args)?;
        let dir = super::engine::store_dir(&args.input, args.store.as_deref());
        let store = Store::open(&dir)
            .map_err(|e| format!("cannot use the store {}: {e}", dir.display()))?;
        return Ok((spec, Some(store)));
    }
    let tokenizer = args
        .tokenizer
        .clone()
        .ok_or("a JSONL file needs --tokenizer DIR (a model or tokenizer folder)".to_string())?;
    let format = match args.format_in.as_deref() {
        None => Format::Auto,
        Some(f) => Format::parse(f).ok_or(format!(
            "unknown --format-in {f}: use alpaca, sharegpt, messages, text, preference or kto"
        ))?,
    };
    let opts = EncodeOptions {
        max_len: args.max_len.unwrap_or(1024),
        train_on_prompt: args.train_on_prompt,
        mask_history: args.mask_history,
        template_vars: Default::default(),
    };
    Ok((
        DataSpec {
            data: args.input.clone(),
            format,
            tokenizer,
            template: args.template.clone(),
            opts,
        },
        None,
    ))
}

fn fail(e: Option<String>) -> i32 {
    if let Some(e) = e {
        errln!("error: {e}");
    }
    1
}

/// Text with trained byte ranges marked: green on a terminal, ⟦…⟧ otherwise. Tokens that cover no
/// text (a BOS or EOS the tokenizer or ptl added) are shown by name where they stand.
fn highlight(
    tok: &TextTokenizer,
    text: &str,
    ids: &[u32],
    offsets: &[(usize, usize)],
    mask: &[u8],
    color: bool,
) -> String {
    let (open, close) = if color {
        ("\x1b[1;32m", "\x1b[0m")
    } else {
        ("⟦", "⟧")
    };
    let added = |at: usize, out: &mut String| {
        for (i, &(s, e)) in offsets.iter().enumerate() {
            if s == at && e == at {
                let name = tok.inner.id_to_token(ids[i]).unwrap_or_default();
                if mask[i] == 1 {
                    out.push_str(&format!("{open}{name}{close}"));
                } else {
                    out.push_str(&name);
                }
            }
        }
    };
    let mut trained = vec![false; text.len()];
    for (&(s, e), &m) in offsets.iter().zip(mask) {
        if m == 1 {
            for t in trained.iter_mut().take(e.min(text.len())).skip(s) {
                *t = true;
            }
        }
    }
    let end = offsets.last().map_or(text.len(), |o| o.1.min(text.len()));
    let mut out = String::new();
    let mut inside = false;
    for (i, ch) in text[..end].char_indices() {
        if !inside {
            added(i, &mut out);
        }
        if trained[i] != inside {
            out.push_str(if trained[i] { open } else { close });
            inside = trained[i];
        }
        out.push(ch);
    }
    if inside {
        out.push_str(close);
    }
    added(end, &mut out);
    if end < text.len() {
        out.push_str(if color {
            "\x1b[2m⟨truncated⟩\x1b[0m"
        } else {
            "⟨truncated⟩"
        });
    }
    out
}

pub fn show(args: DataArgs) -> i32 {
    let (spec, _) = match spec(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let tok = match TextTokenizer::load(&spec.tokenizer) {
        Ok(t) => t,
        Err(e) => return fail(Some(e)),
    };
    let encoder = match spec.encoder(&tok) {
        Ok(e) => e,
        Err(e) => return fail(Some(e)),
    };
    let (rows, problems) = match crate::data::rows::read(&spec.data, spec.format) {
        Ok(r) => r,
        Err(e) => return fail(Some(e)),
    };
    let file = spec.data.display().to_string();
    let color = super::color_stdout();
    for p in &problems {
        errln!("malformed: {p}");
    }
    for (i, r) in rows.iter().enumerate().skip(args.offset).take(args.rows) {
        let result = encoder.encode(&r.example);
        if args.format == OutputFormat::Json {
            let j = match &result {
                Ok(Encoded::Sequence {
                    text,
                    ids,
                    mask,
                    truncated,
                    ..
                }) => {
                    json!({"row": i, "line": r.line, "text": text, "ids": ids, "labels_mask": mask, "truncated": truncated})
                }
                Ok(Encoded::Pair {
                    prompt_text,
                    prompt_ids,
                    chosen_text,
                    chosen_ids,
                    rejected_text,
                    rejected_ids,
                    truncated,
                    ..
                }) => json!({
                    "row": i, "line": r.line, "prompt": prompt_text, "prompt_ids": prompt_ids, "prompt_mask": vec![0; prompt_ids.len()],
                    "chosen": chosen_text, "chosen_ids": chosen_ids, "chosen_mask": vec![1; chosen_ids.len()],
                    "rejected": rejected_text, "rejected_ids": rejected_ids, "rejected_mask": vec![1; rejected_ids.len()],
                    "truncated": truncated,
                }),
                Ok(Encoded::Unpaired {
                    prompt_text,
                    prompt_ids,
                    completion_text,
                    completion_ids,
                    label,
                    truncated,
                }) => json!({
                    "row": i, "line": r.line, "prompt": prompt_text, "prompt_ids": prompt_ids,
                    "completion": completion_text, "completion_ids": completion_ids, "label": label, "truncated": truncated,
                }),
                Ok(Encoded::Prompt {
                    prompt_text,
                    prompt_ids,
                }) => {
                    json!({"row": i, "line": r.line, "prompt": prompt_text, "prompt_ids": prompt_ids})
                }
                Err(Skip::Dropped(why)) => json!({"row": i, "line": r.line, "dropped": why}),
                Err(Skip::Bad(why)) => json!({"row": i, "line": r.line, "error": why}),
            };
            outln!("{j}");
            continue;
        }
        let head = format!("── row {i} · {file}:{} ", r.line);
        match &result {
            Ok(Encoded::Sequence {
                text,
                ids,
                mask,
                truncated,
                offsets,
            }) => {
                let trained: usize = mask.iter().map(|m| *m as usize).sum();
                outln!(
                    "{head}· {} tokens, {trained} trained{}",
                    ids.len(),
                    if *truncated { " · truncated" } else { "" }
                );
                outln!("{}", highlight(&tok, text, ids, offsets, mask, color));
            }
            Ok(Encoded::Pair {
                prompt_text,
                prompt_ids,
                chosen_text,
                chosen_ids,
                rejected_text,
                rejected_ids,
                truncated,
                ..
            }) => {
                outln!(
                    "{head}· prompt {} tokens, chosen {}, rejected {}{}",
                    prompt_ids.len(),
                    chosen_ids.len(),
                    rejected_ids.len(),
                    if *truncated { " · truncated" } else { "" }
                );
                let mark = |t: &str| {
                    if color {
                        format!("\x1b[1;32m{t}\x1b[0m")
                    } else {
                        format!("⟦{t}⟧")
                    }
                };
                outln!("prompt:   {prompt_text}");
                outln!("chosen:   {}", mark(chosen_text));
                outln!("rejected: {}", mark(rejected_text));
            }
            Ok(Encoded::Unpaired {
                prompt_text,
                prompt_ids,
                completion_text,
                completion_ids,
                label,
                truncated,
            }) => {
                outln!(
                    "{head}· prompt {} tokens, completion {} ({}){}",
                    prompt_ids.len(),
                    completion_ids.len(),
                    if *label { "desirable" } else { "undesirable" },
                    if *truncated { " · truncated" } else { "" }
                );
                outln!("prompt:     {prompt_text}");
                outln!(
                    "completion: {}",
                    if color {
                        format!("\x1b[1;32m{completion_text}\x1b[0m")
                    } else {
                        format!("⟦{completion_text}⟧")
                    }
                );
            }
            Ok(Encoded::Prompt {
                prompt_text,
                prompt_ids,
            }) => {
                outln!("{head}· prompt {} tokens", prompt_ids.len());
                outln!("prompt: {prompt_text}");
            }
            Err(Skip::Dropped(why)) => outln!("{head}· dropped: {why}"),
            Err(Skip::Bad(why)) => outln!("{head}· cannot be encoded: {why}"),
        }
    }
    if rows.is_empty() && problems.is_empty() {
        return fail(Some(format!("{file} holds no rows")));
    }
    0
}

pub fn stats(args: DataArgs) -> i32 {
    let (spec, store) = match spec(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let t: Result<Tokenized, String> = match &store {
        Some(store) => artifact::cached(store, &spec),
        None => artifact::tokenize(&spec),
    };
    let t = match t {
        Ok(t) => t,
        Err(e) => return fail(Some(e)),
    };
    let file = spec.data.display().to_string();
    let s = artifact::stats(&t, &file);
    if args.format == OutputFormat::Json {
        let mut j = serde_json::to_value(&s).unwrap_or_default();
        j["file"] = json!(file);
        j["artifact"] = json!(t.key);
        outln!("{j}");
        return 0;
    }
    outln!(
        "{file} · tokenizer {} · max_len {}",
        spec.tokenizer.display(),
        spec.opts.max_len
    );
    outln!("rows         {} ({} malformed)", s.rows, s.malformed.len());
    outln!("encoded      {}", s.encoded);
    let dropped: usize = s.dropped.values().sum();
    outln!("dropped      {dropped}");
    for (why, n) in &s.dropped {
        outln!("  {n} × {why}");
    }
    outln!("truncated    {}", s.truncated);
    let pct = if s.tokens == 0 {
        0.0
    } else {
        100.0 * s.trained_tokens as f64 / s.tokens as f64
    };
    outln!(
        "tokens       {} ({} trained, {pct:.1}%)",
        s.tokens,
        s.trained_tokens
    );
    outln!(
        "length       p50 {} · p90 {} · p99 {} · max {}",
        s.length_p50,
        s.length_p90,
        s.length_p99,
        s.length_max
    );
    for m in s.malformed.iter().chain(&s.unencodable) {
        outln!("  {m}");
    }
    if let Some(k) = &t.key {
        outln!(
            "artifact     {k}{}",
            if t.cached { " (cached)" } else { "" }
        );
    }
    0
}
