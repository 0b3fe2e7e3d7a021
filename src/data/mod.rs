//! Datasets: JSONL readers and format detection (chat templates and tokenization come later).

pub mod artifact;
pub mod encode;
pub mod jsonl;
pub mod rows;
pub mod template;
pub mod tokenizer;
