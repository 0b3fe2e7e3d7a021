//! ptl: a language and interpreter for multi-stage LLM post-training pipelines.
//!
//! Data flows through the modules in this order: `lang` (parse, check) → `stages` (kinds and their
//! schemas) → `cli` (the commands).

pub mod cli;
pub mod lang;
pub mod stages;
