//! ptl: a language and interpreter for multi-stage LLM post-training pipelines.
//!
//! Data flows through the modules in this order: `lang` (parse, check) → `plan` (DAG, keys) → `store`
//! → `run` (executor) → `stages` (kinds: schemas and runs) → `model`, `data`; `cli` holds the commands.

/// mimalloc reuses freed memory instead of returning big blocks to the OS: training allocates many
/// large temporaries per step, and glibc's fresh mmap'd pages cost page faults and zeroing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's option enum (default 1000 ms in its options.c; a test checks it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process instead of returning it to the OS after a second: a training step
/// frees and re-allocates the same large activations, and fresh pages cost a fault and zeroing each
/// (about a third of a CPU step before this). Memory stays at its peak, which a run reaches anyway.
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option of the allocator; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_we_mean() {
        // SAFETY: reads an integer option.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // 1000 is purge_delay's default in mimalloc 3 (no other option defaults to it); -1 once set.
        assert!(
            v == 1000 || v == -1,
            "mimalloc option {} is not purge_delay (value {v})",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}

pub mod cli;
pub mod data;
pub mod error;
pub mod lang;
pub mod model;
pub mod plan;
pub mod run;
pub mod serve;
pub mod stages;
pub mod store;
pub mod track;
pub mod train;
