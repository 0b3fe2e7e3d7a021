//! `reward_model`: a Bradley-Terry reward model (a scalar head on the last token) trained on preference pairs.

use super::common;
use super::rules;
use super::schema::*;
use super::train_run::{Policy, TrainingParams};
use crate::data::encode::Encoded;
use crate::data::tokenizer::TextTokenizer;
use crate::lang::diag::Diag;
use crate::lang::types::{Format, Type};
use crate::model::decoder::Decoder;
use crate::run::context::RunContext;
use crate::train::reward::{self, RewardSettings, ScoredPair};

pub fn kind() -> Kind {
    let mut fields = common::inputs(
        &[Format::Preference],
        "preference rows: prompt, chosen, rejected",
    );
    fields.extend(common::training(1e-4, 1024));
    fields.push(float(
        "center_rewards_coefficient",
        0.0,
        "weight of the mean((r_c + r_r)^2) term that centers rewards (0.01 is a common choice)",
    ));
    Kind {
        version: 1,
        run: Some(run),
        plan_note: None,
        outside: None,
        name: "reward_model",
        summary: "Bradley-Terry reward model on preference pairs",
        fields,
        outputs: vec![
            output(
                "model",
                Type::RewardModel,
                "the reward model: base weights plus `score.weight`",
            ),
            output(
                "metrics",
                Type::Metrics,
                "metrics.jsonl: loss, accuracy, margin, mean_reward",
            ),
        ],
        refused: vec![],
        rules: vec![common::training_rules, rm_rules],
    }
}

fn rm_rules(s: &StageView, d: &mut Vec<Diag>) {
    rules::non_negative(s, d, "center_rewards_coefficient");
}

/// A plain-text row as the reward model reads it: prompt + completion + EOS (unless the text ends
/// with it) tokenized as one string with the tokenizer's specials, as TRL's RewardTrainer.
pub fn plain_sequence(
    tok: &TextTokenizer,
    prompt: &str,
    completion: &str,
) -> Result<Vec<u32>, String> {
    let text = crate::data::encode::joined_with_eos(tok, prompt, completion);
    Ok(tok.encode(&text, true)?.ids)
}

/// An encoded preference row as the reward model trains on it: prompt + completion as one sequence
/// (the encoder tokenizes them together, as TRL: a conversation rendered whole, text as prompt +
/// completion + EOS); `None` for a pair TRL filters out (either sequence longer than `max_len`).
pub fn scored_pair(e: Encoded, max_len: usize) -> Option<ScoredPair> {
    let Encoded::Pair {
        prompt_ids,
        chosen_ids,
        rejected_ids,
        truncated: false,
        margin,
        ..
    } = e
    else {
        return None;
    };
    let chosen = [&prompt_ids[..], &chosen_ids].concat();
    let rejected = [&prompt_ids[..], &rejected_ids].concat();
    (chosen.len() <= max_len && rejected.len() <= max_len).then_some(ScoredPair {
        chosen,
        rejected,
        margin,
    })
}

/// Reads every pair as whole sequences ([`scored_pair`]), puts a score head on the starting model
/// unless it has one, and trains Bradley–Terry with the shared loop.
fn run(ctx: &mut RunContext) -> crate::error::Result<()> {
    let model_dir = super::train_run::model_dir(ctx)?;
    let tok = TextTokenizer::load(&model_dir)?;
    let params: TrainingParams = ctx.typed()?;
    let pairs = super::preference_run::examples(ctx, &model_dir, "pairs", |e| {
        scored_pair(e, params.max_len)
    })?;
    let mut model = Decoder::load(&model_dir, ctx.device())?;
    let std = model.cfg.initializer_range as f32;
    model.add_score_head(params.seed ^ 0x5C0E, std, tok.pad_or_eos_id())?;
    let Policy {
        mut model,
        vars,
        tuning,
    } = super::train_run::tuned(ctx, model, params.seed)?;
    let objective = reward::bradley_terry(pairs, ctx.typed::<RewardSettings>()?);
    super::train_run::fit(
        ctx,
        &model,
        &vars,
        &objective,
        &params.hyper(&ctx.checkpoints),
    )?;
    super::train_run::save(ctx, &mut model, &tuning, &model_dir)
}
