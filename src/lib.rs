//! ptl: a language and interpreter for multi-stage LLM post-training pipelines.
//!
//! Data flows through the modules in this order: `lang` (parse, check) → `plan` (DAG, keys) → `store`
//! → `run` (executor) → `stages` (kinds: schemas and runs) → `model`, `data`; `cli` holds the commands.

/// mimalloc reuses freed memory instead of returning big blocks to the OS: training allocates many
/// large temporaries per step, and glibc's fresh mmap'd pages cost page faults and zeroing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cli;
pub mod data;
pub mod lang;
pub mod model;
pub mod plan;
pub mod run;
pub mod stages;
pub mod store;
pub mod train;
