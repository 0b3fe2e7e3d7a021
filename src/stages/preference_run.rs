//! What the preference kinds (`dpo`, `simpo`, `orpo`, `reward_model`, `kto`) share when they run:
//! their rows, encoded as TRL encodes them, and training the policy on an objective.

use super::train_run::Policy;
use crate::data::artifact::{self, DataSpec};
use crate::data::encode::Encoded;
use crate::data::tokenizer::TextTokenizer;
use crate::run::context::RunContext;
use crate::train::objective::Objective;
use crate::train::preference::Pair;
use std::path::Path;

/// The stage's rows encoded with the model's tokenizer, each turned into what the objective trains on
/// by `pick` (`None`: dropped, e.g. too long). Logs how many `what` are left and why the others went;
/// none left is [`crate::error::Error::AllRowsDropped`].
pub fn examples<T>(
    ctx: &RunContext,
    model_dir: &Path,
    what: &str,
    mut pick: impl FnMut(Encoded) -> Option<T>,
) -> crate::error::Result<Vec<T>> {
    let spec = DataSpec {
        tokenizer: model_dir.to_path_buf(),
        ..super::reference_logps::data_spec(ctx.params, &ctx.inputs)
            .ok_or("the stage has no dataset in `data`")?
    };
    let tokenized = artifact::cached(ctx.store, &spec)?;
    super::common::report_malformed(ctx, &tokenized.problems)?;
    let total = tokenized.rows.len();
    let kept: Vec<T> = tokenized
        .rows
        .into_iter()
        .filter_map(|r| r.result.ok().and_then(&mut pick))
        .collect();
    (ctx.log)(&format!(
        "{} {what} to train on ({} dropped: longer than max_len; {} malformed)",
        kept.len(),
        total - kept.len(),
        tokenized.problems.len()
    ));
    if kept.is_empty() {
        return Err(crate::error::Error::AllRowsDropped {
            rows: total,
            max_len: spec.opts.max_len,
            shortest: None,
        });
    }
    Ok(kept)
}

/// The stage's preference rows as pairs (prompt with the generation prompt; each completion as the
/// template renders it after the prompt), the tokenizer being the model's. Pairs whose prompt alone
/// fills `max_len` are dropped and counted, as TRL does.
pub fn pairs(ctx: &RunContext, model_dir: &Path) -> crate::error::Result<Vec<Pair>> {
    examples(ctx, model_dir, "pairs", |e| match e {
        Encoded::Pair {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            ..
        } => Some(Pair {
            prompt: prompt_ids,
            chosen: chosen_ids,
            rejected: rejected_ids,
        }),
        _ => None,
    })
}

/// The pairs as TRL's CPO and ORPO trainers tokenize them: as [`pairs`], then every completion ends
/// with the EOS token (their preprocessing appends it when the template's rendering does not end
/// with it; for Qwen3 after `<|im_end|>\n`).
pub fn pairs_with_eos(ctx: &RunContext, model_dir: &Path) -> crate::error::Result<Vec<Pair>> {
    let mut pairs = pairs(ctx, model_dir)?;
    if let Some(eos) = TextTokenizer::load(model_dir)?.eos_id() {
        for p in &mut pairs {
            for completion in [&mut p.chosen, &mut p.rejected] {
                if completion.last() != Some(&eos) {
                    completion.push(eos);
                }
            }
        }
    }
    Ok(pairs)
}

/// Trains the stage's policy on `objective` with the shared loop and writes its outputs.
pub fn train(
    ctx: &mut RunContext,
    model_dir: &Path,
    objective: &dyn Objective,
) -> crate::error::Result<()> {
    let hyper = super::train_run::hyper(ctx)?;
    let Policy {
        mut model,
        vars,
        tuning,
    } = super::train_run::policy(ctx, model_dir, hyper.seed)?;
    super::train_run::fit(ctx, &model, &vars, objective, &hyper)?;
    super::train_run::save(ctx, &mut model, &tuning, model_dir)
}
