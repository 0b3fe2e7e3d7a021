//! The tokenizer as GGUF metadata, from tokenizer.json: a byte-level BPE (Qwen, Llama 3) as llama.cpp's
//! `gpt2` vocabulary with its merges; a SentencePiece BPE converted to tokenizer.json (byte fallback,
//! `▁` for spaces: Gemma) as llama.cpp's `llama` (SentencePiece) vocabulary, whose merge order is the
//! score of the merged piece. Tokens by id (padded to the model's vocabulary size), their types, the
//! special ids, BOS handling and the chat template.

use super::Kv;
use crate::model::config::ModelConfig;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

type Result<T> = crate::error::Result<T>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Tokens by id with their types, as tokenizer.json lists them.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    /// Added tokens (tokenizer.json's `added_tokens`): never the result of a merge.
    added: Vec<bool>,
}

impl Vocab {
    fn read(tok: &Json, n: usize) -> Vocab {
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![NORMAL; n];
        let mut added = vec![false; n];
        for (text, id) in tok["model"]["vocab"].as_object().into_iter().flatten() {
            if let Some(i) = id.as_u64().map(|i| i as usize).filter(|i| *i < n) {
                tokens[i] = Some(text.clone());
            }
        }
        for a in tok["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(i), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) {
                let i = i as usize;
                if i < n {
                    tokens[i] = Some(text.to_string());
                    types[i] = if a["special"] == true {
                        CONTROL
                    } else {
                        USER_DEFINED
                    };
                    added[i] = true;
                }
            }
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = UNUSED;
                    format!("[PAD{i}]")
                })
            })
            .collect();
        Vocab {
            tokens,
            types,
            added,
        }
    }

    fn id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }
}

/// A tokenizer.json converted from SentencePiece: BPE with byte fallback (`<0x0A>` pieces).
fn is_sentencepiece(tok: &Json) -> bool {
    tok["model"]["type"] == "BPE" && tok["model"]["byte_fallback"] == true
}

/// The merges as (left, right) pairs, in rank order (either of tokenizer.json's two spellings).
fn merges(tok: &Json) -> Vec<(String, String)> {
    tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => {
                let (l, r) = s.split_once(' ')?;
                Some((l.to_string(), r.to_string()))
            }
            Json::Array(p) => Some((
                p.first()?.as_str()?.to_string(),
                p.get(1)?.as_str()?.to_string(),
            )),
            _ => None,
        })
        .collect()
}

/// Whether the normalizer or pre-tokenizer puts `▁` before the text (Llama 2's SentencePiece
/// `add_dummy_prefix`); Gemma's does not.
fn prepends_space(tok: &Json) -> bool {
    fn any(v: &Json, hit: &dyn Fn(&Json) -> bool) -> bool {
        hit(v)
            || ["normalizers", "pretokenizers"].iter().any(|k| {
                v[*k]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|x| any(x, hit)))
            })
    }
    let prepend = |v: &Json| v["type"] == "Prepend" && v["prepend"] == "▁";
    let metaspace = |v: &Json| {
        v["type"] == "Metaspace"
            && (v["add_prefix_space"] == true
                || v["prepend_scheme"].as_str().is_some_and(|s| s != "never"))
    };
    any(&tok["normalizer"], &prepend) || any(&tok["pre_tokenizer"], &metaspace)
}

/// The SentencePiece scores llama.cpp merges by (the highest-scoring adjacent pair whose text is a
/// piece): a piece made by the merge of rank r scores −r, so merges happen in tokenizer.json's
/// order, as transformers applies them (its SentencePiece conversion ranks merges by the merged
/// piece's score). Added tokens score lowest: transformers never merges into them.
fn merge_scores(tok: &Json, vocab: &Vocab) -> Vec<f32> {
    let index: HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let merges = merges(tok);
    let lowest = -(merges.len() as f32) - 1.0;
    let mut scores: Vec<Option<f32>> = vec![None; vocab.tokens.len()];
    for (rank, (l, r)) in merges.iter().enumerate() {
        if let Some(&i) = index.get(format!("{l}{r}").as_str()) {
            scores[i].get_or_insert(-(rank as f32));
        }
    }
    scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            if vocab.added[i] {
                lowest
            } else {
                s.unwrap_or(0.0)
            }
        })
        .collect()
}

/// `<0x0A>`: a byte-fallback piece.
fn is_byte_piece(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// The tokenizer's metadata (`arch` is llama.cpp's architecture name, for the pre-tokenizer).
pub fn tokenizer_kvs(dir: &Path, cfg: &ModelConfig, arch: &str) -> Result<Vec<(String, Kv)>> {
    let read = |f: &str| -> Result<Json> {
        Ok(serde_json::from_slice(
            &std::fs::read(dir.join(f)).map_err(|e| {
                format!(
                    "{}: {e} (a GGUF file carries the tokenizer)",
                    dir.join(f).display()
                )
            })?,
        )?)
    };
    let tok = read("tokenizer.json")?;
    let config = read("tokenizer_config.json").unwrap_or(Json::Null);
    if tok["model"]["type"] != "BPE" {
        return Err("only BPE tokenizers are exported to GGUF".into());
    }
    let mut vocab = Vocab::read(&tok, cfg.vocab_size);
    let special_id = |key: &str| -> Option<u32> {
        match &config[key] {
            Json::String(s) => vocab.id(s),
            Json::Object(o) => vocab.id(o.get("content")?.as_str()?),
            _ => None,
        }
    };
    let specials: Vec<(&str, u32)> = [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
    ]
    .into_iter()
    .filter_map(|(key, field)| Some((key, special_id(field)?)))
    .collect();
    let add_bos = match &config["add_bos_token"] {
        Json::Bool(b) => *b,
        _ => template_starts_with_special(&tok["post_processor"]),
    };
    let mut kvs: Vec<(String, Kv)> = if is_sentencepiece(&tok) {
        let scores = merge_scores(&tok, &vocab);
        let unk = tok["model"]["unk_token"].as_str().and_then(|u| vocab.id(u));
        for (i, t) in vocab.tokens.iter_mut().enumerate() {
            if vocab.types[i] == NORMAL && is_byte_piece(t) {
                vocab.types[i] = BYTE;
            } else if Some(i as u32) == unk {
                vocab.types[i] = UNKNOWN;
            } else if vocab.types[i] == USER_DEFINED {
                // llama.cpp matches user-defined pieces in the raw text, before spaces become `▁`.
                *t = t.replace('▁', " ");
            }
        }
        vec![
            ("tokenizer.ggml.model".into(), Kv::Str("llama".into())),
            ("tokenizer.ggml.pre".into(), Kv::Str("default".into())),
            ("tokenizer.ggml.tokens".into(), Kv::Strs(vocab.tokens)),
            ("tokenizer.ggml.scores".into(), Kv::F32s(scores)),
            ("tokenizer.ggml.token_type".into(), Kv::I32s(vocab.types)),
            (
                "tokenizer.ggml.add_space_prefix".into(),
                Kv::Bool(prepends_space(&tok)),
            ),
        ]
    } else {
        let pre = match arch {
            "qwen2" | "qwen3" => "qwen2",
            _ if cfg.vocab_size == 128256 => "llama-bpe",
            _ => "default",
        };
        let merges = merges(&tok).into_iter().map(|(l, r)| format!("{l} {r}"));
        vec![
            ("tokenizer.ggml.model".into(), Kv::Str("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Kv::Str(pre.into())),
            ("tokenizer.ggml.tokens".into(), Kv::Strs(vocab.tokens)),
            ("tokenizer.ggml.token_type".into(), Kv::I32s(vocab.types)),
            ("tokenizer.ggml.merges".into(), Kv::Strs(merges.collect())),
        ]
    };
    kvs.push(("tokenizer.ggml.add_bos_token".into(), Kv::Bool(add_bos)));
    kvs.extend(
        specials
            .into_iter()
            .map(|(k, id)| (k.to_string(), Kv::U32(id))),
    );
    let template = config["chat_template"]
        .as_str()
        .map(str::to_string)
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    if let Some(t) = template {
        kvs.push(("tokenizer.chat_template".into(), Kv::Str(t)));
    }
    Ok(kvs)
}

/// Whether the tokenizer's post-processor puts a special token first (Llama 3's BOS): what llama.cpp's
/// converter reads when tokenizer_config.json says nothing of `add_bos_token`.
fn template_starts_with_special(p: &Json) -> bool {
    match p["type"].as_str() {
        Some("TemplateProcessing") => p["single"][0].get("SpecialToken").is_some(),
        Some("Sequence") => p["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(template_starts_with_special),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sentencepiece_scores_follow_merge_ranks_and_added_tokens_score_lowest() {
        let tok = json!({
            "model": {"type": "BPE", "byte_fallback": true,
                      "vocab": {"a": 0, "b": 1, "ab": 2, "abb": 3, "<0x0A>": 4, "<x>": 5},
                      "merges": [["a", "b"], ["ab", "b"]]},
            "added_tokens": [{"id": 5, "content": "<x>", "special": true}]
        });
        let vocab = Vocab::read(&tok, 7);
        assert!(is_sentencepiece(&tok));
        assert_eq!(
            merge_scores(&tok, &vocab),
            [0.0, 0.0, 0.0, -1.0, 0.0, -3.0, 0.0]
        );
        assert_eq!(vocab.tokens[6], "[PAD6]");
        assert_eq!((vocab.types[5], vocab.types[6]), (CONTROL, UNUSED));
        assert!(is_byte_piece("<0x0A>") && !is_byte_piece("<0xZZ>") && !is_byte_piece("<x>"));
    }

    #[test]
    fn a_space_prefix_is_read_from_the_normalizer_or_the_metaspace() {
        let llama2 = json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace"}]}});
        let gemma = json!({"normalizer": {"type": "Replace", "content": "▁"}});
        let metaspace = json!({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}});
        assert!(prepends_space(&llama2) && prepends_space(&metaspace));
        assert!(!prepends_space(&gemma));
    }
}
