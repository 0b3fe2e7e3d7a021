//! Training: the optimizer (schedules, loop and checkpoints come with the training-core work).

pub mod optim;
