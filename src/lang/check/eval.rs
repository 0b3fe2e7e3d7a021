//! Expressions: literals, arithmetic, names and dotted paths, calls of builtins and user functions.

use super::{Binding, Checker, Frame, MAX_CALL_DEPTH};
use crate::lang::ast::{self, path_span, path_text, Arg, BinOp, Expr, ExprKind};
use crate::lang::diag::{did_you_mean, Diag};
use crate::lang::source::{Loc, Span};
use crate::lang::value::Value;
use std::collections::{BTreeMap, HashMap};

impl Checker {
    /// Evaluates `e`; `binding` qualifies stages that functions called from `e` declare.
    pub(super) fn eval(&mut self, frame: &Frame, binding: &str, e: &Expr) -> Value {
        if self.budget == 0 {
            return Value::Error;
        }
        if self.budget == 1 {
            self.exhausted(frame, e.span);
            return Value::Error;
        }
        self.budget -= 1;
        match &e.kind {
            ExprKind::Int(i) => Value::Int(*i),
            ExprKind::Float(f) => Value::Float(*f),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::List(items) => {
                Value::List(items.iter().map(|i| self.eval(frame, binding, i)).collect())
            }
            ExprKind::Record(fields) => {
                let mut map = BTreeMap::new();
                let mut seen: HashMap<&str, Span> = HashMap::new();
                for f in fields {
                    let v = self.eval(frame, binding, &f.value);
                    if let Some(first) = seen.insert(&f.name.name, f.name.span) {
                        self.duplicate_field(frame, &f.name, first);
                    }
                    map.insert(f.name.name.clone(), v);
                }
                Value::Record(map)
            }
            ExprKind::Path(parts) => {
                let v = self.resolve_path(frame, parts, false);
                self.charge(frame, e.span, v)
            }
            ExprKind::Call { callee, args } => {
                let f = self.resolve_path(frame, callee, true);
                self.call(frame, binding, f, callee, args, e.span)
            }
            ExprKind::Paren(inner) => self.eval(frame, binding, inner),
            ExprKind::Neg(inner) => match self.eval(frame, binding, inner) {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Float(f) => Value::Float(-f),
                Value::Error => Value::Error,
                other => {
                    let d = Diag::error(
                        "ptl::type_mismatch",
                        format!("cannot negate {}", other.a_describe()),
                    )
                    .label(
                        self.loc(frame, inner.span),
                        format!("this is {}", other.a_describe()),
                    )
                    .help("only numbers can be negated");
                    self.error(d);
                    Value::Error
                }
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.eval(frame, binding, lhs);
                let b = self.eval(frame, binding, rhs);
                let v = self.binary(frame, *op, a, b, e.span, rhs.span);
                self.charge(frame, e.span, v)
            }
        }
    }

    /// Counts a value's size against the budget, so values that double in size stop like loops do.
    fn charge(&mut self, frame: &Frame, span: Span, v: Value) -> Value {
        let cost = v.weight(self.budget as usize + 1) as u64;
        if cost <= 1 {
            return v;
        }
        if cost >= self.budget {
            self.budget = 1;
            self.exhausted(frame, span);
            return Value::Error;
        }
        self.budget -= cost;
        v
    }

    pub(super) fn exhausted(&mut self, frame: &Frame, span: Span) {
        if self.budget > 1 {
            return;
        }
        self.budget = 0;
        let d = Diag::error("ptl::too_complex", "the pipeline takes too many steps to evaluate")
            .label(self.loc(frame, span), "evaluation stopped here")
            .help("look for functions that call each other many times over, or values that double in size");
        self.error(d);
    }

    fn binary(
        &mut self,
        frame: &Frame,
        op: BinOp,
        a: Value,
        b: Value,
        span: Span,
        rhs: Span,
    ) -> Value {
        use Value::*;
        let num = |v: &Value| match v {
            Int(i) => Some(*i as f64),
            Float(f) => Some(*f),
            _ => Option::None,
        };
        let result = match (op, &a, &b) {
            (_, Error, _) | (_, _, Error) => return Error,
            (BinOp::Add, Str(x), Str(y)) => Some(Str(format!("{x}{y}"))),
            (BinOp::Add, List(x), List(y)) => Some(List(x.iter().chain(y).cloned().collect())),
            (BinOp::Div, _, _) if num(&b) == Some(0.0) && num(&a).is_some() => {
                let d = Diag::error("ptl::division_by_zero", "division by zero")
                    .label(self.loc(frame, rhs), "this is zero")
                    .help("divide by a number other than 0");
                self.error(d);
                return Error;
            }
            (BinOp::Div, _, _) => num(&a).zip(num(&b)).map(|(x, y)| Float(x / y)),
            (_, Int(x), Int(y)) => match op {
                BinOp::Add => x.checked_add(*y),
                BinOp::Sub => x.checked_sub(*y),
                _ => x.checked_mul(*y),
            }
            .map(Int),
            _ => num(&a).zip(num(&b)).map(|(x, y)| {
                Float(match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    _ => x * y,
                })
            }),
        };
        match result {
            Some(Float(f)) if !f.is_finite() => {
                let d = Diag::error("ptl::bad_number", "the result is not a finite number")
                    .label(self.loc(frame, span), "overflows")
                    .help("keep numbers within the range of 64-bit floats");
                self.error(d);
                Error
            }
            Some(v) => v,
            Option::None if matches!((&a, &b), (Int(_), Int(_))) => {
                let d = Diag::error("ptl::bad_number", "integer overflow")
                    .label(self.loc(frame, span), "does not fit in 64 bits")
                    .help("keep integers within 64 bits");
                self.error(d);
                Error
            }
            Option::None => {
                let d = Diag::error(
                    "ptl::type_mismatch",
                    format!(
                        "cannot apply `{}` to {} and {}",
                        op.symbol(),
                        a.a_describe(),
                        b.a_describe()
                    ),
                )
                .label(self.loc(frame, span), "here")
                .help("+ - * / work on numbers; + also joins strings and lists");
                self.error(d);
                Error
            }
        }
    }

    /// Looks up a name: the function's locals, then the module's globals, then the builtins.
    fn lookup(&self, frame: &Frame, name: &str) -> Option<Value> {
        if let Some(b) = frame.locals.as_ref().and_then(|l| l.get(name)) {
            return Some(b.value.clone());
        }
        if let Some(b) = self.modules[frame.module].globals.get(name) {
            return Some(b.value.clone());
        }
        super::builtins::value(name)
    }

    /// A call of a builtin (`lora(...)`) whose name a stage or `let` of this module took: says which
    /// binding hides it, and where.
    fn shadowed_builtin(
        &self,
        frame: &Frame,
        callee: &[ast::Ident],
        found: &Value,
    ) -> Option<Diag> {
        let [name] = callee else { return None };
        let name = name.name.as_str();
        super::builtins::value(name)?;
        let binding = frame
            .locals
            .as_ref()
            .and_then(|l| l.get(name))
            .or_else(|| self.modules[frame.module].globals.get(name))?;
        let (file, start) = (binding.loc.file, binding.loc.span.start);
        let (line, _) = self.sources.line_col(file, start);
        let what = match found {
            Value::Stage(_) => "stage",
            _ => "binding",
        };
        Some(
            Diag::error(
                "ptl::shadowed_builtin",
                format!("`{name}` is the {what} declared on line {line}, which hides the builtin `{name}(...)`"),
            )
            .label(self.loc(frame, path_span(callee)), "calls the builtin here")
            .label(binding.loc, format!("the {what} `{name}` takes the name"))
            .help(format!(
                "rename the {what} (for example `{name}_{what}`): stages and `let`s share one namespace with the builtins"
            )),
        )
    }

    /// "declared further down" help when a top-level `let` or `stage v = f()` comes after its use.
    fn declared_later(&self, frame: &Frame, name: &str, used_at: Span) -> Option<String> {
        let m = &self.modules[frame.module];
        if frame.file != m.file {
            return None;
        }
        m.ast.items.iter().find_map(|item| {
            let declared = match &item.kind {
                ast::ItemKind::Let { name: n, .. } | ast::ItemKind::Stage { name: n, .. } => n,
                _ => return None,
            };
            (declared.name == name && declared.span.start > used_at.end && item.span.start > used_at.end).then(|| {
                let (line, _) = self.sources.line_col(m.file, declared.span.start);
                format!("`{name}` is declared further down, on line {line}; `let` and `stage x = f(...)` bindings run in order: move it up")
            })
        })
    }

    fn visible_names(&self, frame: &Frame, functions: bool) -> Vec<String> {
        let locals = frame.locals.iter().flat_map(|l| l.iter());
        let globals = self.modules[frame.module].globals.iter();
        let mut names: Vec<String> = locals
            .chain(globals)
            .filter(|(_, b)| {
                !functions || matches!(b.value, Value::Function { .. } | Value::Module(_))
            })
            .map(|(n, _)| n.clone())
            .collect();
        names.extend(super::builtins::NAMES.iter().map(|s| s.to_string()));
        names.sort();
        names
    }

    /// Resolves `a.b.c`: a name, then members (stage outputs, grouped stages, module members, record fields).
    fn resolve_path(&mut self, frame: &Frame, parts: &[ast::Ident], as_function: bool) -> Value {
        let first = &parts[0];
        let mut value = match self.lookup(frame, &first.name) {
            Some(v) => v,
            None => {
                let names = self.visible_names(frame, as_function);
                let help = did_you_mean(&first.name, names.iter().map(String::as_str))
                    .or_else(|| self.declared_later(frame, &first.name, first.span));
                let (code, what) = if as_function {
                    ("ptl::unknown_function", "function")
                } else if parts.len() > 1 {
                    ("ptl::unknown_reference", "stage or name")
                } else {
                    ("ptl::unknown_reference", "name")
                };
                let d = Diag::error(code, format!("unknown {what} `{}`", first.name))
                    .label(self.loc(frame, first.span), "not defined")
                    .help(help.unwrap_or_else(|| {
                        if as_function {
                            format!(
                                "functions are defined with `fn`; builtins: {}",
                                super::builtins::NAMES.join(", ")
                            )
                        } else {
                            "names come from `let`, `stage`, `fn`, `import` and function parameters"
                                .to_string()
                        }
                    }));
                self.error(d);
                return Value::Error;
            }
        };
        for (i, seg) in parts.iter().enumerate().skip(1) {
            let owner = path_text(&parts[..i]);
            value = self.member(frame, value, &owner, seg);
            if value == Value::Error {
                return Value::Error;
            }
        }
        let _ = path_span(parts);
        value
    }

    fn member(&mut self, frame: &Frame, value: Value, owner: &str, seg: &ast::Ident) -> Value {
        let loc = self.loc(frame, seg.span);
        match value {
            Value::Error => Value::Error,
            Value::Stage(id) => {
                let Some(kind) = self.stages[id].kind else {
                    return Value::Error;
                };
                match kind.output(&seg.name) {
                    Some(o) => Value::Output {
                        stage: id,
                        output: seg.name.clone(),
                        ty: o.ty.clone(),
                    },
                    None => {
                        let outputs: Vec<&str> = kind.outputs.iter().map(|o| o.name).collect();
                        let help =
                            did_you_mean(&seg.name, outputs.iter().copied()).unwrap_or_else(|| {
                                format!(
                                    "a {} stage's outputs are: {}",
                                    kind.name,
                                    outputs.join(", ")
                                )
                            });
                        self.error(
                            Diag::error(
                                "ptl::unknown_output",
                                format!(
                                    "stage `{owner}` ({}) has no output `{}`",
                                    kind.name, seg.name
                                ),
                            )
                            .label(loc, "unknown output")
                            .help(help),
                        );
                        Value::Error
                    }
                }
            }
            Value::Group { prefix, ret } => {
                let full = format!("{prefix}.{}", seg.name);
                if let Some(&id) = self.stage_index.get(&full) {
                    return Value::Stage(id);
                }
                let nested = format!("{full}.");
                if self.stage_index.keys().any(|k| k.starts_with(&nested)) {
                    return Value::Group {
                        prefix: full,
                        ret: Box::new(Value::None),
                    };
                }
                // Not one of the group's stages: a member of what the function returned.
                let ret_has = match &*ret {
                    Value::Stage(id) => self.stages[*id]
                        .kind
                        .is_some_and(|k| k.output(&seg.name).is_some()),
                    Value::Record(fields) => fields.contains_key(&seg.name),
                    Value::Group { .. } | Value::Module(_) | Value::Error => true,
                    _ => false,
                };
                if ret_has {
                    return self.member(frame, *ret, owner, seg);
                }
                let mut candidates: Vec<String> = self
                    .stage_index
                    .keys()
                    .filter_map(|k| k.strip_prefix(&format!("{prefix}.")))
                    .map(|k| k.split('.').next().unwrap_or(k).to_string())
                    .collect();
                if let Value::Stage(id) = &*ret {
                    if let Some(k) = self.stages[*id].kind {
                        candidates.extend(k.outputs.iter().map(|o| o.name.to_string()));
                    }
                }
                candidates.sort();
                candidates.dedup();
                let help = did_you_mean(&seg.name, candidates.iter().map(String::as_str))
                    .unwrap_or_else(|| format!("`{owner}` has: {}", candidates.join(", ")));
                self.error(
                    Diag::error(
                        "ptl::unknown_reference",
                        format!("`{owner}` has no stage or output `{}`", seg.name),
                    )
                    .label(
                        loc,
                        "not declared by the function, nor an output of what it returned",
                    )
                    .help(help),
                );
                Value::Error
            }
            Value::Module(m) => match self.modules[m].globals.get(&seg.name) {
                Some(b) => b.value.clone(),
                None => {
                    let names: Vec<String> = self.modules[m].globals.keys().cloned().collect();
                    let help = did_you_mean(&seg.name, names.iter().map(String::as_str))
                        .unwrap_or_else(|| {
                            "an imported file's `let`, `fn` and `stage` names can be used"
                                .to_string()
                        });
                    self.error(
                        Diag::error(
                            "ptl::unknown_reference",
                            format!("module `{owner}` has no `{}`", seg.name),
                        )
                        .label(loc, "not defined there")
                        .help(help),
                    );
                    Value::Error
                }
            },
            Value::Record(mut fields) => match fields.remove(&seg.name) {
                Some(v) => v,
                None => {
                    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                    let help = did_you_mean(&seg.name, names.iter().copied())
                        .unwrap_or_else(|| format!("its fields: {}", names.join(", ")));
                    self.error(
                        Diag::error(
                            "ptl::unknown_reference",
                            format!("record `{owner}` has no field `{}`", seg.name),
                        )
                        .label(loc, "no such field")
                        .help(help),
                    );
                    Value::Error
                }
            },
            other => {
                self.error(
                    Diag::error(
                        "ptl::no_member",
                        format!(
                            "`{owner}` is {}; it has no member `{}`",
                            other.a_describe(),
                            seg.name
                        ),
                    )
                    .label(loc, "no such member")
                    .help(
                        "only stages, imported modules, groups of stages and records have members",
                    ),
                );
                Value::Error
            }
        }
    }

    fn call(
        &mut self,
        frame: &Frame,
        binding: &str,
        f: Value,
        callee: &[ast::Ident],
        args: &[Arg],
        span: Span,
    ) -> Value {
        if self.budget == 0 {
            return Value::Error;
        }
        match f {
            Value::Builtin(name) => super::builtins::call(self, frame, binding, name, args, span),
            Value::Function { module, index } => {
                self.call_user(frame, binding, module, index, callee, args, span)
            }
            Value::Error => {
                for a in args {
                    self.eval(frame, binding, &a.value);
                }
                Value::Error
            }
            other => {
                if let Some(d) = self.shadowed_builtin(frame, callee, &other) {
                    self.error(d);
                    return Value::Error;
                }
                let d = Diag::error(
                    "ptl::not_callable",
                    format!(
                        "`{}` is {}, not a function",
                        path_text(callee),
                        other.a_describe()
                    ),
                )
                .label(self.loc(frame, path_span(callee)), "called here")
                .help("only functions (`fn`) and builtins can be called");
                self.error(d);
                Value::Error
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_user(
        &mut self,
        frame: &Frame,
        binding: &str,
        module: usize,
        index: usize,
        callee: &[ast::Ident],
        args: &[Arg],
        span: Span,
    ) -> Value {
        let ast = self.modules[module].ast.clone();
        let ast::ItemKind::Fn(decl) = &ast.items[index].kind else {
            return Value::Error;
        };
        if self.depth >= MAX_CALL_DEPTH {
            // One report is enough; the calls above this one would each hit the limit again.
            if std::mem::replace(&mut self.recursion_reported, true) {
                return Value::Error;
            }
            let d = Diag::error(
                "ptl::recursion_limit",
                format!("calls nest deeper than {MAX_CALL_DEPTH}"),
            )
            .label(self.loc(frame, span), "too deep here")
            .help(
                "a function that calls itself without end never finishes; functions cannot recurse",
            );
            self.error(d);
            return Value::Error;
        }
        let params: Vec<(&str, bool)> = decl
            .params
            .iter()
            .map(|p| (p.name.name.as_str(), p.default.is_some()))
            .collect();
        let signature = format!(
            "{}({})",
            decl.name.name,
            decl.params
                .iter()
                .map(|p| if p.default.is_some() {
                    format!("{} = ...", p.name.name)
                } else {
                    p.name.name.clone()
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let name = path_text(callee);
        let bound = self.bind_args(frame, &name, &signature, &params, args, span);
        // Argument values are evaluated in the caller's scope.
        let values: Vec<Option<Value>> = bound
            .iter()
            .map(|a| a.map(|a| self.eval(frame, binding, &a.value)))
            .collect();
        let mut callee_frame = Frame {
            module,
            file: self.modules[module].file,
            locals: Some(HashMap::new()),
            prefix: binding.to_string(),
            origin: frame.origin.or(Some(self.loc(frame, span))),
        };
        let callee_file = self.modules[module].file;
        for (p, v) in decl.params.iter().zip(values) {
            let v = match (v, &p.default) {
                (Some(v), _) => v,
                (None, Some(default)) => self.eval(&callee_frame, binding, default),
                (None, None) => Value::Error,
            };
            let loc = Loc {
                file: callee_file,
                span: p.name.span,
            };
            if let Some(l) = &mut callee_frame.locals {
                if l.insert(p.name.name.clone(), Binding { value: v, loc })
                    .is_some()
                {
                    let d = Diag::error(
                        "ptl::duplicate_name",
                        format!("parameter `{}` is declared twice", p.name.name),
                    )
                    .label(loc, "declared again here")
                    .help("give each parameter its own name");
                    self.error(d);
                }
            }
        }
        self.depth += 1;
        let slots = self.hoist(&mut callee_frame, &decl.body);
        for (item, slot) in decl.body.iter().zip(slots) {
            self.statement(&mut callee_frame, item, slot);
        }
        let ret = match &decl.ret {
            Some(e) => self.eval(&callee_frame, binding, e),
            None => Value::None,
        };
        self.depth -= 1;
        ret
    }

    /// Matches call arguments to parameters `(name, has_default)`; reports arity and naming errors.
    /// Returns the argument for each parameter, or `None` where it was not given.
    pub(super) fn bind_args<'a>(
        &mut self,
        frame: &Frame,
        name: &str,
        signature: &str,
        params: &[(&str, bool)],
        args: &'a [Arg],
        span: Span,
    ) -> Vec<Option<&'a Arg>> {
        let mut bound: Vec<Option<&Arg>> = vec![None; params.len()];
        let mut positional = 0;
        let mut seen_named = false;
        let mut misplaced = false;
        for a in args {
            match &a.name {
                None => {
                    if seen_named {
                        let d = Diag::error(
                            "ptl::bad_argument",
                            "positional argument after a named one",
                        )
                        .label(self.loc(frame, a.span), "positional")
                        .help("put positional arguments first, or name this one too");
                        self.error(d);
                        misplaced = true;
                        continue;
                    }
                    if positional >= params.len() {
                        let d = Diag::error(
                            "ptl::arity",
                            format!(
                                "`{name}` takes {} argument(s), found {}",
                                params.len(),
                                positional + 1
                            ),
                        )
                        .label(self.loc(frame, a.span), "unexpected argument")
                        .help(format!("the signature is `{signature}`"));
                        self.error(d);
                        positional += 1;
                        continue;
                    }
                    bound[positional] = Some(a);
                    positional += 1;
                }
                Some(n) => {
                    seen_named = true;
                    match params.iter().position(|(p, _)| *p == n.name) {
                        None => {
                            let help = did_you_mean(&n.name, params.iter().map(|(p, _)| *p))
                                .unwrap_or_else(|| format!("the signature is `{signature}`"));
                            let d = Diag::error(
                                "ptl::unknown_argument",
                                format!("`{name}` has no parameter `{}`", n.name),
                            )
                            .label(self.loc(frame, n.span), "unknown parameter")
                            .help(help);
                            self.error(d);
                        }
                        Some(i) if bound[i].is_some() => {
                            let d = Diag::error(
                                "ptl::duplicate_argument",
                                format!("argument `{}` is given twice", n.name),
                            )
                            .label(self.loc(frame, a.span), "given again here")
                            .help(format!("the signature is `{signature}`"));
                            self.error(d);
                        }
                        Some(i) => bound[i] = Some(a),
                    }
                }
            }
        }
        for (i, (p, has_default)) in params.iter().enumerate() {
            if bound[i].is_none() && !has_default && !misplaced {
                let d = Diag::error("ptl::arity", format!("missing argument `{p}` of `{name}`"))
                    .label(self.loc(frame, span), format!("`{p}` is not given"))
                    .help(format!("the signature is `{signature}`"));
                self.error(d);
            }
        }
        bound
    }

    pub(super) fn duplicate_field(&mut self, frame: &Frame, name: &ast::Ident, first: Span) {
        let d = Diag::error(
            "ptl::duplicate_field",
            format!("field `{}` is set twice", name.name),
        )
        .label(self.loc(frame, name.span), "set again here")
        .label(self.loc(frame, first), "first set here")
        .help("remove one of them");
        self.error(d);
    }
}
