//! The tokenization artifact: a dataset encoded for one tokenizer, chat template and set of options,
//! cached in the store under a key of their content hashes, so it is computed once and shared by every
//! stage (and `ptl data`) that needs the same encoding.

use super::encode::{EncodeOptions, Encoded, Encoder, Skip};
use super::rows;
use super::tokenizer::TextTokenizer;
use crate::lang::types::Format;
use crate::store::hash::{hash_file_uncached, HashCache};
use crate::store::{Manifest, Store};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

/// Bumped when encoding changes what it produces.
const VERSION: u32 = 3;

#[derive(Clone, Debug)]
pub struct DataSpec {
    pub data: PathBuf,
    pub format: Format,
    /// A folder holding tokenizer.json (a model folder or a tokenizer folder).
    pub tokenizer: PathBuf,
    /// A chat template file that replaces the tokenizer's own.
    pub template: Option<PathBuf>,
    pub opts: EncodeOptions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenizedRow {
    /// Index among the file's rows.
    pub row: usize,
    pub line: usize,
    pub result: Result<Encoded, Skip>,
}

pub struct Tokenized {
    pub rows: Vec<TokenizedRow>,
    /// Malformed rows, as `file:line: problem`.
    pub problems: Vec<String>,
    /// The store key, when the artifact came from (or went into) a store.
    pub key: Option<String>,
    pub cached: bool,
}

impl DataSpec {
    pub fn encoder<'t>(&self, tok: &'t TextTokenizer) -> Result<Encoder<'t>, String> {
        let template = match &self.template {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Encoder::new(tok, template.as_deref(), self.opts.clone())
    }
}

/// Encodes every row (in parallel); malformed rows are listed, not fatal.
pub fn tokenize(spec: &DataSpec) -> Result<Tokenized, String> {
    let tok = TextTokenizer::load(&spec.tokenizer)?;
    let encoder = spec.encoder(&tok)?;
    let (read, problems) = rows::read(&spec.data, spec.format)?;
    let rows = read
        .par_iter()
        .enumerate()
        .map(|(row, r)| TokenizedRow {
            row,
            line: r.line,
            result: encoder.encode(&r.example),
        })
        .collect();
    Ok(Tokenized {
        rows,
        problems,
        key: None,
        cached: false,
    })
}

/// The artifact's key: content hashes of the data, tokenizer and template, and the options.
pub fn key(spec: &DataSpec, cache: &mut HashCache) -> Result<String, String> {
    let tok = TextTokenizer::load(&spec.tokenizer)?;
    let data = cache
        .file(&spec.data)
        .map_err(|e| format!("cannot read {}: {e}", spec.data.display()))?;
    let template = match &spec.template {
        Some(p) => {
            Some(hash_file_uncached(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?)
        }
        None => None,
    };
    let doc = serde_json::json!({
        "ptl_tokenized": VERSION,
        "data": data,
        "format": spec.format.name(),
        "tokenizer": tok.hash,
        "template": template,
        "max_len": spec.opts.max_len,
        "train_on_prompt": spec.opts.train_on_prompt,
        "mask_history": spec.opts.mask_history,
        "template_vars": spec.opts.template_vars,
    });
    Ok(blake3::hash(doc.to_string().as_bytes())
        .to_hex()
        .to_string())
}

/// The artifact from the store, computed and committed first if it is not there.
pub fn cached(store: &Store, spec: &DataSpec) -> Result<Tokenized, String> {
    let mut cache = HashCache::load(&store.root);
    let key = key(spec, &mut cache)?;
    let _ = cache.save();
    let io = |e: std::io::Error| format!("store error: {e}");
    let _guard = store.lock(&key).map_err(io)?;
    if !store.has(&key) {
        let t = tokenize(spec)?;
        let pending = store.begin(&key).map_err(io)?;
        let write = || -> std::io::Result<()> {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(pending.out.join("rows.jsonl"))?);
            for r in &t.rows {
                serde_json::to_writer(&mut f, r).map_err(std::io::Error::other)?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
            std::fs::write(
                pending.out.join("problems.json"),
                serde_json::to_vec(&t.problems).map_err(std::io::Error::other)?,
            )
        };
        if let Err(e) = write() {
            store.abort(pending);
            return Err(io(e));
        }
        let manifest = Manifest::artifact(
            &key,
            format!("tokenize {}", spec.data.display()),
            "tokenize",
            VERSION,
        );
        store
            .commit(pending, manifest, &["rows", "problems"])
            .map_err(io)?;
        return Ok(Tokenized {
            key: Some(key),
            ..t
        });
    }
    let out = store.entry_dir(&key).join("out");
    let text = std::fs::read_to_string(out.join("rows.jsonl")).map_err(io)?;
    let rows = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| format!("corrupt tokenization artifact {key}: {e}"))
        })
        .collect::<Result<Vec<TokenizedRow>, String>>()?;
    let problems = serde_json::from_slice(&std::fs::read(out.join("problems.json")).map_err(io)?)
        .map_err(|e| format!("corrupt tokenization artifact {key}: {e}"))?;
    Ok(Tokenized {
        rows,
        problems,
        key: Some(key),
        cached: true,
    })
}

/// Counts for `ptl data stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub rows: usize,
    pub encoded: usize,
    pub malformed: Vec<String>,
    pub dropped: std::collections::BTreeMap<String, usize>,
    pub unencodable: Vec<String>,
    pub truncated: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    /// Sequence lengths (pairs: prompt + longer completion): p50, p90, p99, max.
    pub length_p50: usize,
    pub length_p90: usize,
    pub length_p99: usize,
    pub length_max: usize,
}

pub fn stats(t: &Tokenized, file: &str) -> Stats {
    let mut lengths = Vec::new();
    let mut s = Stats {
        rows: t.rows.len() + t.problems.len(),
        encoded: 0,
        malformed: t.problems.clone(),
        dropped: Default::default(),
        unencodable: Vec::new(),
        truncated: 0,
        tokens: 0,
        trained_tokens: 0,
        length_p50: 0,
        length_p90: 0,
        length_p99: 0,
        length_max: 0,
    };
    for r in &t.rows {
        match &r.result {
            Ok(e) => {
                s.encoded += 1;
                let (len, trained, truncated) = match e {
                    Encoded::Sequence {
                        ids,
                        mask,
                        truncated,
                        ..
                    } => (
                        ids.len(),
                        mask.iter().map(|m| *m as usize).sum(),
                        *truncated,
                    ),
                    Encoded::Pair {
                        prompt_ids,
                        chosen_ids,
                        rejected_ids,
                        truncated,
                        ..
                    } => (
                        prompt_ids.len() + chosen_ids.len().max(rejected_ids.len()),
                        chosen_ids.len() + rejected_ids.len(),
                        *truncated,
                    ),
                    Encoded::Unpaired {
                        prompt_ids,
                        completion_ids,
                        truncated,
                        ..
                    } => (
                        prompt_ids.len() + completion_ids.len(),
                        completion_ids.len(),
                        *truncated,
                    ),
                    // A prompt trains nothing by itself: its completions are generated.
                    Encoded::Prompt { prompt_ids, .. } => (prompt_ids.len(), 0, false),
                };
                lengths.push(len);
                s.tokens += len;
                s.trained_tokens += trained;
                s.truncated += usize::from(truncated);
            }
            Err(Skip::Dropped(why)) => {
                *s.dropped
                    .entry(why.split(',').next().unwrap_or(why).to_string())
                    .or_default() += 1
            }
            Err(Skip::Bad(why)) => s.unencodable.push(format!("{file}:{}: {why}", r.line)),
        }
    }
    lengths.sort_unstable();
    let pct = |p: f64| -> usize {
        if lengths.is_empty() {
            0
        } else {
            lengths[((lengths.len() - 1) as f64 * p).round() as usize]
        }
    };
    s.length_p50 = pct(0.5);
    s.length_p90 = pct(0.9);
    s.length_p99 = pct(0.99);
    s.length_max = lengths.last().copied().unwrap_or(0);
    s
}
