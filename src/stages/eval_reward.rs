//! The `eval` stage's preference metrics: `reward` (the mean reward of a model's greedy answers under
//! the stage's reward model), `win_rate` (how often a model's answer out-scores the first model's,
//! ties counting half) and `pref_accuracy` (on preference rows: chosen ranked above rejected, by the
//! reward model and by each model's summed completion log-probs).

use super::reward_model::plain_sequence;
use crate::data::encode::{EncodeOptions, Encoded, Encoder, Skip};
use crate::data::rows::{Example, Row, Side};
use crate::data::tokenizer::TextTokenizer;
use crate::model::config::Head;
use crate::model::decoder::Decoder;
use crate::model::generation::{Generation, Sampling};
use crate::train::preference::{reference_logps, Pair};
use serde_json::json;
use std::path::Path;

/// A held-out prompt and the answer it expects (the last assistant turn of a conversation, the chosen
/// completion of a preference row).
pub struct Prompt {
    pub line: usize,
    pub prompt: Side,
    pub answer: String,
}

fn side_text(side: &Side) -> String {
    match side {
        Side::Text(t) => t.clone(),
        Side::Messages(m) => m
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string(),
    }
}

/// The rows that hold a prompt with an expected answer.
pub fn prompts(rows: &[Row]) -> Vec<Prompt> {
    rows.iter()
        .filter_map(|r| match &r.example {
            Example::Chat(messages) => {
                let (last, prompt) = messages.split_last()?;
                (last["role"] == "assistant").then(|| Prompt {
                    line: r.line,
                    prompt: Side::Messages(prompt.to_vec()),
                    answer: last["content"].as_str().unwrap_or("").to_string(),
                })
            }
            Example::Preference { prompt, chosen, .. } => Some(Prompt {
                line: r.line,
                prompt: prompt.clone(),
                answer: side_text(chosen),
            }),
            _ => None,
        })
        .collect()
}

pub fn skip_text(e: Skip) -> String {
    match e {
        Skip::Bad(why) | Skip::Dropped(why) => why,
    }
}

/// A model's greedy answers to `prompts`, generated in one batch: messages rendered with the
/// generation prompt, text as is; the stop token left out of the text.
pub fn greedy_answers(
    model: &Decoder,
    tok: &TextTokenizer,
    enc: &Encoder,
    stop: &[u32],
    prompts: &[Prompt],
    max_new: usize,
) -> crate::error::Result<Vec<String>> {
    let mut rows = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        rows.push(match &prompt.prompt {
            Side::Messages(m) => {
                let text = enc
                    .render(m, true)
                    .map_err(|e| format!("row at line {}: {}", prompt.line, skip_text(e)))?
                    .text;
                tok.encode(&text, false)?.ids
            }
            Side::Text(t) => tok.encode(t, true)?.ids,
        });
    }
    let g = Generation {
        max_new,
        stop: stop.to_vec(),
        sampling: Sampling::Greedy,
    };
    let seeds = vec![0; rows.len()];
    Ok(model
        .generate(&rows, &seeds, &g)?
        .into_iter()
        .map(|new| {
            let keep: Vec<u32> = new.into_iter().filter(|t| !stop.contains(t)).collect();
            tok.inner.decode(&keep, true).unwrap_or_default()
        })
        .collect())
}

/// A reward model with its tokenizer and chat template.
pub struct Judge {
    model: Decoder,
    tok: TextTokenizer,
}

impl Judge {
    /// Loads `dir` for inference; it must be a reward model (a score head, not a vocabulary head).
    pub fn load(
        dir: &Path,
        compute: &crate::plan::compute::Compute,
    ) -> crate::error::Result<Judge> {
        let model = compute.load(dir)?;
        if model.cfg.head != Head::Score {
            return Err(format!(
                "{} is not a reward model: its config.json names a causal LM, not a *ForSequenceClassification with one label (use a `reward_model` stage's model)",
                dir.display()
            )
            .into());
        }
        let tok = TextTokenizer::load(dir)?;
        Ok(Judge { model, tok })
    }

    /// An encoder with the reward model's tokenizer and chat template, for [`Judge::sequence`].
    pub fn encoder(&self) -> crate::error::Result<Encoder<'_>> {
        Ok(Encoder::new(&self.tok, None, EncodeOptions::default())?)
    }

    /// The sequence the reward model reads for `completion` after `prompt`, as it was trained: a
    /// conversation rendered whole with its own template, or text + EOS.
    pub fn sequence(
        &self,
        enc: &Encoder,
        prompt: &Side,
        completion: &Side,
    ) -> crate::error::Result<Vec<u32>> {
        match prompt {
            Side::Messages(m) => {
                let mut all = m.clone();
                match completion {
                    Side::Messages(c) => all.extend(c.iter().cloned()),
                    Side::Text(t) => all.push(json!({"role": "assistant", "content": t})),
                }
                let text = enc.render(&all, false).map_err(skip_text)?.text;
                Ok(self.tok.encode(&text, false)?.ids)
            }
            Side::Text(p) => Ok(plain_sequence(&self.tok, p, &side_text(completion))?),
        }
    }

    /// The reward of each token sequence, 8 sequences to a forward.
    pub fn score(&self, seqs: &[Vec<u32>]) -> crate::error::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(seqs.len());
        for group in seqs.chunks(8) {
            let refs: Vec<&[u32]> = group.iter().map(Vec::as_slice).collect();
            let r: Vec<f32> = self.model.rewards(&refs)?.to_vec1()?;
            out.extend(r.into_iter().map(f64::from));
        }
        Ok(out)
    }

    /// The reward of each (prompt, completion).
    pub fn rewards(&self, items: &[(&Side, Side)]) -> crate::error::Result<Vec<f64>> {
        let enc = self.encoder()?;
        let seqs: Vec<Vec<u32>> = items
            .iter()
            .map(|(p, c)| self.sequence(&enc, p, c))
            .collect::<crate::error::Result<_>>()?;
        self.score(&seqs)
    }
}

impl crate::train::rollouts::RewardModel for Judge {
    fn rewards(&self, items: &[(&Side, Side)]) -> crate::error::Result<Vec<f64>> {
        Judge::rewards(self, items)
    }
}

/// The share of preference rows the judge ranks chosen above rejected (strictly).
pub fn judge_pref_accuracy(judge: &Judge, rows: &[Row]) -> crate::error::Result<Option<f64>> {
    let mut items = Vec::new();
    for r in rows {
        if let Example::Preference {
            prompt,
            chosen,
            rejected,
            ..
        } = &r.example
        {
            items.push((prompt, chosen.clone()));
            items.push((prompt, rejected.clone()));
        }
    }
    if items.is_empty() {
        return Ok(None);
    }
    let r = judge.rewards(&items)?;
    let right = r.chunks(2).filter(|p| p[0] > p[1]).count();
    Ok(Some(right as f64 / (r.len() / 2) as f64))
}

/// The share of preference rows where `model` gives the chosen completion a higher summed log-prob
/// than the rejected one.
pub fn policy_pref_accuracy(
    model: &Decoder,
    enc: &Encoder,
    rows: &[Row],
    batch_size: usize,
) -> crate::error::Result<Option<f64>> {
    let pairs: Vec<Pair> = rows
        .iter()
        .filter_map(|r| match enc.encode(&r.example) {
            Ok(Encoded::Pair {
                prompt_ids,
                chosen_ids,
                rejected_ids,
                ..
            }) => Some(Pair {
                prompt: prompt_ids,
                chosen: chosen_ids,
                rejected: rejected_ids,
            }),
            _ => None,
        })
        .collect();
    if pairs.is_empty() {
        return Ok(None);
    }
    let logps = reference_logps(model, &pairs, batch_size)?;
    let right = logps.iter().filter(|(c, r)| c > r).count();
    Ok(Some(right as f64 / pairs.len() as f64))
}

/// Each model's win rate against the first: the share of prompts where its answer's reward beats the
/// first model's, ties counting half. `rewards[m][i]`: model m's answer to prompt i.
pub fn win_rates(rewards: &[Vec<f64>]) -> Vec<f64> {
    let Some(first) = rewards.first() else {
        return vec![];
    };
    rewards
        .iter()
        .map(|mine| {
            let score: f64 = mine
                .iter()
                .zip(first)
                .map(|(a, b)| {
                    if a > b {
                        1.0
                    } else if a == b {
                        0.5
                    } else {
                        0.0
                    }
                })
                .sum();
            score / mine.len().max(1) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn win_rates_count_ties_half() {
        let r = vec![vec![1.0, 2.0, 3.0, 4.0], vec![2.0, 2.0, 1.0, 5.0]];
        assert_eq!(win_rates(&r), [0.5, 0.625]);
    }
}
