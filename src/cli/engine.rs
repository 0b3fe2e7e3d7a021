//! `ptl plan`, `run`, `graph`, `gc`, `store verify` and `path`: the commands that use the store.

use super::interrupt;
use super::OutputFormat;
use crate::lang::check::check_file;
use crate::lang::diag::{render, to_json, Diag};
use crate::lang::pipeline::Pipeline;
use crate::lang::source::SourceMap;
use crate::plan::lockfile::{path_for, LockFile};
use crate::plan::{graph, Plan};
use crate::run::{Event, Options, Outcome, Run};
use crate::store::hash::HashCache;
use crate::store::Store;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The store of a pipeline: `--store DIR`, else `PTL_STORE`, else `.ptl/` beside the pipeline file.
pub fn store_dir(file: &Path, flag: Option<&Path>) -> PathBuf {
    crate::store::locate::for_pipeline(file, flag)
}

/// Checks the pipeline; prints diagnostics; `None` when it has errors.
fn checked(file: &Path, set: &[String]) -> Option<Pipeline> {
    checked_with_sources(file, set).map(|(p, _)| p)
}

/// The checked pipeline and its sources (for diagnostics about it later), or its errors printed.
fn checked_with_sources(file: &Path, set: &[String]) -> Option<(Pipeline, SourceMap)> {
    let c = check_file(file, set);
    err!("{}", render(&c.diags, &c.sources, super::color()));
    if c.pipeline.is_none() {
        let n = c.diags.iter().filter(|d| d.is_error()).count();
        errln!(
            "error: {}: {n} error{} found",
            file.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    Some((c.pipeline?, c.sources))
}

/// A diagnostic for a stage that failed while running: at the field that caused it when one did (the
/// checker knows where each field was written), else at the stage's declaration.
fn stage_failed(p: &Pipeline, name: &str, f: &crate::run::Failure) -> Diag {
    let message = if f.internal {
        format!(
            "stage `{name}` failed: {} (internal error, please report)",
            f.message
        )
    } else {
        format!("stage `{name}` failed: {}", f.message)
    };
    let mut d = Diag::error(f.code, message).help(f.help.clone());
    if let Some(id) = p.stage_id(name) {
        let stage = &p.stages[id];
        let field = f
            .field
            .and_then(|field| stage.locs.get(field).map(|loc| (field, *loc)));
        d = match field {
            Some((field, loc)) => d.label(loc, format!("`{field}` of this stage")),
            None => {
                let what = f.field.map_or("this stage".to_string(), |field| {
                    format!("this stage (its `{field}` is the default)")
                });
                d.label(stage.decl, what)
            }
        };
    }
    d
}

/// The pipeline's store, created if it does not exist yet (for the commands that write: run), with
/// its remote tier.
fn open_store(p: &Pipeline, flag: Option<&Path>) -> Option<Store> {
    let dir = store_dir(&p.file, flag);
    match Store::open(&dir) {
        Ok(s) => with_remote(p, s),
        Err(e) => {
            errln!("error: cannot use the store {}: {e}", dir.display());
            None
        }
    }
}

/// `store` with the pipeline's remote store (`store { remote }`, `PTL_REMOTE_STORE`), if it has one.
fn with_remote(p: &Pipeline, store: Store) -> Option<Store> {
    match crate::store::remote::of_pipeline(p) {
        Ok(remote) => Some(store.with_remote(remote)),
        Err(e) => {
            errln!("error: {e}");
            None
        }
    }
}

/// The store a command that only reads or cleans it uses (`gc`, `store verify`): found, never created.
fn existing_store(pipeline: Option<&Path>, flag: Option<&Path>, command: &str) -> Option<Store> {
    match crate::store::locate::existing(pipeline, flag) {
        Ok(dir) => Some(Store::at(&dir)),
        Err(nf) => {
            let d = Diag::error("ptl::no_store", nf.to_string()).help(nf.help(command));
            err!("{}", render(&[d], &SourceMap::default(), super::color()));
            None
        }
    }
}

fn make_plan(p: &Pipeline, store: &Store) -> Option<Plan> {
    let mut cache = HashCache::load(&store.root);
    let lock = match LockFile::load(&path_for(&p.file)) {
        Ok(l) => l,
        Err(e) => {
            errln!("error: {e}");
            return None;
        }
    };
    let plan = Plan::make(p, store, &mut cache, &lock);
    let _ = cache.save();
    match plan {
        Ok(plan) => Some(plan),
        Err(e) => {
            errln!("error: {e}");
            None
        }
    }
}

/// Check, open the store, plan: what `plan`, `graph` and `serve` share. `remote`: look in the
/// remote store too (`serve` uses local entries only).
pub(super) fn planned(
    file: &Path,
    set: &[String],
    store: Option<&Path>,
    remote: bool,
) -> Option<(Pipeline, Plan)> {
    let p = checked(file, set)?;
    // Planning reads the store; a pipeline that never ran has none yet, and plans against nothing.
    let mut store = Store::at(&store_dir(file, store));
    if remote {
        store = with_remote(&p, store)?;
    }
    let plan = make_plan(&p, &store)?;
    Some((p, plan))
}

pub fn plan(file: &Path, set: &[String], store: Option<&Path>, format: OutputFormat) -> i32 {
    let Some((p, plan)) = planned(file, set, store, true) else {
        return 1;
    };
    match format {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&plan.to_json(&p)).unwrap_or_default()
        ),
        OutputFormat::Human => {
            outln!("compute  {}", plan.compute.describe());
            if let Some(r) = p.ray_executor() {
                outln!(
                    "executor ray {} (each stage a job asking for num_cpus = {}, num_gpus = {})",
                    r.address,
                    r.num_cpus,
                    r.num_gpus
                );
            }
            for &id in &plan.order {
                let s = &plan.stages[id];
                let reasons = if s.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.reasons.join("; "))
                };
                // A stage with its own device or dtype says where it computes, and a data-parallel
                // one on how many workers.
                let own = plan.computes[id].describe();
                let mut notes = Vec::new();
                if own != plan.compute.describe() {
                    notes.push(own);
                }
                let workers = p.stages[id].workers();
                if workers > 1 {
                    notes.push(format!("{workers} workers"));
                }
                let compute = if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join("; "))
                };
                outln!(
                    "{:<8} {} ({}){compute}{reasons}",
                    s.status_text(),
                    p.stages[id].name,
                    p.stages[id].kind.name
                );
            }
        }
    }
    0
}

pub fn graph(file: &Path, set: &[String], store: Option<&Path>, mermaid: bool) -> i32 {
    let Some((p, plan)) = planned(file, set, store, true) else {
        return 1;
    };
    out!(
        "{}",
        if mermaid {
            graph::mermaid(&p, &plan)
        } else {
            graph::dot(&p, &plan)
        }
    );
    0
}

pub struct RunArgs<'a> {
    pub file: &'a Path,
    pub set: &'a [String],
    pub store: Option<&'a Path>,
    /// `-j`; unset: 1 here, 8 on a Ray cluster.
    pub jobs: Option<usize>,
    /// `--executor`: `local` or `ray=URL` (unset: `config.executor`).
    pub executor: Option<&'a str>,
    /// `--lock-file` (unset: beside the pipeline).
    pub lock_file: Option<PathBuf>,
    pub options: Options,
    /// `json`: every event as one JSON object per line on stdout (docs/engine.md).
    pub format: OutputFormat,
}

pub fn run(args: RunArgs) -> i32 {
    let json = args.format == OutputFormat::Json;
    let (p, sources) = if json {
        let c = check_file(args.file, args.set);
        match c.pipeline {
            Some(p) => (p, c.sources),
            None => {
                let diagnostics = c.diags.iter().map(|d| to_json(d, &c.sources)).collect();
                outln!("{}", Event::Diagnostics { diagnostics }.json());
                return 1;
            }
        }
    } else {
        match checked_with_sources(args.file, args.set) {
            Some(checked) => checked,
            None => return 1,
        }
    };
    crate::plan::compute::set_threads_from(&p.config);
    let Some(store) = open_store(&p, args.store) else {
        return 1;
    };
    let mut options = args.options;
    match crate::run::ray::chosen(&p, args.executor, args.set, &store) {
        Ok(ray) => options.ray = ray.map(std::sync::Arc::new),
        Err(e) => {
            errln!("error: {e}");
            return if e.starts_with("--executor") { 2 } else { 1 };
        }
    }
    options.jobs = args
        .jobs
        .unwrap_or(if options.ray.is_some() { 8 } else { 1 })
        .max(1);
    let run = Run {
        pipeline: &p,
        store: &store,
        lock_path: args.lock_file.clone().unwrap_or_else(|| path_for(&p.file)),
    };
    let width = p
        .stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let console = if json {
        Console::Json
    } else {
        Console::new(width)
    };
    let report = |e: &Event| console.report(e);
    let control = std::sync::Arc::new(crate::run::Control::default());
    interrupt::install(control.clone());
    let result = run.run(&options, &control, &report);
    console.clear();
    let interrupted = control.stop.load(std::sync::atomic::Ordering::SeqCst);
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            if json {
                outln!("{}", Event::Error { message: e }.json());
            } else {
                errln!("error: {e}");
            }
            return 1;
        }
    };
    console.report(&Event::summary(&summary.outcomes));
    if interrupted {
        errln!(
            "interrupted: finished stages are in the store and the lock file; `ptl run {}` resumes the rest",
            args.file.display()
        );
        return interrupt::EXIT_CODE;
    }
    let failed: Vec<Diag> = summary
        .outcomes
        .iter()
        .filter_map(|(name, o)| match o {
            Outcome::Failed(f) => Some(stage_failed(&p, name, f)),
            _ => None,
        })
        .collect();
    if json {
        if !failed.is_empty() {
            let diagnostics = failed.iter().map(|d| to_json(d, &sources)).collect();
            outln!("{}", Event::Diagnostics { diagnostics }.json());
        }
    } else {
        err!("{}", render(&failed, &sources, super::color()));
    }
    if summary.ok() {
        0
    } else {
        1
    }
}

/// How `ptl run` shows what happens. On a terminal (stdout), one progress bar per running stage
/// under the event lines; otherwise (pipes, CI, tests) the lines alone, with a plain progress line
/// at most every tenth of a stage and at its last step, so logs stay short.
enum Console {
    /// `--format json`: every event as a JSON line.
    Json,
    Plain {
        /// Stage → the tenth of its steps and the step of its last progress line.
        printed: Mutex<BTreeMap<String, (u64, u64)>>,
    },
    Bars {
        multi: MultiProgress,
        style: ProgressStyle,
        bars: Mutex<BTreeMap<String, ProgressBar>>,
    },
}

impl Console {
    /// `width`: the longest stage name, so the bars line up.
    fn new(width: usize) -> Console {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if !std::io::stdout().is_terminal() || dumb {
            return Console::Plain {
                printed: Mutex::default(),
            };
        }
        let template = if super::color_stdout() {
            format!("         {{prefix:{width}.bold}} [{{wide_bar:.cyan/blue}}] {{pos}}/{{len}} {{msg}} ETA {{eta}}")
        } else {
            format!(
                "         {{prefix:{width}}} [{{wide_bar}}] {{pos}}/{{len}} {{msg}} ETA {{eta}}"
            )
        };
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Console::Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            style,
            bars: Mutex::default(),
        }
    }

    /// One line on stdout, above the bars.
    fn line(&self, line: &str) {
        match self {
            Console::Json | Console::Plain { .. } => outln!("{line}"),
            Console::Bars { multi, .. } => multi.suspend(|| outln!("{line}")),
        }
    }

    fn report(&self, e: &Event) {
        if let Console::Json = self {
            outln!("{}", e.json());
            return;
        }
        match e {
            Event::StageProgress {
                stage,
                step,
                total,
                note,
            } => self.progress(e, stage, *step, *total, note),
            Event::StageFinished { stage, .. } | Event::StageCancelled { stage, .. } => {
                match self {
                    Console::Json => {}
                    Console::Plain { printed } => {
                        printed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(stage);
                    }
                    Console::Bars { multi, bars, .. } => {
                        let bar = bars.lock().unwrap_or_else(|e| e.into_inner()).remove(stage);
                        if let Some(bar) = bar {
                            bar.finish_and_clear();
                            multi.remove(&bar);
                        }
                    }
                }
                self.line(&e.line().unwrap_or_default());
            }
            other => {
                if let Some(line) = other.line() {
                    self.line(&line);
                }
            }
        }
    }

    fn progress(&self, e: &Event, stage: &str, step: u64, total: u64, note: &str) {
        match self {
            Console::Json => {}
            Console::Plain { printed } => {
                let tenth = (step.min(total) * 10).checked_div(total).unwrap_or(10);
                let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
                let (last_tenth, last_step) = printed.get(stage).copied().unwrap_or((0, u64::MAX));
                if tenth > last_tenth || (step >= total && step != last_step) {
                    printed.insert(stage.to_string(), (tenth, step));
                    outln!("{}", e.line().unwrap_or_default());
                }
            }
            Console::Bars { multi, style, bars } => {
                let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
                let bar = bars.entry(stage.to_string()).or_insert_with(|| {
                    let bar = multi.add(
                        ProgressBar::new(total)
                            .with_style(style.clone())
                            .with_prefix(stage.to_string()),
                    );
                    // A resumed stage starts part way: time the rate from here.
                    bar.set_position(step);
                    bar.reset_eta();
                    bar
                });
                bar.set_length(total);
                bar.set_message(note.to_string());
                bar.set_position(step);
            }
        }
    }

    /// Removes any bar left (a run that ended in an error).
    fn clear(&self) {
        if let Console::Bars { multi, bars, .. } = self {
            for (_, bar) in std::mem::take(&mut *bars.lock().unwrap_or_else(|e| e.into_inner())) {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
            let _ = multi.clear();
        }
    }
}

pub fn gc(pipeline: Option<&Path>, store: Option<&Path>, dry_run: bool, checkpoints: bool) -> i32 {
    let Some(store) = existing_store(pipeline, store, "ptl gc") else {
        return 1;
    };
    outln!("store {}", store.root.display());
    match store.gc(dry_run, checkpoints) {
        Ok(r) => {
            let verb = if dry_run { "would remove" } else { "removed" };
            let mut total = 0;
            for (key, size) in &r.checkpoints {
                outln!("{verb} checkpoints of {key} ({})", human(*size));
                total += size;
            }
            if !r.kept_checkpoints.is_empty() {
                let size: u64 = r.kept_checkpoints.iter().map(|(_, s)| s).sum();
                outln!(
                    "kept the checkpoints of {} unfinished or running stage{} ({}): a rerun resumes from them; `ptl gc --checkpoints` removes them",
                    r.kept_checkpoints.len(),
                    if r.kept_checkpoints.len() == 1 { "" } else { "s" },
                    human(size)
                );
            }
            for (key, size) in r.entries.iter().chain(&r.tmp) {
                outln!("{verb} {key} ({})", human(*size));
                total += size;
            }
            outln!(
                "{verb} {} entr{} and {} unfinished folder{}, {}; kept {} entr{}",
                r.entries.len(),
                if r.entries.len() == 1 { "y" } else { "ies" },
                r.tmp.len(),
                if r.tmp.len() == 1 { "" } else { "s" },
                human(total),
                r.kept,
                if r.kept == 1 { "y" } else { "ies" }
            );
            0
        }
        Err(e) => {
            errln!("error: gc failed: {e}");
            1
        }
    }
}

pub fn verify(pipeline: Option<&Path>, store: Option<&Path>) -> i32 {
    let Some(store) = existing_store(pipeline, store, "ptl store verify") else {
        return 1;
    };
    outln!("store {}", store.root.display());
    match store.verify() {
        Ok((count, problems)) if problems.is_empty() => {
            outln!(
                "ok: {count} entr{} verified",
                if count == 1 { "y" } else { "ies" }
            );
            0
        }
        Ok((count, problems)) => {
            for p in &problems {
                outln!("{p}");
            }
            errln!("error: {} problem(s) in {count} entries", problems.len());
            1
        }
        Err(e) => {
            errln!("error: cannot verify the store: {e}");
            1
        }
    }
}

pub fn path(file: &Path, stage: &str, set: &[String], store: Option<&Path>) -> i32 {
    let Some(p) = checked(file, set) else {
        return 1;
    };
    if p.stage_id(stage).is_none() {
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        errln!(
            "error: no stage named `{stage}`; stages: {}",
            names.join(", ")
        );
        return 1;
    }
    let store = Store::at(&store_dir(file, store));
    let link = store.link_path(&p.name, stage);
    if !link.exists() {
        errln!(
            "error: stage {stage} has no outputs yet: run `ptl run {}` first",
            file.display()
        );
        return 1;
    }
    outln!("{}", link.display());
    0
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
