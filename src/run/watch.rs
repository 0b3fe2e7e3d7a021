//! `ptl watch`: runs the pipeline, then keeps it current as its files change. Each change (debounced)
//! re-checks and re-plans; running stages whose key changed are cancelled, unchanged ones go on, and
//! a new run picks up everything stale.

use super::{Control, Event, Options, Run};
use crate::lang::check::check_file;
use crate::lang::diag::{render, to_json};
use crate::lang::pipeline::Pipeline;
use crate::lang::value::Value;
use crate::plan::lockfile::{path_for, LockFile};
use crate::plan::Plan;
use crate::store::hash::HashCache;
use crate::store::Store;
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub struct WatchOptions {
    pub file: PathBuf,
    pub set: Vec<String>,
    pub store: PathBuf,
    pub debounce: Duration,
    /// How long a cancelled stage may take to stop before watch stops waiting for it.
    pub grace: Duration,
    pub jobs: usize,
    pub json: bool,
    /// Redraw a status table (a TTY in human mode) instead of printing lines.
    pub screen: bool,
}

enum Msg {
    Fs(Vec<PathBuf>),
    Done(u64),
    Interrupt,
}

/// Writes events: one JSON object per line, or human lines / a redrawn status table.
struct Out {
    json: bool,
    screen: bool,
    status: Mutex<BTreeMap<String, String>>,
    /// The newest run; older runs that were stopped only report what their stages really did.
    current: std::sync::atomic::AtomicU64,
}

impl Out {
    /// Writes `event` (as JSON), or `line` for people; `None` for an event that only changes the
    /// status table.
    fn emit(&self, event: &Event, line: Option<String>) {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(stdout, "{}", event.json());
        } else if self.screen {
            let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            let _ = write!(stdout, "\x1b[2J\x1b[H");
            for (stage, s) in status.iter() {
                let _ = writeln!(stdout, "{stage:<24} {s}");
            }
            if let Some(l) = line {
                let _ = writeln!(stdout, "\n{l}");
            }
        } else if let Some(l) = line {
            let _ = writeln!(stdout, "{l}");
        }
        let _ = stdout.flush();
    }

    fn set_status(&self, stage: &str, s: String) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stage.to_string(), s);
    }

    fn run_event(&self, e: &Event) {
        if let (Some(stage), Some(status)) = (e.stage(), e.status()) {
            self.set_status(stage, status);
        }
        if let Event::StageProgress { .. } = e {
            // Progress only redraws the table (or goes out as JSON); no line for it.
            if self.json || self.screen {
                self.emit(e, None);
            }
            return;
        }
        self.emit(e, e.line());
    }
}

/// A run in progress: its generation, its controls, and the stages it may be running (by key).
struct Active {
    generation: u64,
    control: Arc<Control>,
    names: BTreeMap<String, String>,
}

/// The files and folders whose changes matter.
#[derive(Default, PartialEq)]
struct WatchSet {
    files: BTreeSet<PathBuf>,
    trees: BTreeSet<PathBuf>,
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

impl WatchSet {
    fn add_value(&mut self, v: &Value) {
        match v {
            Value::HfModel(p) => {
                self.trees.insert(absolute(&p.resolved));
            }
            Value::Dataset { path, .. } => {
                self.files.insert(absolute(&path.resolved));
            }
            Value::List(items) => items.iter().for_each(|i| self.add_value(i)),
            Value::Record(fields) => fields.values().for_each(|i| self.add_value(i)),
            _ => {}
        }
    }

    fn relevant(&self, path: &Path, store: &Path) -> bool {
        if path.starts_with(store) {
            return false;
        }
        let abs = absolute(path);
        self.files.contains(&abs)
            || self.files.contains(path)
            || self
                .trees
                .iter()
                .any(|t| path.starts_with(t) || abs.starts_with(t))
    }
}

struct Session {
    opts: WatchOptions,
    out: Arc<Out>,
    tx: mpsc::Sender<Msg>,
    generation: u64,
    active: Vec<Active>,
    set: WatchSet,
    watched: BTreeSet<(PathBuf, bool)>,
    store_root: PathBuf,
}

impl Session {
    /// Re-checks and re-plans; cancels stale running stages and starts a new run.
    fn reload(&mut self, watcher: &mut dyn Watcher) {
        let checked = check_file(&self.opts.file, &self.opts.set);
        let mut set = WatchSet::default();
        set.files.insert(absolute(&self.opts.file));
        for i in 0..checked.sources.len() {
            if let Some(p) = &checked.sources.get(i).path {
                set.files.insert(absolute(p));
            }
        }
        if let Some(p) = &checked.pipeline {
            crate::plan::compute::set_threads_from(&p.config);
            for s in &p.stages {
                s.params.values().for_each(|v| set.add_value(v));
                // Files and folders named by path fields (templates, tokenizers).
                for (_, _, path) in p.path_params(s) {
                    let path = absolute(&path);
                    if path.is_dir() {
                        set.trees.insert(path);
                    } else {
                        set.files.insert(path);
                    }
                }
            }
        }
        self.update_watches(&set, watcher);
        self.set = set;
        let Some(pipeline) = checked.pipeline else {
            let diags: Vec<_> = checked
                .diags
                .iter()
                .map(|d| to_json(d, &checked.sources))
                .collect();
            let text = render(&checked.diags, &checked.sources, false);
            self.out.emit(
                &Event::Diagnostics { diagnostics: diags },
                Some(format!(
                    "{text}the pipeline has errors; watching for the next save"
                )),
            );
            return;
        };
        let opened = Store::open(&self.store_root).map_err(|e| e.to_string());
        let remote = crate::store::remote::of_pipeline(&pipeline);
        let store = match opened.and_then(|s| Ok(s.with_remote(remote?))) {
            Ok(s) => s,
            Err(e) => {
                self.out.emit(
                    &Event::Error {
                        message: e.to_string(),
                    },
                    Some(format!("error: {e}")),
                );
                return;
            }
        };
        let mut cache = HashCache::load(&store.root);
        let lock = LockFile::load(&path_for(&pipeline.file)).unwrap_or_default();
        let plan = match Plan::make(&pipeline, &store, &mut cache, &lock) {
            Ok(p) => p,
            Err(e) => {
                self.out.emit(
                    &Event::Error { message: e.clone() },
                    Some(format!("error: {e}")),
                );
                return;
            }
        };
        let _ = cache.save();
        let plan_event = Event::Plan {
            plan: plan.to_json(&pipeline),
        };
        let mut lines = Vec::new();
        for &id in &plan.order {
            let s = &plan.stages[id];
            let name = &pipeline.stages[id].name;
            let why = if s.reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.reasons.join("; "))
            };
            lines.push(format!("plan     {name}: {}{why}", s.status_text()));
            self.out
                .set_status(name, format!("{}{why}", s.status_text()));
        }
        self.out.emit(&plan_event, Some(lines.join("\n")));
        // Running stages whose key is still wanted go on; the others stop.
        let keep: BTreeSet<String> = plan
            .stages
            .iter()
            .filter_map(|s| s.key.as_ref().map(|k| k.key.clone()))
            .collect();
        for a in &self.active {
            a.control.stop.store(true, Ordering::SeqCst);
            for key in a.control.cancel_unless(&|k| keep.contains(k)) {
                let name = a.names.get(&key).cloned().unwrap_or_default();
                let deadline = Instant::now() + self.opts.grace;
                let out = self.out.clone();
                let control = a.control.clone();
                // If the stage does not stop within the grace period, stop waiting for it: its result is
                // discarded either way (a cancelled stage is never committed).
                std::thread::spawn(move || {
                    while Instant::now() < deadline {
                        if !control
                            .running
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains_key(&key)
                        {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let event = Event::StageCancelled {
                        stage: name,
                        forced: true,
                    };
                    out.emit(&event, event.line());
                });
            }
        }
        self.start(pipeline, store, &plan);
    }

    fn start(&mut self, pipeline: Pipeline, store: Store, plan: &Plan) {
        self.generation += 1;
        let generation = self.generation;
        self.out.current.store(generation, Ordering::Relaxed);
        let control = Arc::new(Control::default());
        let names = plan
            .order
            .iter()
            .filter_map(|&id| {
                plan.stages[id]
                    .key
                    .as_ref()
                    .map(|k| (k.key.clone(), pipeline.stages[id].name.clone()))
            })
            .collect();
        self.active.push(Active {
            generation,
            control: control.clone(),
            names,
        });
        let ray = match super::ray::chosen(&pipeline, None, &self.opts.set, &store) {
            Ok(r) => r.map(Arc::new),
            Err(e) => {
                self.out.emit(
                    &Event::Error { message: e.clone() },
                    Some(format!("error: {e}")),
                );
                return;
            }
        };
        let out = self.out.clone();
        let tx = self.tx.clone();
        let jobs = self.opts.jobs;
        let overrides = self.opts.set.clone();
        std::thread::spawn(move || {
            let run = Run {
                pipeline: &pipeline,
                store: &store,
                lock_path: path_for(&pipeline.file),
            };
            let report = |e: &Event| {
                // A stopped run's "not started" and "blocked" lines are noise: the newer run reports those stages.
                let stale = out.current.load(Ordering::Relaxed) != generation;
                if stale
                    && matches!(
                        e,
                        Event::StageFinished {
                            status: super::event::Status::Blocked | super::event::Status::Skipped,
                            ..
                        }
                    )
                {
                    return;
                }
                out.run_event(e)
            };
            let options = Options {
                jobs,
                keep_going: true,
                only: None,
                from: None,
                locked: false,
                ray: ray.clone(),
                overrides,
            };
            if let Err(e) = run.run(&options, &control, &report) {
                out.emit(
                    &Event::Error { message: e.clone() },
                    Some(format!("error: {e}")),
                );
            }
            let _ = tx.send(Msg::Done(generation));
        });
    }

    fn update_watches(&mut self, set: &WatchSet, watcher: &mut dyn Watcher) {
        let mut wanted = BTreeSet::new();
        for f in &set.files {
            // The folder, not the file: editors save by writing a new file and renaming it over.
            if let Some(dir) = f.parent() {
                wanted.insert((dir.to_path_buf(), false));
            }
        }
        for t in &set.trees {
            wanted.insert((t.clone(), true));
        }
        for (path, recursive) in wanted.difference(&self.watched.clone()) {
            let mode = if *recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            if watcher.watch(path, mode).is_ok() {
                self.watched.insert((path.clone(), *recursive));
            }
        }
        for (path, recursive) in self.watched.clone().difference(&wanted) {
            let _ = watcher.unwatch(path);
            self.watched.remove(&(path.clone(), *recursive));
        }
    }
}

/// Runs watch mode until Ctrl-C; returns the exit code.
pub fn watch(opts: WatchOptions) -> i32 {
    let (tx, rx) = mpsc::channel::<Msg>();
    let fs_tx = tx.clone();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = fs_tx.send(Msg::Fs(ev.paths));
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: cannot watch files: {e}");
                return 1;
            }
        };
    let int_tx = tx.clone();
    let _ = ctrlc::set_handler(move || {
        let _ = int_tx.send(Msg::Interrupt);
    });
    let store_root = absolute(&opts.store);
    let _ = std::fs::create_dir_all(&store_root);
    let store_root = absolute(&store_root);
    let out = Arc::new(Out {
        json: opts.json,
        screen: opts.screen && !opts.json,
        status: Mutex::new(BTreeMap::new()),
        current: std::sync::atomic::AtomicU64::new(0),
    });
    let debounce = opts.debounce;
    let grace = opts.grace;
    let mut s = Session {
        opts,
        out,
        tx,
        generation: 0,
        active: Vec::new(),
        set: WatchSet::default(),
        watched: BTreeSet::new(),
        store_root,
    };
    s.reload(&mut watcher);
    loop {
        let Ok(msg) = rx.recv() else { return 1 };
        match msg {
            Msg::Fs(paths) => {
                let mut changed: BTreeSet<PathBuf> = paths
                    .into_iter()
                    .filter(|p| s.set.relevant(p, &s.store_root))
                    .collect();
                if changed.is_empty() {
                    continue;
                }
                // Debounce: wait until the files have been quiet for `debounce`.
                let mut interrupted = false;
                loop {
                    match rx.recv_timeout(debounce) {
                        Ok(Msg::Fs(more)) => changed.extend(
                            more.into_iter()
                                .filter(|p| s.set.relevant(p, &s.store_root)),
                        ),
                        Ok(Msg::Done(g)) => s.finished(g),
                        Ok(Msg::Interrupt) => {
                            interrupted = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if interrupted {
                    return s.stop(&rx, grace);
                }
                let paths: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
                let line = format!("changed: {}", paths.join(", "));
                s.out.emit(&Event::Change { paths }, Some(line));
                s.reload(&mut watcher);
            }
            Msg::Done(g) => s.finished(g),
            Msg::Interrupt => return s.stop(&rx, grace),
        }
    }
}

impl Session {
    fn finished(&mut self, generation: u64) {
        self.active.retain(|a| a.generation != generation);
        if generation == self.generation {
            self.out.emit(
                &Event::Idle,
                Some("idle: watching for changes (Ctrl-C stops)".into()),
            );
        }
    }

    /// Ctrl-C: cancel everything, wait (up to the grace period) for runs to end, nothing partial is kept.
    fn stop(&mut self, rx: &mpsc::Receiver<Msg>, grace: Duration) -> i32 {
        for a in &self.active {
            a.control.stop_all();
        }
        let deadline = Instant::now() + grace;
        while !self.active.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Msg::Done(g)) => self.active.retain(|a| a.generation != g),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.out.emit(&Event::Stopped, Some("stopped".into()));
        130
    }
}
