//! `ptl generate MODEL_DIR (--prompt TEXT | --input FILE)`: greedy or sampled continuations with the
//! KV-cache path, stopping at the model's end tokens; `--chat` applies the tokenizer's chat template.

use crate::data::encode::{EncodeOptions, Encoder};
use crate::data::tokenizer::TextTokenizer;
use crate::model::decoder::argmax;
use crate::model::lora::Rng;
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
    pub greedy: bool,
    pub chat: bool,
    pub json: bool,
    pub compute: Compute,
}

/// Samples from logits with temperature, top-k and top-p (nucleus), as transformers' warpers do.
pub fn sample(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, rng: &mut Rng) -> u32 {
    let mut order: Vec<(usize, f32)> = logits
        .iter()
        .map(|&l| l / temperature.max(1e-6))
        .enumerate()
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let max = order[0].1;
    let mut probs: Vec<f32> = order.iter().map(|(_, l)| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    let mut keep = probs.len();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if acc >= top_p {
            keep = i + 1;
            break;
        }
    }
    let mass: f32 = probs[..keep].iter().sum();
    let mut r = rng.uniform() * mass;
    for i in 0..keep {
        r -= probs[i];
        if r <= 0.0 {
            return order[i].0 as u32;
        }
    }
    order[keep - 1].0 as u32
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
    let mut rng = Rng::new(a.seed);
    let encoder = if a.chat {
        match Encoder::new(&tok, None, EncodeOptions::default()) {
            Ok(e) => Some(e),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    for prompt in prompts {
        let ids = match &encoder {
            Some(enc) => enc
                .render(&[json!({"role": "user", "content": prompt})], true)
                .map_err(|e| format!("{e:?}"))
                .and_then(|r| tok.encode(&r.text, false)),
            None => tok.encode(&prompt, true),
        };
        let ids = match ids {
            Ok(t) => t.ids,
            Err(e) => return fail(e),
        };
        let (temperature, top_k, top_p, greedy) = (a.temperature, a.top_k, a.top_p, a.greedy);
        let mut pick = |l: &[f32]| {
            if greedy {
                argmax(l)
            } else {
                sample(l, temperature, top_k, top_p, &mut rng)
            }
        };
        let new = match decoder.generate(&ids, a.max_new_tokens, &stop, &mut pick) {
            Ok(n) => n,
            Err(e) => return fail(e.to_string()),
        };
        let text = tok.inner.decode(&new, true).unwrap_or_default();
        if a.json {
            outln!("{}", json!({"ids": new, "text": text}));
        } else {
            outln!("{text}");
        }
    }
    0
}
