//! GRPO's online objective: each micro-batch samples `num_generations` completions per prompt from
//! the policy being trained (dropout off, no graph), scores them with the pipeline's reward
//! functions, and returns their GRPO loss (`grpo`).

use super::collective::Collective;
use super::grpo::{advantages, completion_logps, rollout_loss, GrpoSettings, Rollout};
use super::objective::{Metric, MicroLoss, Objective, Online, Rollouts};
use crate::lang::value::{Reward, RewardRule};
use crate::model::decoder::Decoder;
use crate::model::generation::{Generation, Sampling};
use serde_json::{Map, Value as Json};

/// The pipeline's reward functions, ready to score completions.
pub struct Scorer {
    rewards: Vec<(Reward, Option<regex::Regex>)>,
}

impl Scorer {
    pub fn new(rewards: &[Reward]) -> Result<Scorer, String> {
        let rewards = rewards
            .iter()
            .map(|r| {
                let pattern = match &r.rule {
                    RewardRule::ExactMatch { extract, .. } => extract.as_deref(),
                    RewardRule::RegexMatch { pattern } => Some(pattern.as_str()),
                    RewardRule::LengthPenalty { .. } => None,
                };
                let re = pattern
                    .map(regex::Regex::new)
                    .transpose()
                    .map_err(|e| format!("reward `{}`: {e}", r.name()))?;
                Ok((r.clone(), re))
            })
            .collect::<Result<_, String>>()?;
        Ok(Scorer { rewards })
    }

    /// Each reward function's value for a completion (its text and token count) of a row.
    pub fn score(&self, text: &str, tokens: usize, row: &Map<String, Json>) -> Vec<f64> {
        self.rewards
            .iter()
            .map(|(r, re)| match &r.rule {
                RewardRule::ExactMatch { field, .. } => {
                    let got = match re {
                        Some(re) => re.captures(text).and_then(|c| {
                            c.get(1)
                                .or_else(|| c.get(0))
                                .map(|m| m.as_str().to_string())
                        }),
                        None => Some(text.to_string()),
                    };
                    let want = match row.get(field) {
                        Some(Json::String(s)) => s.clone(),
                        Some(Json::Null) | None => return 0.0,
                        Some(other) => other.to_string(),
                    };
                    f64::from(u8::from(got.is_some_and(|g| g.trim() == want.trim())))
                }
                RewardRule::RegexMatch { .. } => {
                    f64::from(u8::from(re.as_ref().is_some_and(|re| re.is_match(text))))
                }
                RewardRule::LengthPenalty { target } => {
                    let t = *target as f64;
                    -((tokens as f64 - t).max(0.0) / t)
                }
            })
            .collect()
    }

    pub fn weights(&self) -> Vec<f64> {
        self.rewards.iter().map(|(r, _)| r.weight).collect()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.rewards.iter().map(|(r, _)| r.name()).collect()
    }
}

/// `rewards/<name>/mean` for a builtin reward's name.
fn mean_metric(name: &str) -> &'static str {
    match name {
        "exact_match" => "rewards/exact_match/mean",
        "regex_match" => "rewards/regex_match/mean",
        _ => "rewards/length_penalty/mean",
    }
}

/// A prompt of the data: as written, its token ids, and the row's fields (what rewards read).
pub struct PromptRow {
    pub prompt: crate::data::rows::Side,
    pub ids: Vec<u32>,
    pub fields: Map<String, Json>,
}

/// A reward model scoring (prompt, completion text) pairs, with its weight in the total reward.
pub trait RewardModel {
    fn rewards(
        &self,
        items: &[(&crate::data::rows::Side, crate::data::rows::Side)],
    ) -> crate::error::Result<Vec<f64>>;
}

pub struct Grpo<'a> {
    pub prompts: Vec<PromptRow>,
    pub scorer: Scorer,
    pub tokenizer: &'a crate::data::tokenizer::TextTokenizer,
    pub stop: Vec<u32>,
    /// The frozen reference (β ≠ 0).
    pub reference: Option<Decoder>,
    /// A reward model's score, weighted, added to the reward functions'.
    pub judge: Option<(Box<dyn RewardModel + 'a>, f64)>,
    pub settings: GrpoSettings,
    pub top_p: f64,
    pub top_k: usize,
    rows: Vec<Vec<usize>>,
}

impl<'a> Grpo<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        prompts: Vec<PromptRow>,
        scorer: Scorer,
        tokenizer: &'a crate::data::tokenizer::TextTokenizer,
        stop: Vec<u32>,
        reference: Option<Decoder>,
        settings: GrpoSettings,
        top_p: f64,
        top_k: usize,
    ) -> Grpo<'a> {
        let rows = (0..prompts.len()).map(|i| vec![i]).collect();
        Grpo {
            prompts,
            scorer,
            tokenizer,
            stop,
            reference,
            judge: None,
            settings,
            top_p,
            top_k,
            rows,
        }
    }

    /// `num_generations` completions of each prompt (consecutive), sampled from `model`.
    fn rollouts(
        &self,
        model: &Decoder,
        rows: &[&[usize]],
        draw: u64,
    ) -> crate::error::Result<Vec<(usize, Rollout)>> {
        let g = self.settings.num_generations.max(1);
        let picked: Vec<usize> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let prompts: Vec<Vec<u32>> = picked
            .iter()
            .flat_map(|&i| std::iter::repeat_n(self.prompts[i].ids.clone(), g))
            .collect();
        let generation = Generation {
            max_new: self.settings.max_completion_length,
            stop: self.stop.clone(),
            sampling: Sampling::Sample {
                temperature: self.settings.temperature as f32,
                top_k: self.top_k,
                top_p: self.top_p as f32,
            },
        };
        let rollouts = super::completions::sample(model, prompts, draw, &generation)?;
        Ok(rollouts
            .into_iter()
            .enumerate()
            .map(|(k, r)| (picked[k / g], r))
            .collect())
    }

    /// One micro-batch's completions, sampled and scored: their advantages, the reference's
    /// log-probs (β ≠ 0) and the reward metrics.
    fn score(&self, model: &Decoder, rows: &[&[usize]], draw: u64) -> crate::error::Result<Scored> {
        let scored = self.rollouts(model, rows, draw)?;
        let weights = self.scorer.weights();
        let names = self.scorer.names();
        let mut per_func = vec![0.0; names.len()];
        let mut totals = Vec::with_capacity(scored.len());
        let mut texts = Vec::with_capacity(scored.len());
        for (row, r) in &scored {
            let kept: Vec<u32> = r
                .completion
                .iter()
                .copied()
                .filter(|t| !self.stop.contains(t))
                .collect();
            let text = self.tokenizer.inner.decode(&kept, true).unwrap_or_default();
            let values = self
                .scorer
                .score(&text, r.completion.len(), &self.prompts[*row].fields);
            for (sum, v) in per_func.iter_mut().zip(&values) {
                *sum += v;
            }
            totals.push(values.iter().zip(&weights).map(|(v, w)| v * w).sum::<f64>());
            texts.push(text);
        }
        let mut judged = None;
        if let Some((judge, weight)) = &self.judge {
            let items: Vec<_> = scored
                .iter()
                .zip(&texts)
                .map(|((row, _), t)| {
                    (
                        &self.prompts[*row].prompt,
                        crate::data::rows::Side::Text(t.clone()),
                    )
                })
                .collect();
            let scores = judge.rewards(&items)?;
            for (total, s) in totals.iter_mut().zip(&scores) {
                *total += weight * s;
            }
            judged = Some(scores.iter().sum::<f64>());
        }
        let (adv, stds) = advantages(
            &totals,
            self.settings.num_generations,
            self.settings.scale_rewards,
        );
        let rollouts: Vec<Rollout> = scored.into_iter().map(|(_, r)| r).collect();
        let reference = match (&self.reference, self.settings.beta != 0.0) {
            (Some(m), true) => Some(completion_logps(m, &rollouts, self.settings.temperature)?),
            _ => None,
        };
        let n = rollouts.len() as f64;
        let mean = totals.iter().sum::<f64>() / n.max(1.0);
        let std =
            (totals.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let count = |xs: &mut dyn Iterator<Item = bool>| xs.filter(|x| *x).count() as f64;
        let mut metrics = vec![
            Metric {
                name: "reward",
                sum: totals.iter().sum(),
                count: n,
            },
            Metric {
                name: "reward_std",
                sum: std,
                count: 1.0,
            },
            Metric {
                name: "frac_reward_zero_std",
                sum: count(&mut stds.iter().map(|s| s.abs() < 1e-8)),
                count: n,
            },
            Metric {
                name: "completions/mean_length",
                sum: rollouts.iter().map(|r| r.completion.len() as f64).sum(),
                count: n,
            },
            Metric {
                name: "completions/clipped_ratio",
                sum: count(&mut rollouts.iter().map(|r| !r.terminated)),
                count: n,
            },
        ];
        if let Some(sum) = judged {
            metrics.push(Metric {
                name: "rewards/reward_model/mean",
                sum,
                count: n,
            });
        }
        for (name, sum) in names.iter().zip(per_func) {
            metrics.push(Metric {
                name: mean_metric(name),
                sum,
                count: n,
            });
        }
        Ok(Scored {
            rollouts,
            advantages: adv,
            reference,
            metrics,
        })
    }

    /// The GRPO loss of scored completions, with the reward metrics; `old`: the log-probs they were
    /// sampled with, when an earlier update already trained on them.
    fn loss(
        &self,
        model: &Decoder,
        scored: &Scored,
        old: Option<&[Vec<f32>]>,
    ) -> crate::error::Result<MicroLoss> {
        let mut micro = rollout_loss(
            model,
            &scored.rollouts,
            &scored.advantages,
            scored.reference.as_deref(),
            old,
            &self.settings,
        )?;
        micro.metrics.extend(scored.metrics.iter().cloned());
        Ok(micro)
    }
}

impl Objective for Grpo<'_> {
    fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }

    fn batch_shape(&self, batch_size: usize) -> (usize, usize) {
        let longest = self.prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        (
            batch_size * self.settings.num_generations,
            longest + self.settings.max_completion_length,
        )
    }

    fn micro_batch(
        &self,
        model: &Decoder,
        rows: &[&[usize]],
        draw: u64,
    ) -> crate::error::Result<MicroLoss> {
        let scored = self.score(model, rows, draw)?;
        self.loss(model, &scored, None)
    }

    fn online(&self) -> Option<&dyn Online> {
        (self.settings.num_iterations > 1).then_some(self as &dyn Online)
    }
}

/// A micro-batch's sampled completions with what their loss needs.
struct Scored {
    rollouts: Vec<Rollout>,
    advantages: Vec<f64>,
    reference: Option<Vec<Vec<f32>>>,
    /// The reward metrics (TRL's names), the same for every update that trains on them.
    metrics: Vec<Metric>,
}

/// A step's micro-batches of completions, each with the log-probs it was sampled with.
struct Reused<'a> {
    scored: Vec<(Scored, Vec<Vec<f32>>)>,
    grpo: &'a Grpo<'a>,
}

impl Rollouts for Reused<'_> {
    fn count(&self) -> usize {
        self.scored.len()
    }

    fn micro_batch(&self, model: &Decoder, slots: &[usize]) -> crate::error::Result<MicroLoss> {
        let [slot] = slots else {
            return Err(crate::error::Error::Internal(
                "a GRPO micro-batch is one slot".into(),
            ));
        };
        let (scored, old) = &self.scored[*slot];
        self.grpo.loss(model, scored, Some(old))
    }

    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
}

/// `num_iterations` > 1: a step samples its micro-batches' completions once, then makes
/// `num_iterations` updates on them, each over the same micro-batches in the same order (as TRL
/// reuses its buffered generation batch).
impl Online for Grpo<'_> {
    fn epochs(&self) -> usize {
        self.settings.num_iterations
    }

    fn mini_batches(&self) -> usize {
        1
    }

    fn slots_per_micro_batch(&self, _batch_size: usize) -> usize {
        1
    }

    fn shuffle(&self) -> bool {
        false
    }

    fn sample<'s>(
        &'s self,
        model: &Decoder,
        rows: &[&[usize]],
        batch_size: usize,
        draw: &dyn Fn(usize) -> u64,
        _group: Option<&dyn Collective>,
    ) -> crate::error::Result<Box<dyn Rollouts + 's>> {
        let mut scored = Vec::new();
        // Each micro-batch samples from the seed it has with `num_iterations` 1.
        for (i, micro) in rows.chunks(batch_size.max(1)).enumerate() {
            let s = self.score(model, micro, draw(i))?;
            let old = completion_logps(model, &s.rollouts, self.settings.temperature)?;
            scored.push((s, old));
        }
        Ok(Box::new(Reused { scored, grpo: self }))
    }
}
