//! Models: HF config and safetensors in, a decoder whose every op has a backward.

pub mod config;
pub mod decoder;
pub mod exp;
pub mod frozen;
pub mod fused;
pub mod gemm_amx;
pub mod gemm_bf16;
pub mod generation;
pub mod gguf;
pub mod lora;
pub mod lora_linear;
pub mod matmul;
pub mod merge;
pub mod nf4;
pub mod recompute;
pub mod rowsum;
pub mod score;
pub mod serving;
pub mod skinny;
pub mod swiglu;
pub mod tuning;
pub mod weights;
