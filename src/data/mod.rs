//! Datasets: JSONL readers and format detection (chat templates and tokenization come later).

pub mod jsonl;
