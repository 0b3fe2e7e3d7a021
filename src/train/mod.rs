//! Training: the optimizer and the chunked loss (schedules, the loop and checkpoints come with the
//! training-core work).

pub mod loss;
pub mod optim;
