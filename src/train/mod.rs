//! Training: the optimizer, learning-rate schedules, gradient clipping and the chunked loss (the loop
//! and checkpoints come with the training-core work).

pub mod clip;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod supervised;
