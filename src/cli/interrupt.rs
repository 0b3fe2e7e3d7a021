//! Ctrl-C during `ptl run`: the first stops the run gracefully (no new stage starts, running ones stop
//! at their next step boundary and save a checkpoint, tracking ends as KILLED); the second exits at once.

use crate::run::Control;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The exit code of an interrupted run, as shells report a process ended by SIGINT (128 + 2).
pub const EXIT_CODE: i32 = 130;

/// Installs the handler for this process (a second install is ignored, like the one of `ptl watch`).
pub fn install(control: Arc<Control>) {
    let presses = AtomicUsize::new(0);
    let _ = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupt: stopping after the current step of each running stage (a checkpoint is saved); press Ctrl-C again to exit at once"
            );
            control.stop_all();
        } else {
            std::process::exit(EXIT_CODE);
        }
    });
}
