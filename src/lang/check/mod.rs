//! The checker: evaluates a parsed pipeline (imports, lets, functions, stages, overrides) into a
//! typed [`Pipeline`], collecting every error it finds rather than stopping at the first.

mod builtins;
mod eval;
mod finish;
mod load;
mod overrides;
mod rewards;
mod stage;
mod typing;

use super::ast;
use super::diag::{Diag, Diags};
use super::pipeline::Pipeline;
use super::settings;
use super::source::{FileId, Loc, SourceMap};
use super::value::{ModuleId, StageId, Value};
use crate::stages::schema::Kind;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use overrides::Override;

/// Evaluation steps one check may take; a pipeline that needs more is reported, not run forever.
const BUDGET: u64 = 2_000_000;
/// Diagnostics kept from one check; past this, one line says the rest were dropped.
const MAX_DIAGNOSTICS: usize = 200;
/// Nesting of user function calls.
const MAX_CALL_DEPTH: usize = 32;

/// Everything a check produced: the sources it read (to render diagnostics), the diagnostics, and
/// the pipeline when there were no errors.
pub struct Checked {
    pub sources: SourceMap,
    pub diags: Vec<Diag>,
    pub pipeline: Option<Pipeline>,
}

/// Checks the pipeline file at `path` with `--set` overrides (`path=value` strings).
pub fn check_file(path: &Path, overrides: &[String]) -> Checked {
    match std::fs::read(path) {
        Ok(bytes) => check_bytes(path, &bytes, overrides),
        Err(e) => {
            let mut c = Checker::new();
            c.error(
                Diag::error(
                    "ptl::file_not_found",
                    format!("cannot read {}: {e}", path.display()),
                )
                .help("give the path of a .ptl pipeline file"),
            );
            Checked {
                sources: c.sources,
                diags: c.diags.list,
                pipeline: None,
            }
        }
    }
}

/// Checks pipeline source `bytes` as if read from `path` (imports and data paths resolve from there).
pub fn check_bytes(path: &Path, bytes: &[u8], overrides: &[String]) -> Checked {
    let mut c = Checker::new();
    let ovs = overrides::parse_all(&mut c, overrides);
    c.overrides = ovs;
    let root = c.load_root(path, bytes);
    let pipeline = root.and_then(|m| {
        c.run_module(m);
        c.finish(path)
    });
    let failed = c.diags.has_errors();
    Checked {
        sources: c.sources,
        diags: c.diags.list,
        pipeline: if failed { None } else { pipeline },
    }
}

/// A name bound in a scope, and where.
#[derive(Clone)]
struct Binding {
    value: Value,
    loc: Loc,
}

struct ModuleState {
    file: FileId,
    /// Relative paths in this module resolve against this directory.
    dir: PathBuf,
    ast: Rc<ast::Module>,
    globals: HashMap<String, Binding>,
    /// Qualifier of the stages this module declares at its top level (`""` for the pipeline file).
    prefix: String,
}

/// The scope an expression is evaluated in.
struct Frame {
    module: ModuleId,
    /// The file spans of evaluated expressions point into (the module's, or a `--set` source).
    file: FileId,
    /// A function call's parameters and locals; `None` at a module's top level.
    locals: Option<HashMap<String, Binding>>,
    /// Qualifier for stages declared in this frame.
    prefix: String,
    /// Inside a function: the outermost call, in the file the user wrote it.
    origin: Option<Loc>,
}

struct StageSlot {
    name: String,
    kind: Option<&'static Kind>,
    decl: Loc,
    /// The top-level call that declared it, for stages declared inside functions.
    origin: Option<Loc>,
    params: BTreeMap<String, Value>,
    locs: BTreeMap<String, Loc>,
    /// Upstream stages and where the reference was written.
    deps: Vec<(StageId, Loc)>,
}

#[derive(Default)]
struct Settings {
    values: BTreeMap<String, Value>,
    seen: Option<Loc>,
}

pub(crate) struct Checker {
    sources: SourceMap,
    diags: Diags,
    modules: Vec<ModuleState>,
    module_keys: HashMap<String, ModuleId>,
    /// Files being loaded, for import cycles: (key, name to show).
    loading: Vec<(String, String)>,
    stages: Vec<StageSlot>,
    stage_index: HashMap<String, StageId>,
    overrides: Vec<Override>,
    /// The `config`, `track` and `store` blocks, in `settings::Block::ALL`'s order.
    blocks: [Settings; 3],
    budget: u64,
    depth: usize,
    recursion_reported: bool,
}

impl Checker {
    fn new() -> Self {
        Checker {
            sources: SourceMap::default(),
            diags: Diags::default(),
            modules: Vec::new(),
            module_keys: HashMap::new(),
            loading: Vec::new(),
            stages: Vec::new(),
            stage_index: HashMap::new(),
            overrides: Vec::new(),
            blocks: Default::default(),
            budget: BUDGET,
            depth: 0,
            recursion_reported: false,
        }
    }

    fn block_settings(&mut self, which: settings::Block) -> &mut Settings {
        &mut self.blocks[which as usize]
    }

    fn error(&mut self, d: Diag) {
        if self.diags.list.len() < MAX_DIAGNOSTICS {
            self.diags.push(d);
        } else if self.diags.list.len() == MAX_DIAGNOSTICS {
            self.diags.push(
                Diag::error(
                    "ptl::too_many_errors",
                    format!("more than {MAX_DIAGNOSTICS} problems; the rest are not shown"),
                )
                .help("fix the problems above and check again"),
            );
        }
    }

    fn loc(&self, frame: &Frame, span: super::source::Span) -> Loc {
        Loc {
            file: frame.file,
            span,
        }
    }

    /// Evaluates a module's top-level statements in order (stages are declared first, so they may
    /// refer to each other in any order).
    fn run_module(&mut self, m: ModuleId) {
        let ast = self.modules[m].ast.clone();
        let mut frame = Frame {
            module: m,
            file: self.modules[m].file,
            locals: None,
            prefix: self.modules[m].prefix.clone(),
            origin: None,
        };
        for item in &ast.items {
            if let ast::ItemKind::Import { path, alias } = &item.kind {
                self.import(&mut frame, path, alias.as_ref());
            }
        }
        for (index, item) in ast.items.iter().enumerate() {
            if let ast::ItemKind::Fn(f) = &item.kind {
                let value = Value::Function { module: m, index };
                self.bind(&mut frame, &f.name, value, false);
            }
        }
        let slots = self.hoist(&mut frame, &ast.items);
        for (item, slot) in ast.items.iter().zip(slots) {
            self.statement(&mut frame, item, slot);
        }
    }

    /// Runs one `let`, `stage`, `config` or `track` statement.
    fn statement(&mut self, frame: &mut Frame, item: &ast::Item, slot: Option<StageId>) {
        match &item.kind {
            ast::ItemKind::Let { name, value } => {
                let binding = qualify(&frame.prefix, &name.name);
                let before = self.stages.len();
                let v = match self.let_override(frame, &name.name, &binding) {
                    Some(v) => v,
                    None => self.eval(frame, &binding, value),
                };
                // A function that declared stages: keep them reachable as `name.stage`.
                let v = if self.stages.len() > before {
                    Value::Group {
                        prefix: binding,
                        ret: Box::new(v),
                    }
                } else {
                    v
                };
                self.bind(frame, name, v, false);
            }
            ast::ItemKind::Stage { name, body } => match body {
                ast::StageBody::Kind { kind, block } => {
                    if let Some(id) = slot {
                        self.instantiate(frame, id, kind, block);
                    }
                }
                ast::StageBody::Expr(e) => {
                    let binding = qualify(&frame.prefix, &name.name);
                    let before = self.stages.len();
                    let ret = self.eval(frame, &binding, e);
                    let is_call = matches!(e.kind, ast::ExprKind::Call { .. });
                    if (self.stages.len() == before && ret != Value::Error) || !is_call {
                        self.not_a_stage(frame, name, e);
                    }
                    let value = Value::Group {
                        prefix: binding,
                        ret: Box::new(ret),
                    };
                    self.bind(frame, name, value, true);
                }
            },
            ast::ItemKind::Config(block) => {
                self.settings(frame, settings::Block::Config, Some(block), item)
            }
            ast::ItemKind::Track(block) => {
                self.settings(frame, settings::Block::Track, Some(block), item)
            }
            ast::ItemKind::Store(block) => {
                self.settings(frame, settings::Block::Store, Some(block), item)
            }
            ast::ItemKind::Import { .. } | ast::ItemKind::Fn(_) => {}
        }
    }

    /// Declares the `stage NAME = KIND { ... }` statements of a block before any runs.
    fn hoist(&mut self, frame: &mut Frame, items: &[ast::Item]) -> Vec<Option<StageId>> {
        items
            .iter()
            .map(|item| match &item.kind {
                ast::ItemKind::Stage {
                    name,
                    body: ast::StageBody::Kind { kind, .. },
                } => {
                    let qualified = qualify(&frame.prefix, &name.name);
                    let decl = self.loc(frame, name.span);
                    let origin = frame.origin;
                    let id = self.declare_stage(
                        qualified,
                        crate::stages::kind(&kind.name),
                        decl,
                        origin,
                    );
                    // A duplicate is reported once; binding it to an error keeps its uses quiet.
                    let value = id.map_or(Value::Error, Value::Stage);
                    self.bind(frame, name, value, true);
                    id
                }
                _ => None,
            })
            .collect()
    }

    /// `stage x = <expression>` where the expression declared no stages.
    fn not_a_stage(&mut self, frame: &Frame, name: &ast::Ident, e: &ast::Expr) {
        let loc = self.loc(frame, e.span);
        let d = match &e.kind {
            ast::ExprKind::Record(_) => Diag::error("ptl::not_a_stage", format!("stage `{}` has no kind", name.name))
                .label(loc, "a record, not a stage")
                .help(format!("name the kind before the block: `stage {} = sft {{ ... }}`; `ptl doc` lists the kinds", name.name)),
            ast::ExprKind::Call { callee, .. } => Diag::error(
                "ptl::not_a_stage",
                format!("`{}` declares no stages", ast::path_text(callee)),
            )
            .label(loc, "this call declares no stage")
            .help(format!("bind a plain value with `let {} = ...`", name.name)),
            _ => Diag::error("ptl::not_a_stage", format!("`stage {}` is not given a stage", name.name))
                .label(loc, "not a stage")
                .help(format!(
                    "write `stage {} = KIND {{ ... }}`, or call a function that declares stages; bind values with `let`",
                    name.name
                )),
        };
        self.error(d);
    }

    fn declare_stage(
        &mut self,
        name: String,
        kind: Option<&'static Kind>,
        decl: Loc,
        origin: Option<Loc>,
    ) -> Option<StageId> {
        if let Some(&other) = self.stage_index.get(&name) {
            let first = &self.stages[other];
            // Stages a function declares are shown where the user called the function.
            let (again, before) = match (origin, first.origin) {
                (Some(a), Some(b)) if a != b => (a, b),
                _ => (decl, first.decl),
            };
            let mut d = Diag::error(
                "ptl::duplicate_stage",
                format!("stage `{name}` is declared twice"),
            )
            .label(again, "declared again here");
            if before.file == again.file && before != again {
                d = d.label(before, "first declared here");
            }
            let help = if origin.is_some() {
                "stage names are unique in a pipeline; call the function from separate `stage` or `let` bindings"
            } else {
                "stage names are unique in a pipeline; rename one of them"
            };
            self.error(d.help(help));
            return None;
        }
        let id = self.stages.len();
        self.stages.push(StageSlot {
            name: name.clone(),
            kind,
            decl,
            origin,
            params: BTreeMap::new(),
            locs: BTreeMap::new(),
            deps: Vec::new(),
        });
        self.stage_index.insert(name, id);
        Some(id)
    }

    /// Binds a name in the frame's scope; a name may be bound once per scope.
    fn bind(&mut self, frame: &mut Frame, name: &ast::Ident, value: Value, is_stage: bool) {
        let loc = self.loc(frame, name.span);
        let scope = match &mut frame.locals {
            Some(l) => l,
            None => &mut self.modules[frame.module].globals,
        };
        if let Some(prev) = scope.get(&name.name) {
            let prev_loc = prev.loc;
            if is_stage && matches!(prev.value, Value::Stage(_)) && prev_loc != loc {
                // Reported by declare_stage already.
                return;
            }
            if prev_loc == loc {
                scope.insert(name.name.clone(), Binding { value, loc });
                return;
            }
            let d = Diag::error(
                "ptl::duplicate_name",
                format!("`{}` is defined twice", name.name),
            )
            .label(loc, "defined again here")
            .label(prev_loc, "first defined here")
            .help("names of lets, stages, functions and imports are unique in their scope");
            self.error(d);
            return;
        }
        scope.insert(name.name.clone(), Binding { value, loc });
    }
}

/// `prefix.name`, or `name` at the top level.
fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
