//! `ptl generate MODEL_DIR (--prompt TEXT | --input FILE)`: greedy or sampled continuations with the
//! KV-cache path, stopping at the model's end tokens; `--chat` applies the tokenizer's chat template.

use crate::data::encode::{EncodeOptions, Encoder};
use crate::data::tokenizer::TextTokenizer;
use crate::model::generation::{Generation, Sampling};
use crate::plan::compute::{Compute, Loading};
use serde_json::{json, Value};
use std::path::PathBuf;

pub struct GenerateArgs {
    pub model: PathBuf,
    pub with: Loading,
    pub prompt: Option<String>,
    pub input: Option<PathBuf>,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
    /// Prompts generated together.
    pub batch_size: usize,
    pub greedy: bool,
    pub chat: bool,
    pub json: bool,
    pub compute: Compute,
}

pub fn run(a: GenerateArgs) -> i32 {
    let fail = |e: String| {
        errln!("error: {e}");
        1
    };
    let tok = match TextTokenizer::load(&a.model) {
        Ok(t) => t,
        Err(e) => return fail(format!("{e} (ptl generate needs the model's tokenizer)")),
    };
    let decoder = match a.compute.load_with(&a.model, &a.with) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    let prompts: Vec<String> = match (&a.prompt, &a.input) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(file)) => {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
            };
            let mut out = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                match serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v["prompt"].as_str().map(str::to_string))
                {
                    Some(p) => out.push(p),
                    None => {
                        return fail(format!(
                            "{}:{}: a row needs a string `prompt`",
                            file.display(),
                            i + 1
                        ))
                    }
                }
            }
            out
        }
        (None, None) => return fail("give --prompt TEXT or --input FILE".into()),
    };
    let stop = tok.stop_ids(&a.model);
    let encoder = if a.chat {
        match Encoder::new(&tok, None, EncodeOptions::default()) {
            Ok(e) => Some(e),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    let mut rows = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let ids = match &encoder {
            Some(enc) => enc
                .render(&[json!({"role": "user", "content": prompt})], true)
                .map_err(|e| format!("{e:?}"))
                .and_then(|r| tok.encode(&r.text, false)),
            None => tok.encode(prompt, true),
        };
        match ids {
            Ok(t) => rows.push(t.ids),
            Err(e) => return fail(e),
        }
    }
    let g = Generation {
        max_new: a.max_new_tokens,
        stop,
        sampling: if a.greedy {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
            }
        },
    };
    // Row i draws from seed + i, whatever batch it lands in.
    let seeds: Vec<u64> = (0..rows.len() as u64)
        .map(|i| a.seed.wrapping_add(i))
        .collect();
    for (chunk, seeds) in rows
        .chunks(a.batch_size.max(1))
        .zip(seeds.chunks(a.batch_size.max(1)))
    {
        let generated = match decoder.generate(chunk, seeds, &g) {
            Ok(n) => n,
            Err(e) => return fail(e.to_string()),
        };
        for new in generated {
            let text = tok.inner.decode(&new, true).unwrap_or_default();
            if a.json {
                outln!("{}", json!({"ids": new, "text": text}));
            } else {
                outln!("{text}");
            }
        }
    }
    0
}
