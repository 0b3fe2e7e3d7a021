//! Models: HF config and safetensors in, a decoder whose every op has a backward.

pub mod config;
pub mod decoder;
pub mod frozen;
pub mod generation;
pub mod gguf;
pub mod lora;
pub mod merge;
pub mod nf4;
pub mod recompute;
pub mod score;
pub mod serving;
pub mod tuning;
pub mod weights;
