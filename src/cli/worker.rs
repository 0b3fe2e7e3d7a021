//! `ptl worker SPEC` (hidden): one process of a data-parallel stage. It checks the same pipeline as
//! the `ptl run` that started it, joins the group (`MASTER_ADDR`, `MASTER_PORT`, `RANK`,
//! `WORLD_SIZE`), runs the stage's own code with the group in its context, and reports on stdout.
//! Worker 0 writes the outputs and checkpoints; the others write into scratch folders. A `stop`
//! line on stdin (or stdin closing: the launcher is gone) stops it at the next step boundary; its
//! own SIGINT is ignored, since the launcher passes a Ctrl-C on.

use crate::error::{Error, Relayed};
use crate::lang::check::check_file;
use crate::plan::compute::Compute;
use crate::run::context::RunContext;
use crate::run::workers::{collective_timeout, send, Message, Spec};
use crate::store::Store;
use crate::train::ring::{Membership, Ring};
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub fn main(spec: &Path) -> i32 {
    let _ = ctrlc::set_handler(|| {});
    match run(spec) {
        Ok(()) => 0,
        Err(e) => {
            send(&Message::Error(Relayed::of(&e)));
            match e {
                Error::Cancelled => super::interrupt::EXIT_CODE,
                _ => 1,
            }
        }
    }
}

fn run(spec_path: &Path) -> crate::error::Result<()> {
    let mut spec: Spec = std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            Error::Workers(format!("cannot read the spec {}: {e}", spec_path.display()))
        })?;
    let membership = Membership::from_env().map_err(Error::Workers)?;
    let rank = membership.rank;
    let cancel: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        cancel.store(true, Ordering::Relaxed);
    });
    let checked = check_file(&spec.file, &spec.overrides);
    let p = checked.pipeline.ok_or_else(|| {
        Error::Other(format!(
            "{} no longer checks: it changed while the stage ran",
            spec.file.display()
        ))
    })?;
    let id = p.stage_id(&spec.stage).ok_or_else(|| {
        Error::Other(format!(
            "the pipeline no longer has the stage `{}`",
            spec.stage
        ))
    })?;
    let params_json = p.params_json(id);
    if params_json != spec.params {
        return Err(Error::Other(format!(
            "stage `{}` of {} changed while it ran: run again",
            spec.stage,
            spec.file.display()
        )));
    }
    let stage = &p.stages[id];
    let compute = Compute::from_config(&p.config)
        .and_then(|c| c.per_stage(&p))
        .map_err(Error::Other)?
        .swap_remove(id);
    let run = stage
        .kind
        .run
        .ok_or_else(|| Error::Internal("a stage kind that cannot run was started".into()))?;
    // On another node than the launcher (placed by Ray), a store of its own with the inputs.
    let own = if spec.own_store {
        Some(super::worker_store::open(
            &mut spec,
            &p,
            rank,
            &membership.token,
        )?)
    } else {
        None
    };
    let launcher_store = Store::at(&spec.store);
    let store = own.as_ref().map_or(&launcher_store, |own| &own.store);
    let ring = Ring::join(&membership, collective_timeout())?;
    let first = rank == 0;
    let (out, run_dir) = if first {
        (spec.out.clone(), spec.run_dir.clone())
    } else {
        let own = spec.scratch.join(format!("worker-{rank}"));
        (own.join("out"), own.join("run"))
    };
    for dir in [&out, &run_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("cannot create {}: {e}", dir.display())))?;
    }
    let progress = |step: u64, total: u64, note: &str| {
        if first {
            send(&Message::Progress {
                step,
                total,
                note: note.to_string(),
            });
        }
    };
    let log = |line: &str| {
        if first {
            send(&Message::Log {
                line: line.to_string(),
            });
        }
    };
    let tracker = if first {
        crate::track::StageTracker::relayed(Box::new(|step, values| {
            send(&Message::Metrics {
                step,
                values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })
        }))
    } else {
        crate::track::StageTracker::none()
    };
    let mut ctx = RunContext {
        compute: &compute,
        stage: &stage.name,
        params: &stage.params,
        params_json,
        tracker,
        inputs: spec.inputs.clone(),
        out,
        run_dir,
        checkpoints: spec.checkpoints.clone(),
        store,
        base_dir: p.dir().to_path_buf(),
        cancel,
        progress: &progress,
        log: &log,
        group: Some(&ring),
    };
    let result = crate::plan::compute::on_pool(|| run(&mut ctx));
    if result.is_ok() && ctx.cancelled() {
        return Err(Error::Cancelled);
    }
    result
}
