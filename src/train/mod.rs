//! Training: the supervised loop, its checkpoints, packing, the optimizer, learning-rate schedules,
//! gradient clipping, the chunked loss, and the collectives of data-parallel workers.

pub mod adamw_cpu;
pub mod checkpoint;
pub mod clip;
pub mod collective;
pub mod completions;
pub mod data_parallel;
pub mod grpo;
pub mod head_grad;
pub mod kto;
pub mod logps;
pub mod loss;
pub mod memory;
pub mod metrics_log;
pub mod objective;
pub mod optim;
pub mod pack;
pub mod ppo;
pub mod ppo_gather;
pub mod ppo_rollouts;
pub mod preference;
pub mod reward;
pub mod ring;
pub mod rollouts;
pub mod schedule;
pub mod supervised;
pub mod target_logps;
pub mod trainer;
