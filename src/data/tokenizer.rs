//! A model's tokenizer as transformers sees it: tokenizer.json, the special tokens and the chat
//! template from tokenizer_config.json (or chat_template.jinja, which wins).

use crate::store::hash::{combine, hash_file_uncached};
use std::path::{Path, PathBuf};

pub struct TextTokenizer {
    pub dir: PathBuf,
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
    /// The chat template source, if the tokenizer has one.
    pub chat_template: Option<String>,
    /// Content hash of the files that define tokenization (part of tokenization artifact keys).
    pub hash: String,
}

/// A token: its id and the byte range of the text it covers.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` with its config; a model directory or a tokenizer directory.
    pub fn load(dir: &Path) -> Result<TextTokenizer, String> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(format!("{} has no tokenizer.json", dir.display()));
        }
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| format!("cannot load {}: {e}", file.display()))?;
        let config: serde_json::Value = match std::fs::read(dir.join("tokenizer_config.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{}: not valid JSON: {e}",
                    dir.join("tokenizer_config.json").display()
                )
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja)
                    .map_err(|e| format!("cannot read {}: {e}", jinja.display()))?,
            )
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                // A list of named templates: the one named "default".
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let mut parts = Vec::new();
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "special_tokens_map.json",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                let h = hash_file_uncached(&p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                parts.push((name.to_string(), h));
            }
        }
        Ok(TextTokenizer {
            dir: dir.to_path_buf(),
            inner,
            bos: token_text(&config["bos_token"]),
            eos: token_text(&config["eos_token"]),
            pad: token_text(&config["pad_token"]),
            unk: token_text(&config["unk_token"]),
            chat_template,
            hash: combine(&parts),
        })
    }

    /// Token ids and byte offsets of `text`; `special` adds the tokenizer's own BOS/EOS (as
    /// transformers' default `add_special_tokens=True`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Tokens, String> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_deref().and_then(|t| self.inner.token_to_id(t))
    }

    /// The padding token, else EOS (as TRL pads when a tokenizer has none).
    pub fn pad_or_eos_id(&self) -> Option<u32> {
        self.pad
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
            .or_else(|| self.eos_id())
    }

    /// Where generation stops: the EOS token and generation_config.json's `eos_token_id` (a number
    /// or a list) in the model folder `model`.
    pub fn stop_ids(&self, model: &Path) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos_id().into_iter().collect();
        if let Ok(bytes) = std::fs::read(model.join("generation_config.json")) {
            if let Ok(g) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                match &g["eos_token_id"] {
                    serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|v| v as u32)),
                    serde_json::Value::Array(list) => {
                        ids.extend(list.iter().filter_map(|v| v.as_u64().map(|v| v as u32)))
                    }
                    _ => {}
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The text of an added (special) token that starts `text`, if any.
    pub fn special_prefix<'t>(&self, text: &'t str) -> Option<&'t str> {
        self.inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && !t.content.is_empty() && text.starts_with(&t.content))
            .map(|t| &text[..t.content.len()])
            .max_by_key(|s| s.len())
    }
}
