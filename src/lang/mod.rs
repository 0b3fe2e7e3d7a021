//! The .ptl language: parsing, checking, formatting and diagnostics.

pub mod ast;
pub mod check;
pub mod diag;
pub mod format;
pub mod parse;
pub mod pipeline;
pub mod scan;
pub mod settings;
pub mod source;
pub mod stdlib;
pub mod types;
pub mod value;
