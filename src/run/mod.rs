//! The executor: runs what is stale in dependency order, independent stages in parallel, each
//! stage's result committed to the store and recorded in the lock file as soon as it finishes.

pub mod context;
pub mod event;
pub mod outcome;
pub mod ray;
pub mod ray_workers;
pub mod remote;
pub mod schedule;
pub mod tracking;
pub mod watch;
pub mod workers;

use crate::data::jsonl;
use crate::error::Error;
use crate::lang::pipeline::Pipeline;
use crate::lang::value::{StageId, Value};
use crate::plan::key::{stage_key, KeyError, StageKey};
use crate::plan::lockfile::{LockFile, LockedStage};
use crate::plan::Plan;
use crate::store::hash::HashCache;
use crate::store::{Manifest, Store};
use crate::track;
use context::RunContext;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Instant;
use tracking::LazyTracking;

pub use event::Event;
pub use outcome::{Failure, Outcome, Summary};
use schedule::{Consider, Keyed, Scheduler, StageSpec};

pub struct Options {
    pub jobs: usize,
    pub keep_going: bool,
    /// Run only this stage (its upstream must be in the store).
    pub only: Option<String>,
    /// Run this stage and its downstream (their upstream must be in the store).
    pub from: Option<String>,
    /// Fail instead of changing the lock file.
    pub locked: bool,
    /// Compute stages as jobs on this Ray cluster (results come back through the remote store).
    pub ray: Option<std::sync::Arc<ray::RayExecutor>>,
    /// The run's `--set` overrides (the worker processes of a data-parallel stage check the
    /// pipeline with them).
    pub overrides: Vec<String>,
}

/// A training step's progress note: `loss 1.2345 · 9.1k tok/s`.
pub fn training_note(loss: f64, tokens_per_s: f64) -> String {
    let rate = match tokens_per_s {
        r if r >= 999_950.0 => format!("{:.1}M", r / 1e6),
        r if r >= 999.95 => format!("{:.1}k", r / 1e3),
        r => format!("{r:.0}"),
    };
    format!("loss {loss:.4} · {rate} tok/s")
}

pub type Report<'a> = &'a (dyn Fn(&Event) + Sync);

/// Steering a run from outside (watch mode, Ctrl-C): stop starting stages, cancel running ones.
#[derive(Default)]
pub struct Control {
    /// Once set, no new stage starts.
    pub stop: AtomicBool,
    /// The cancel flag of each running stage, by key.
    pub running: std::sync::Mutex<BTreeMap<String, std::sync::Arc<AtomicBool>>>,
}

impl Control {
    /// Cancels every running stage whose key is not in `keep`; returns the keys cancelled.
    pub fn cancel_unless(&self, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut cancelled = Vec::new();
        for (key, flag) in running.iter() {
            if !keep(key) {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                cancelled.push(key.clone());
            }
        }
        cancelled
    }

    pub fn stop_all(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cancel_unless(&|_| false);
    }
}

/// What every stage of one run shares.
struct Shared<'a> {
    p: &'a Pipeline,
    store: &'a Store,
    report: Report<'a>,
    tracking: &'a LazyTracking,
    /// Each stage's device and dtype.
    computes: &'a [crate::plan::compute::Compute],
    ray: Option<&'a ray::RayExecutor>,
    overrides: &'a [String],
}

/// One stage to execute.
struct Job<'a> {
    id: StageId,
    key: &'a StageKey,
    /// The store keys of the stages keyed so far (for upstream output paths).
    keys: &'a [Option<String>],
    cancel: &'a AtomicBool,
    /// Not selected by --only/--from: only its remote entry may be used, never computed.
    fetch_only: bool,
}

/// Where a finished stage's entry came from.
enum Origin {
    Computed,
    /// Another `ptl run` on this store committed it while this one waited for the entry's lock.
    OtherRun,
    /// Downloaded from the remote store.
    Remote,
}

/// Runs one stage into the store; another process holding the entry's lock is waited for, and so is
/// another machine computing it for the remote store.
fn execute(shared: &Shared, job: Job) -> Result<(Manifest, Origin), Error> {
    let Job {
        id,
        key,
        keys,
        cancel,
        fetch_only,
    } = job;
    let Shared {
        p,
        store,
        report,
        tracking,
        computes,
        ray,
        overrides,
    } = *shared;
    let stage = &p.stages[id];
    let io = |e: std::io::Error| Error::Store(format!("store error: {e}"));
    let _guard = store.lock(&key.key).map_err(io)?;
    // In the store (and, for a kind that also writes outside it, that copy intact): nothing to do.
    if store.has(&key.key) && crate::plan::stale_outside(p, id, store, &key.key).is_none() {
        return store
            .manifest(&key.key)
            .map(|m| (m, Origin::OtherRun))
            .map_err(io);
    }
    let log = |line: &str| {
        report(&Event::StageLog {
            stage: stage.name.clone(),
            line: line.to_string(),
        })
    };
    // A kind that also writes outside the store (export) always runs here.
    let remote = store
        .remote
        .as_ref()
        .filter(|_| stage.kind.outside.is_none());
    let workers = stage.workers();
    if let (Some(ray), Some(r)) = (ray, remote) {
        let job = ray::StageJob {
            stage: &stage.name,
            workers,
            key: &key.key,
            cancel,
            report,
        };
        return on_ray(ray, r, store, &job, fetch_only, &log);
    }
    let _lease = match remote {
        Some(r) => match remote::before(r, store, &key.key, cancel, &log)? {
            remote::Before::Fetched(manifest) => return Ok((manifest, Origin::Remote)),
            remote::Before::Compute(_) if fetch_only => return Err(remote::not_fetched()),
            remote::Before::Compute(lease) => lease,
        },
        None => None,
    };
    // Malformed rows stop the stage before it starts, with file:line, unless the stage skips them
    // (then it reads, counts and logs them itself).
    let skip = stage.params.get("skip_malformed") == Some(&Value::Bool(true));
    for value in stage.params.values() {
        if let Value::Dataset { path, format } = value {
            if !skip {
                jsonl::validate(&path.resolved, *format).map_err(|problems| {
                    format!(
                        "{}\n(fix these rows, or set `skip_malformed = true` on the stage to skip and count them)",
                        problems.join("\n")
                    )
                })?;
            }
        }
    }
    let run = stage
        .kind
        .run
        .ok_or_else(|| Error::Internal("a stage kind that cannot run was started".into()))?;
    let inputs = crate::plan::inputs::stage_inputs(&stage.params, store, keys);
    let pending = store.begin(&key.key).map_err(io)?;
    let progress = |step: u64, total: u64, note: &str| {
        report(&Event::StageProgress {
            stage: stage.name.clone(),
            step,
            total,
            note: note.to_string(),
        })
    };
    let params_json = p.params_json(id);
    let tracker = tracking.stage(&stage.name, stage.kind.name, &key.key, &params_json);
    let mut ctx = RunContext {
        compute: &computes[id],
        stage: &stage.name,
        params: &stage.params,
        params_json,
        tracker,
        inputs,
        out: pending.out.clone(),
        run_dir: pending.dir.clone(),
        checkpoints: store.checkpoint_dir(&key.key),
        store,
        base_dir: p.dir().to_path_buf(),
        cancel,
        progress: &progress,
        log: &log,
        group: None,
    };
    let started = Instant::now();
    let mut result = if workers > 1 {
        let launch = workers::Launch {
            file: &p.file,
            overrides,
            store: &store.root,
        };
        workers::train(&mut ctx, &launch, workers)
    } else {
        crate::plan::compute::on_pool(|| run(&mut ctx))
    };
    if result.is_ok() && cancel.load(std::sync::atomic::Ordering::Relaxed) {
        result = Err(Error::Cancelled);
    }
    ctx.tracker.finish(match &result {
        Ok(()) => track::Status::Finished,
        Err(Error::Cancelled) => track::Status::Killed,
        Err(_) => track::Status::Failed,
    });
    if let Err(e) = result {
        store.abort(pending);
        return Err(e);
    }
    let manifest = Manifest {
        key: key.key.clone(),
        stage: stage.name.clone(),
        kind: stage.kind.name.to_string(),
        kind_version: stage.kind.version,
        ptl_version: env!("CARGO_PKG_VERSION").to_string(),
        key_inputs: key.key_json.clone(),
        outputs: BTreeMap::new(),
        files: BTreeMap::new(),
        seconds: started.elapsed().as_secs_f64(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let outputs: Vec<&str> = stage.kind.outputs.iter().map(|o| o.name).collect();
    let committed = store
        .commit(pending, manifest, &outputs)
        .map_err(|e| Error::Store(format!("cannot commit the outputs: {e}")))?;
    let _ = std::fs::remove_dir_all(&ctx.checkpoints);
    if let Some(r) = remote {
        remote::after(r, store, &key.key, &log);
    }
    Ok((committed, Origin::Computed))
}

/// A stage computed on the Ray cluster: its remote entry if there is one already, else a job whose
/// entry is downloaded when it succeeds.
fn on_ray(
    ray: &ray::RayExecutor,
    r: &crate::store::remote::Remote,
    store: &Store,
    job: &ray::StageJob,
    fetch_only: bool,
    log: &dyn Fn(&str),
) -> Result<(Manifest, Origin), Error> {
    // The entry when the remote store has a good one (a bad one is said in the log).
    let fetch = || -> Result<Option<Manifest>, Error> {
        let Some(m) = r
            .manifest(job.key)
            .map_err(|e| Error::Store(format!("store error: {e}")))?
        else {
            return Ok(None);
        };
        match remote::download(r, store, &m, log) {
            Ok(()) => remote::local_manifest(store, job.key).map(Some),
            Err(e) => {
                log(&format!("{e}"));
                Ok(None)
            }
        }
    };
    if let Some(m) = fetch()? {
        return Ok((m, Origin::Remote));
    }
    if fetch_only {
        return Err(remote::not_fetched());
    }
    ray.run(job)?;
    match fetch()? {
        Some(m) => Ok((m, Origin::Computed)),
        None => Err(Error::Other(format!(
            "the Ray job succeeded but its entry is not in the remote store {}: do the workers \
             reach the same remote store?",
            r.url()
        ))),
    }
}

/// The stages a run may execute (`--only`, `--from`); `None` means all.
fn selection(p: &Pipeline, opts: &Options) -> Result<Option<Vec<bool>>, String> {
    let find = |name: &str| {
        p.stage_id(name).ok_or_else(|| {
            let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
            format!("no stage named `{name}`; stages: {}", names.join(", "))
        })
    };
    if let Some(only) = &opts.only {
        let id = find(only)?;
        return Ok(Some((0..p.stages.len()).map(|i| i == id).collect()));
    }
    if let Some(from) = &opts.from {
        let id = find(from)?;
        let mut sel = vec![false; p.stages.len()];
        sel[id] = true;
        for &s in &crate::plan::topo_order(p) {
            if p.stages[s].deps.iter().any(|d| sel[*d]) {
                sel[s] = true;
            }
        }
        return Ok(Some(sel));
    }
    Ok(None)
}

pub struct Run<'a> {
    pub pipeline: &'a Pipeline,
    pub store: &'a Store,
    pub lock_path: PathBuf,
}

impl Run<'_> {
    /// Records a finished stage in the lock file (written only when its entry changes) and links
    /// its outputs. `known` is this run's copy of the lock file.
    fn record(
        &self,
        known: &mut LockFile,
        name: &str,
        id: StageId,
        key: &StageKey,
        manifest: &Manifest,
    ) -> Result<(), String> {
        let p = self.pipeline;
        let io = |e: std::io::Error| format!("cannot update {}: {e}", self.lock_path.display());
        let entry = LockedStage {
            kind: p.stages[id].kind.name.to_string(),
            kind_version: p.stages[id].kind.version,
            key: key.key.clone(),
            params: p.params_json(id),
            inputs: key.inputs.clone(),
            outputs: manifest.outputs.clone(),
        };
        if known.stages.get(name) != Some(&entry) {
            // Another run may have written the file since: merge into what is on disk now.
            let _guard = self
                .store
                .lock(&format!(
                    "lockfile-{}",
                    blake3::hash(self.lock_path.to_string_lossy().as_bytes()).to_hex()
                ))
                .map_err(io)?;
            let mut lock = LockFile::load(&self.lock_path).map_err(io)?;
            lock.version = 1;
            lock.stages.insert(name.to_string(), entry);
            lock.save(&self.lock_path).map_err(io)?;
            *known = lock;
        }
        self.store
            .link(&p.name, name, &key.key)
            .map_err(|e| format!("cannot link the outputs of {name}: {e}"))?;
        Ok(())
    }

    /// Runs the pipeline; `report` gets one line per event. The scheduler decides, this applies.
    pub fn run(
        &self,
        opts: &Options,
        control: &Control,
        report: Report,
    ) -> Result<Summary, String> {
        let p = self.pipeline;
        let store = self.store;
        let mut cache = HashCache::load(&store.root);
        let lock = LockFile::load(&self.lock_path).map_err(|e| e.to_string())?;
        store
            .register(&self.lock_path)
            .map_err(|e| format!("store error: {e}"))?;
        let _ = store.clean_tmp(false);
        let plan = Plan::make(p, store, &mut cache, &lock)?;
        let mut known = lock.clone();
        if opts.locked {
            locked_check(p, &plan, &lock)?;
        }
        let selected = selection(p, opts)?;
        let upstream_of_selected = match &selected {
            Some(sel) => upstream_of(p, sel),
            None => vec![false; p.stages.len()],
        };
        let specs = p
            .stages
            .iter()
            .enumerate()
            .map(|(id, s)| StageSpec {
                name: s.name.clone(),
                deps: s.deps.clone(),
                selected: selected.as_ref().is_none_or(|sel| sel[id]),
                cannot_run: crate::plan::cannot_run(s.kind),
            })
            .collect();
        let mut sched = Scheduler::new(specs, plan.order.clone(), opts.jobs, opts.keep_going);
        let n = p.stages.len();
        let mut runs = Runs {
            stage_keys: vec![None; n],
            manifests: vec![None; n],
            outcomes: vec![None; n],
        };
        let lazy_tracking = LazyTracking::new(p);
        if plan
            .stages
            .iter()
            .any(|s| s.status == crate::plan::Status::Run)
        {
            for to in lazy_tracking.describe() {
                report(&Event::Tracking { to });
            }
        }
        let shared = &Shared {
            p,
            store,
            report,
            tracking: &lazy_tracking,
            computes: &plan.computes,
            ray: opts.ray.as_deref(),
            overrides: &opts.overrides,
        };
        let settle = |runs: &mut Runs, id: StageId, outcome: Outcome| {
            report(&Event::finished(&p.stages[id].name, &outcome));
            runs.outcomes[id] = Some(outcome);
        };
        let (tx, rx) = mpsc::channel::<(StageId, Result<(Manifest, Origin), Error>, f64)>();
        std::thread::scope(|scope| -> Result<(), String> {
            loop {
                if control.stop.load(std::sync::atomic::Ordering::SeqCst) {
                    sched.stop();
                }
                let mut progressed = false;
                for id in sched.order() {
                    let name = &p.stages[id].name;
                    match sched.consider(id) {
                        Consider::Nothing => continue,
                        Consider::Settled(outcome) => {
                            progressed = true;
                            settle(&mut runs, id, outcome);
                            continue;
                        }
                        Consider::NeedKey => {}
                    }
                    let upstream = |s: StageId, output: &str| {
                        runs.manifests[s]
                            .as_ref()
                            .and_then(|m: &Manifest| m.outputs.get(output).cloned())
                    };
                    let key = match stage_key(p, id, &plan.computes[id], &mut cache, &upstream) {
                        Ok(k) => k,
                        Err(KeyError::Input(label, e)) => {
                            progressed = true;
                            let failure = Failure::plain(format!("cannot read input {label}: {e}"));
                            let outcome = sched.fail(id, failure);
                            settle(&mut runs, id, outcome);
                            continue;
                        }
                        Err(KeyError::Upstream(_)) => continue,
                    };
                    progressed = true;
                    if opts.locked && lock.stages.get(name).is_some_and(|l| l.key != key.key) {
                        let failure =
                            Failure::plain("--locked: its key differs from the lock file");
                        let outcome = sched.fail(id, failure);
                        settle(&mut runs, id, outcome);
                        continue;
                    }
                    let cached = store.has(&key.key)
                        && crate::plan::stale_outside(p, id, store, &key.key).is_none();
                    // Upstream of --only/--from and built by another machine: downloaded.
                    let chosen = selected.as_ref().is_none_or(|sel| sel[id]);
                    let in_remote = !cached
                        && !chosen
                        && upstream_of_selected[id]
                        && p.stages[id].kind.outside.is_none()
                        && store
                            .remote
                            .as_ref()
                            .is_some_and(|r| matches!(r.manifest(&key.key), Ok(Some(_))));
                    match sched.keyed(id, cached, in_remote) {
                        Keyed::Wait => {}
                        Keyed::Settled(outcome) => settle(&mut runs, id, outcome),
                        Keyed::Cached => {
                            let m = store
                                .manifest(&key.key)
                                .map_err(|e| format!("store error: {e}"))?;
                            self.record(&mut known, name, id, &key, &m)?;
                            runs.manifests[id] = Some(m);
                            runs.stage_keys[id] = Some(key);
                            settle(&mut runs, id, Outcome::Cached);
                        }
                        Keyed::Start => {
                            // Registered before it is announced, and the stop flag read again after: a
                            // stop that lands between the check above and here still cancels it.
                            let flag = std::sync::Arc::new(AtomicBool::new(false));
                            control
                                .running
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(key.key.clone(), flag.clone());
                            if control.stop.load(std::sync::atomic::Ordering::SeqCst) {
                                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            report(&Event::StageStarted {
                                stage: name.clone(),
                            });
                            runs.stage_keys[id] = Some(key.clone());
                            let tx = tx.clone();
                            let keys_now = runs.keys();
                            scope.spawn(move || {
                                let started = Instant::now();
                                let job = Job {
                                    id,
                                    key: &key,
                                    keys: &keys_now,
                                    cancel: &flag,
                                    fetch_only: !chosen,
                                };
                                let result = execute(shared, job);
                                control
                                    .running
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&key.key);
                                let _ = tx.send((id, result, started.elapsed().as_secs_f64()));
                            });
                        }
                    }
                }
                if sched.running() == 0 && !progressed {
                    break;
                }
                if sched.running() == 0 {
                    continue;
                }
                let Ok((id, result, secs)) = rx.recv() else {
                    break;
                };
                let name = &p.stages[id].name;
                let outcome = match result {
                    Ok((m, origin)) => {
                        let locked_differs = opts.locked
                            && lock
                                .stages
                                .get(name)
                                .is_some_and(|l| l.outputs != m.outputs);
                        if locked_differs {
                            Outcome::Failed(Failure::plain(
                                "--locked: its outputs differ from the lock file",
                            ))
                        } else {
                            let key = runs.stage_keys[id].clone().expect("key of a started stage");
                            self.record(&mut known, name, id, &key, &m)?;
                            runs.manifests[id] = Some(m);
                            match origin {
                                Origin::Computed => Outcome::Ran(secs),
                                Origin::OtherRun => Outcome::CachedByOther,
                                Origin::Remote => Outcome::FromRemote(secs),
                            }
                        }
                    }
                    Err(Error::Cancelled) => Outcome::Cancelled,
                    Err(e) => Outcome::Failed(Failure::of(&e)),
                };
                sched.finished(id, outcome.clone());
                settle(&mut runs, id, outcome);
            }
            Ok(())
        })?;
        let _ = cache.save();
        let status = if control.stop.load(std::sync::atomic::Ordering::Relaxed) {
            track::Status::Killed
        } else if runs.outcomes.iter().flatten().all(|o| {
            !matches!(
                o,
                Outcome::Failed(_) | Outcome::Blocked(_) | Outcome::Cancelled
            )
        }) {
            track::Status::Finished
        } else {
            track::Status::Failed
        };
        lazy_tracking.end(status);
        let outcomes = plan
            .order
            .iter()
            .map(|&id| {
                let o = runs.outcomes[id]
                    .clone()
                    .unwrap_or_else(|| Outcome::Blocked("not started".into()));
                (p.stages[id].name.clone(), o)
            })
            .collect();
        Ok(Summary { outcomes })
    }
}

impl Runs {
    /// The store keys known so far, by stage id (for upstream output paths).
    fn keys(&self) -> Vec<Option<String>> {
        self.stage_keys
            .iter()
            .map(|k| k.as_ref().map(|k| k.key.clone()))
            .collect()
    }
}

/// What a run has learned of each stage so far, by stage id.
struct Runs {
    /// Keys of the stages keyed so far (cached or started).
    stage_keys: Vec<Option<StageKey>>,
    /// Entries of finished stages (their output hashes key the downstream).
    manifests: Vec<Option<Manifest>>,
    outcomes: Vec<Option<Outcome>>,
}

/// The stages some stage in `sel` depends on, directly or not.
fn upstream_of(p: &Pipeline, sel: &[bool]) -> Vec<bool> {
    let mut up = vec![false; p.stages.len()];
    for &id in crate::plan::topo_order(p).iter().rev() {
        if sel[id] || up[id] {
            for &d in &p.stages[id].deps {
                up[d] = true;
            }
        }
    }
    up
}

/// `--locked`: every stage must be in the lock file with the key it would have now.
fn locked_check(p: &Pipeline, plan: &Plan, lock: &LockFile) -> Result<(), String> {
    let mut problems = Vec::new();
    for &id in &plan.order {
        let name = &p.stages[id].name;
        match (lock.stages.get(name), &plan.stages[id].key) {
            (None, _) => problems.push(format!("{name}: not in the lock file")),
            (Some(l), Some(k)) if l.key != k.key => {
                let why = plan.stages[id].reasons.join("; ");
                problems.push(format!("{name}: would change ({why})"));
            }
            _ => {}
        }
    }
    let extra: Vec<&String> = lock
        .stages
        .keys()
        .filter(|n| p.stage_id(n).is_none())
        .collect();
    for n in extra {
        problems.push(format!("{n}: in the lock file but not in the pipeline"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "--locked: the lock file would change:\n  {}",
            problems.join("\n  ")
        ))
    }
}
