//! Stage kinds: one file per kind with its schema (fields, outputs, rules) and, where built, its run.

pub mod common;
pub mod dpo;
pub mod eval;
pub mod eval_reward;
pub mod export;
pub mod grpo;
pub mod init;
pub mod kto;
pub mod merge;
pub mod orpo;
pub mod ppo;
pub mod preference_run;
pub mod pt;
pub mod reference_logps;
pub mod reward_model;
pub mod rules;
pub mod schema;
pub mod sft;
pub mod simpo;
#[cfg(feature = "test-kinds")]
pub mod test_step;
pub mod train_run;

use schema::Kind;
use std::sync::OnceLock;

/// Every stage kind, in the order `ptl doc` lists them.
pub fn kinds() -> &'static [Kind] {
    static KINDS: OnceLock<Vec<Kind>> = OnceLock::new();
    KINDS.get_or_init(|| {
        vec![
            init::kind(),
            pt::kind(),
            sft::kind(),
            reward_model::kind(),
            dpo::kind(),
            simpo::kind(),
            orpo::kind(),
            kto::kind(),
            ppo::kind(),
            grpo::kind(),
            eval::kind(),
            merge::kind(),
            export::kind(),
            #[cfg(feature = "test-kinds")]
            test_step::kind(),
            #[cfg(feature = "test-kinds")]
            test_step::unbuilt(),
        ]
    })
}

/// The kinds users see in `ptl doc`, docs and help lines (test builds add test-only kinds).
pub fn user_kinds() -> impl Iterator<Item = &'static Kind> {
    kinds().iter().filter(|k| !k.name.starts_with("test_"))
}

pub fn kind(name: &str) -> Option<&'static Kind> {
    kinds().iter().find(|k| k.name == name)
}
