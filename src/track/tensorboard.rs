//! The TensorBoard sink: one event file per stage under `<dir>/<pipeline>/<stage>/`, written by
//! tensorboard-rs behind guards, since that crate panics (`expect`) on any I/O error.

use super::SinkState;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tensorboard_rs::summary_writer::SummaryWriter;

/// One stage's event file; inert once the sink is off.
pub(crate) struct StageWriter {
    writer: Option<SummaryWriter>,
    dir: PathBuf,
    state: Arc<SinkState>,
}

impl StageWriter {
    /// Creates `<root>/<pipeline>/<stage>/` and an event file in it (names are made safe as path
    /// segments). A directory that cannot be made or written turns the sink off, with the one warning.
    pub fn open(root: &Path, pipeline: &str, stage: &str, state: Arc<SinkState>) -> StageWriter {
        let dir = root.join(segment(pipeline)).join(segment(stage));
        let mut w = StageWriter {
            writer: None,
            dir,
            state,
        };
        if w.state.is_off() {
            return w;
        }
        if let Err(why) = writable(&w.dir) {
            w.state.fail(&why);
            return w;
        }
        avoid_reused_name(&w.dir);
        match catch_unwind(AssertUnwindSafe(|| SummaryWriter::new(&w.dir))) {
            Ok(writer) => w.writer = Some(writer),
            Err(_) => w
                .state
                .fail(&format!("cannot open an event file in {}", w.dir.display())),
        }
        w
    }

    pub fn log(&mut self, step: u64, metrics: &[(&str, f64)]) {
        if self.state.is_off() {
            self.close();
            return;
        }
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        // tensorboard-rs stores the step as i64 (via usize).
        let step = usize::try_from(step.min(i64::MAX as u64)).unwrap_or(usize::MAX);
        let wrote = catch_unwind(AssertUnwindSafe(|| {
            for &(tag, value) in metrics {
                writer.add_scalar(tag, value as f32, step);
            }
        }));
        if wrote.is_err() {
            self.writer = None; // its writing thread is gone: dropping it would panic again
            self.state.fail(&format!(
                "cannot write the event file in {}",
                self.dir.display()
            ));
        }
    }

    /// Flushes and closes the file (tensorboard-rs joins its writing thread).
    pub fn close(&mut self) {
        if let Some(writer) = self.writer.take() {
            if catch_unwind(AssertUnwindSafe(move || drop(writer))).is_err() {
                self.state.fail(&format!(
                    "cannot write the event file in {}",
                    self.dir.display()
                ));
            }
        }
    }
}

impl Drop for StageWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// A name as one path segment: `/`, `\`, NUL and other control characters become `_`, as do `.`
/// and `..` and the empty name.
fn segment(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => s,
    }
}

/// Makes the directory and checks that a file can be created in it (tensorboard-rs creates its file
/// on a thread of its own, where a failure could only panic).
fn writable(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".ptl-probe-{}", crate::store::unique_suffix()));
    fs::File::create(&probe).map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// tensorboard-rs names its file `events.out.tfevents.<unix seconds>.<host>.<pid>.0` and truncates
/// a file of that name: when this process opened one in `dir` during the current second (a stage run
/// again at once), wait for the next second.
fn avoid_reused_name(dir: &Path) {
    let suffix = format!(".{}.0", std::process::id());
    for _ in 0..3 {
        let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return;
        };
        let prefix = format!("events.out.tfevents.{:010}.", now.as_secs());
        let taken = fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(&prefix) && name.ends_with(&suffix)
            })
        });
        if !taken {
            return;
        }
        std::thread::sleep(Duration::from_millis(1005 - u64::from(now.subsec_millis())));
    }
}
