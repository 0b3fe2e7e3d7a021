//! Examples to token ids and loss masks: the one code path `ptl data` shows and training stages use.
//!
//! Conversations: the whole conversation is rendered with the chat template and tokenized once
//! (`add_special_tokens=False`), so the ids equal transformers' `apply_chat_template(tokenize=True)`.
//! Trained tokens are those overlapping assistant text: `{% generation %}` spans when the template
//! has them, else each assistant turn from after its generation header (`<|im_start|>assistant\n`)
//! through its content and the special token that ends it (`<|im_end|>`, `<|eot_id|>`).

use super::rows::{Example, Side};
use super::template::ChatTemplate;
use super::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct EncodeOptions {
    pub max_len: usize,
    /// Train on system and user tokens too.
    pub train_on_prompt: bool,
    /// Train on the last assistant turn only.
    pub mask_history: bool,
    /// Extra template variables (e.g. `enable_thinking`).
    pub template_vars: BTreeMap<String, Json>,
}

impl EncodeOptions {
    /// What a stage's parameters ask for (`max_len`, `train_on_prompt`, `mask_history`): the one
    /// reading both the training stages and `ptl data` use, so what is shown is what trains.
    pub fn from_stage(params: &BTreeMap<String, crate::lang::value::Value>) -> EncodeOptions {
        use crate::lang::value::Value;
        let flag = |k: &str| params.get(k) == Some(&Value::Bool(true));
        EncodeOptions {
            max_len: match params.get("max_len") {
                Some(Value::Int(i)) => *i as usize,
                _ => 1024,
            },
            train_on_prompt: flag("train_on_prompt"),
            mask_history: flag("mask_history"),
            template_vars: BTreeMap::new(),
        }
    }
}

/// A tokenized example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoded {
    /// Conversations and texts: one sequence, a 0/1 mask per token, each token's byte range in `text`.
    Sequence {
        text: String,
        ids: Vec<u32>,
        mask: Vec<u8>,
        truncated: bool,
        #[serde(skip)]
        offsets: Vec<(usize, usize)>,
    },
    /// Preference pairs: the prompt (never trained) and two completions (all trained).
    Pair {
        prompt_text: String,
        prompt_ids: Vec<u32>,
        chosen_text: String,
        chosen_ids: Vec<u32>,
        rejected_text: String,
        rejected_ids: Vec<u32>,
        truncated: bool,
        /// The row's `margin` column.
        #[serde(default)]
        margin: Option<f64>,
    },
    /// A prompt to answer (`grpo` rows): rendered with the generation prompt.
    Prompt {
        prompt_text: String,
        prompt_ids: Vec<u32>,
    },
    /// KTO rows.
    Unpaired {
        prompt_text: String,
        prompt_ids: Vec<u32>,
        completion_text: String,
        completion_ids: Vec<u32>,
        label: bool,
        truncated: bool,
    },
}

/// A plain-text prompt and completion as TRL's preference trainers join them before tokenizing:
/// the completion ends with the EOS token's text unless it already does.
pub fn joined_with_eos(tok: &TextTokenizer, prompt: &str, completion: &str) -> String {
    let mut text = format!("{prompt}{completion}");
    if let Some(eos) = tok.eos.as_deref().filter(|e| !completion.ends_with(*e)) {
        text.push_str(eos);
    }
    text
}

/// How many leading ids `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Why an example produced nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Skip {
    /// Left out on purpose (e.g. a prompt longer than max_len, as TRL does).
    Dropped(String),
    /// The row cannot be encoded.
    Bad(String),
}

pub struct Encoder<'a> {
    pub tok: &'a TextTokenizer,
    template: Option<ChatTemplate>,
    pub opts: EncodeOptions,
}

fn content_text(m: &Json) -> String {
    match m.get("content") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Json::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn is_assistant(m: &Json) -> bool {
    m.get("role").and_then(Json::as_str) == Some("assistant")
}

impl<'a> Encoder<'a> {
    /// `template`: a template source that replaces the tokenizer's own.
    pub fn new(
        tok: &'a TextTokenizer,
        template: Option<&str>,
        opts: EncodeOptions,
    ) -> Result<Encoder<'a>, String> {
        let source = template
            .map(str::to_string)
            .or_else(|| tok.chat_template.clone());
        let template = source.as_deref().map(ChatTemplate::new).transpose()?;
        Ok(Encoder {
            tok,
            template,
            opts,
        })
    }

    fn template(&self) -> Result<&ChatTemplate, Skip> {
        self.template.as_ref().ok_or_else(|| {
            Skip::Bad(format!(
                "the tokenizer in {} has no chat template: conversations need one (set `template` on the stage)",
                self.tok.dir.display()
            ))
        })
    }

    fn specials(&self) -> BTreeMap<&'static str, Option<String>> {
        BTreeMap::from([
            ("bos_token", self.tok.bos.clone()),
            ("eos_token", self.tok.eos.clone()),
            ("pad_token", self.tok.pad.clone()),
            ("unk_token", self.tok.unk.clone()),
        ])
    }

    pub fn render(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
    ) -> Result<super::template::Rendered, Skip> {
        self.template()?
            .render(
                messages,
                add_generation_prompt,
                &self.specials(),
                &self.opts.template_vars,
            )
            .map_err(Skip::Bad)
    }

    fn encode_text(&self, text: &str, special: bool) -> Result<super::tokenizer::Tokens, Skip> {
        self.tok.encode(text, special).map_err(Skip::Bad)
    }

    pub fn encode(&self, ex: &Example) -> Result<Encoded, Skip> {
        match ex {
            Example::Chat(messages) => self.chat(messages),
            Example::Text(text) => {
                let tokens = self.encode_text(text, true)?;
                let (mut ids, mut offsets) = (tokens.ids, tokens.offsets);
                // Documents end with EOS, so packed rows stay apart (as LLaMA-Factory's pt stage does).
                if let Some(eos) = self.tok.eos_id() {
                    if ids.last() != Some(&eos) {
                        ids.push(eos);
                        offsets.push((text.len(), text.len()));
                    }
                }
                let mask = vec![1; ids.len()];
                Ok(self.truncate(text.clone(), ids, mask, offsets))
            }
            Example::Preference {
                prompt,
                chosen,
                rejected,
                margin,
            } => {
                let (prompt_text, prompt_ids) = self.prompt(prompt)?;
                let (chosen_text, chosen_full) = self.whole(prompt, &prompt_text, chosen)?;
                let (rejected_text, rejected_full) = self.whole(prompt, &prompt_text, rejected)?;
                // The completions start where the prompt alone and prompt + completion stop
                // agreeing (TRL's common prefix; tokens can merge across the boundary).
                let n = common_prefix(&prompt_ids, &chosen_full)
                    .min(common_prefix(&prompt_ids, &rejected_full));
                let room = self.room(&prompt_ids[..n])?;
                let mut chosen_ids = chosen_full[n..].to_vec();
                let mut rejected_ids = rejected_full[n..].to_vec();
                let truncated = chosen_ids.len() > room || rejected_ids.len() > room;
                chosen_ids.truncate(room);
                rejected_ids.truncate(room);
                Ok(Encoded::Pair {
                    prompt_text,
                    prompt_ids: prompt_ids[..n].to_vec(),
                    chosen_text,
                    chosen_ids,
                    rejected_text,
                    rejected_ids,
                    truncated,
                    margin: *margin,
                })
            }
            Example::Kto {
                prompt,
                completion,
                label,
            } => {
                let (prompt_text, prompt_ids) = self.prompt(prompt)?;
                let (completion_text, full) = self.whole(prompt, &prompt_text, completion)?;
                let n = common_prefix(&prompt_ids, &full);
                let room = self.room(&prompt_ids[..n])?;
                let mut completion_ids = full[n..].to_vec();
                let truncated = completion_ids.len() > room;
                completion_ids.truncate(room);
                Ok(Encoded::Unpaired {
                    prompt_text,
                    prompt_ids: prompt_ids[..n].to_vec(),
                    completion_text,
                    completion_ids,
                    label: *label,
                    truncated,
                })
            }
            Example::Prompt(prompt) => {
                let (prompt_text, prompt_ids) = self.prompt(prompt)?;
                self.room(&prompt_ids)?;
                Ok(Encoded::Prompt {
                    prompt_text,
                    prompt_ids,
                })
            }
        }
    }

    /// Tokens left for a completion after the prompt; a prompt that fills max_len is dropped (TRL).
    fn room(&self, prompt_ids: &[u32]) -> Result<usize, Skip> {
        if prompt_ids.len() >= self.opts.max_len {
            return Err(Skip::Dropped(format!(
                "the prompt alone is {} tokens, at least max_len ({})",
                prompt_ids.len(),
                self.opts.max_len
            )));
        }
        Ok(self.opts.max_len - prompt_ids.len())
    }

    fn truncate(
        &self,
        text: String,
        mut ids: Vec<u32>,
        mut mask: Vec<u8>,
        mut offsets: Vec<(usize, usize)>,
    ) -> Encoded {
        let truncated = ids.len() > self.opts.max_len;
        ids.truncate(self.opts.max_len);
        mask.truncate(self.opts.max_len);
        offsets.truncate(self.opts.max_len);
        Encoded::Sequence {
            text,
            ids,
            mask,
            truncated,
            offsets,
        }
    }

    /// A prompt: messages rendered with the generation prompt, or text with the tokenizer's specials.
    pub fn prompt(&self, prompt: &Side) -> Result<(String, Vec<u32>), Skip> {
        match prompt {
            Side::Messages(m) => {
                let text = self.render(m, true)?.text;
                let ids = self.encode_text(&text, false)?.ids;
                Ok((text, ids))
            }
            Side::Text(t) => Ok((t.clone(), self.encode_text(t, true)?.ids)),
        }
    }

    /// `prompt` + `completion` as one sequence, tokenized as TRL tokenizes it: a conversation
    /// rendered whole (the completion's text is what follows the rendered prompt); text joined with
    /// EOS appended (as text, unless the completion ends with it), with the tokenizer's specials.
    fn whole(
        &self,
        prompt: &Side,
        prompt_text: &str,
        completion: &Side,
    ) -> Result<(String, Vec<u32>), Skip> {
        match (prompt, completion) {
            (Side::Messages(p), c) => {
                let mut all = p.clone();
                match c {
                    Side::Messages(m) => all.extend(m.iter().cloned()),
                    Side::Text(t) => all.push(json!({"role": "assistant", "content": t})),
                }
                let full = self.render(&all, false)?.text;
                let Some(suffix) = full.strip_prefix(prompt_text) else {
                    return Err(Skip::Bad("the chat template does not render the prompt as the start of prompt + completion".into()));
                };
                let ids = self.encode_text(&full, false)?.ids;
                Ok((suffix.to_string(), ids))
            }
            (Side::Text(p), Side::Text(t)) => {
                let text = joined_with_eos(self.tok, p, t);
                Ok((t.clone(), self.encode_text(&text, true)?.ids))
            }
            (Side::Text(_), Side::Messages(_)) => Err(Skip::Bad(
                "a plain-text prompt with a message-list completion: use messages for both, or text for both".into(),
            )),
        }
    }

    fn chat(&self, messages: &[Json]) -> Result<Encoded, Skip> {
        if !messages.iter().any(is_assistant) {
            return Err(Skip::Bad(
                "the conversation has no assistant turn to train on".into(),
            ));
        }
        let rendered = self.render(messages, false)?;
        let mut spans = if self.template()?.has_generation {
            rendered.generation.clone()
        } else {
            self.assistant_spans(&rendered.text, messages)?
        };
        if self.opts.mask_history {
            spans = spans.split_off(spans.len().saturating_sub(1));
        }
        let tokens = self.encode_text(&rendered.text, false)?;
        let mask: Vec<u8> = tokens
            .offsets
            .iter()
            .map(|&(s, e)| {
                let trained =
                    self.opts.train_on_prompt || spans.iter().any(|&(a, b)| s < b && e > a);
                u8::from(trained)
            })
            .collect();
        Ok(self.truncate(rendered.text, tokens.ids, mask, tokens.offsets))
    }

    /// Where each assistant turn lies in the rendered text (for templates without generation tags).
    fn assistant_spans(&self, text: &str, messages: &[Json]) -> Result<Vec<(usize, usize)>, Skip> {
        let first = messages.iter().position(is_assistant).unwrap_or(0);
        // The generation header: what add_generation_prompt appends before an assistant turn.
        let header = if first > 0 {
            let with = self.render(&messages[..first], true)?.text;
            let without = self.render(&messages[..first], false)?.text;
            with.strip_prefix(&without).unwrap_or("").to_string()
        } else {
            String::new()
        };
        let mut spans = Vec::new();
        let mut cursor = 0;
        for (i, m) in messages.iter().enumerate().filter(|(_, m)| is_assistant(m)) {
            let content = content_text(m);
            let after_think = content
                .rsplit("</think>")
                .next()
                .unwrap_or("")
                .trim_start_matches('\n')
                .to_string();
            let candidates = [content.clone(), content.trim().to_string(), after_think];
            // The turn starts after the next generation header; its content is searched from there
            // (not from the cursor, where the same words may appear in a user turn).
            let from = match (!header.is_empty())
                .then(|| text[cursor..].find(&header))
                .flatten()
            {
                Some(h) => cursor + h + header.len(),
                None => cursor,
            };
            let found = candidates
                .iter()
                .filter(|c| !c.is_empty())
                .find_map(|c| text[from..].find(c.as_str()).map(|at| (from + at, c.len())));
            let (start, end) = match found {
                Some((at, len)) => (if from > cursor { from } else { at }, at + len),
                None if content.trim().is_empty() && from > cursor => {
                    // Whatever the template puts in an empty turn (an empty think block) up to its end token.
                    let e = (from..=text.len())
                        .find(|&p| text.is_char_boundary(p) && self.tok.special_prefix(&text[p..]).is_some())
                        .unwrap_or(from);
                    (from, e)
                }
                None => {
                    return Err(Skip::Bad(format!(
                        "cannot find assistant message {i} in the rendered conversation; a template with {{% generation %}} tags avoids this"
                    )))
                }
            };
            // The special token that ends the turn is trained too: the model must learn to stop.
            let end = end + self.tok.special_prefix(&text[end..]).map_or(0, str::len);
            spans.push((start, end));
            cursor = end;
        }
        Ok(spans)
    }
}
