//! `ptl fmt`: prints a parsed file in the one canonical layout, keeping every comment.
//!
//! Layout: two-space indents; one field per line in stage, config and track blocks; lists, records
//! and calls on one line when they fit in 100 columns and hold no comment, else one item per line
//! with a trailing comma; blank lines kept where the source had them (at most one in a row);
//! numbers and strings exactly as written.

use super::ast::*;
use super::source::Span;

const WIDTH: usize = 100;

/// Formats `text` (which must parse as `module`).
pub fn format(text: &str, module: &Module) -> String {
    let mut p = Printer {
        src: text,
        comments: super::scan::comments(text),
        next: 0,
        out: String::new(),
        indent: 0,
        last_end: 0,
        block_start: true,
    };
    for item in &module.items {
        p.item(item);
    }
    p.leading(text.len());
    let mut out = p.out;
    while out.ends_with("\n\n") {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

struct Printer<'a> {
    src: &'a str,
    comments: Vec<Span>,
    /// The first comment not printed yet.
    next: usize,
    out: String,
    indent: usize,
    /// End of the last thing printed (node or comment), in source offsets.
    last_end: usize,
    /// Nothing printed yet in the current block: no blank line goes here.
    block_start: bool,
}

impl Printer<'_> {
    fn text(&self, span: Span) -> &str {
        &self.src[span.start..span.end]
    }

    fn has_comment(&self, span: Span) -> bool {
        self.comments[self.next..]
            .iter()
            .any(|c| c.start >= span.start && c.start < span.end)
    }

    fn pad(&mut self) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
    }

    /// A blank line if the source had one before `pos` (never at the start of a block).
    fn gap(&mut self, pos: usize) {
        let between = &self.src[self.last_end.min(pos)..pos];
        if !self.block_start && between.matches('\n').count() >= 2 {
            self.out.push('\n');
        }
        self.block_start = false;
    }

    /// Prints the comments that start before `pos`, each on its own line.
    fn leading(&mut self, pos: usize) {
        while let Some(c) = self.comments.get(self.next) {
            if c.start >= pos {
                break;
            }
            let span = *c;
            self.next += 1;
            self.gap(span.start);
            self.pad();
            self.out.push_str(self.src[span.start..span.end].trim_end());
            self.out.push('\n');
            self.last_end = span.end;
        }
    }

    /// Ends the current line, with the comment that followed `end` on the same source line.
    fn end_line(&mut self, end: usize) {
        self.last_end = end;
        if let Some(c) = self.comments.get(self.next) {
            let between = self.src.get(end..c.start).unwrap_or("\n");
            if c.start >= end
                && between
                    .chars()
                    .all(|ch| ch == ' ' || ch == '\t' || ch == ',')
            {
                let span = *c;
                self.next += 1;
                self.out.push_str("  ");
                self.out.push_str(self.src[span.start..span.end].trim_end());
                self.last_end = span.end;
            }
        }
        self.out.push('\n');
    }

    /// Starts a line for a node at `pos`: its leading comments, a kept blank line, the indent.
    fn start_line(&mut self, pos: usize) {
        self.leading(pos);
        self.gap(pos);
        self.pad();
    }

    fn item(&mut self, item: &Item) {
        self.start_line(item.span.start);
        match &item.kind {
            ItemKind::Import { path, alias } => {
                let mut s = format!("import {}", self.text(path.span));
                if let Some(a) = alias {
                    s.push_str(&format!(" as {}", a.name));
                }
                self.out.push_str(&s);
                self.end_line(item.span.end);
            }
            ItemKind::Config(block) => {
                self.out.push_str("config ");
                self.block(block);
                self.end_line(item.span.end);
            }
            ItemKind::Track(block) => {
                self.out.push_str("track ");
                self.block(block);
                self.end_line(item.span.end);
            }
            ItemKind::Store(block) => {
                self.out.push_str("store ");
                self.block(block);
                self.end_line(item.span.end);
            }
            ItemKind::Let { name, value } => {
                self.out.push_str(&format!("let {} = ", name.name));
                self.expr_at_line(value);
                self.end_line(item.span.end);
            }
            ItemKind::Stage { name, body } => {
                self.out.push_str(&format!("stage {} = ", name.name));
                match body {
                    StageBody::Kind { kind, block } => {
                        self.out.push_str(&kind.name);
                        self.out.push(' ');
                        self.block(block);
                    }
                    StageBody::Expr(e) => self.expr_at_line(e),
                }
                self.end_line(item.span.end);
            }
            ItemKind::Fn(f) => self.function(f, item.span),
        }
    }

    fn function(&mut self, f: &FnDecl, span: Span) {
        let params: Vec<String> = f
            .params
            .iter()
            .map(|p| match &p.default {
                Some(d) => self.inline(d).map(|d| format!("{} = {d}", p.name.name)),
                None => Some(p.name.name.clone()),
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        let head = format!("fn {}({}) {{", f.name.name, params.join(", "));
        let params_span = match (f.params.first(), f.params.last()) {
            (Some(a), Some(b)) => Span::new(a.span.start, b.span.end),
            _ => Span::new(f.name.span.end, f.name.span.end),
        };
        let fits = self.indent * 2 + head.len() <= WIDTH
            && !self.has_comment(params_span)
            && params.len() == f.params.len();
        if fits {
            self.out.push_str(&head);
            self.end_line(f.name.span.end);
        } else {
            self.out.push_str(&format!("fn {}(", f.name.name));
            self.end_line(f.name.span.end);
            self.indent += 1;
            self.block_start = true;
            for p in &f.params {
                self.start_line(p.span.start);
                self.out.push_str(&p.name.name);
                if let Some(d) = &p.default {
                    self.out.push_str(" = ");
                    self.expr_at_line(d);
                }
                self.out.push(',');
                self.end_line(p.span.end);
            }
            self.indent -= 1;
            self.leading(params_span.end);
            self.pad();
            self.out.push_str(") {");
            self.end_line(params_span.end);
        }
        self.indent += 1;
        self.block_start = true;
        for item in &f.body {
            self.item(item);
        }
        if let Some(r) = &f.ret {
            self.start_line(r.span.start.saturating_sub(0));
            self.out.push_str("return ");
            self.expr_at_line(r);
            self.end_line(r.span.end);
        }
        self.leading(f.close.start);
        self.indent -= 1;
        self.pad();
        self.out.push('}');
        self.block_start = false;
        self.last_end = span.end;
        self.end_line(span.end);
    }

    /// `{` fields `}`; the caller ends the line.
    fn block(&mut self, block: &Block) {
        if block.fields.is_empty() && !self.has_comment(block.span) {
            self.out.push_str("{}");
            self.last_end = block.span.end;
            return;
        }
        self.out.push('{');
        self.end_line(block.span.start + 1);
        self.indent += 1;
        self.block_start = true;
        for f in &block.fields {
            self.field_line(f);
        }
        self.leading(block.span.end - 1);
        self.indent -= 1;
        self.pad();
        self.out.push('}');
        self.last_end = block.span.end;
    }

    fn field_line(&mut self, f: &Field) {
        self.start_line(f.span.start);
        self.out.push_str(&format!("{} = ", f.name.name));
        self.expr_at_line(&f.value);
        self.end_line(f.span.end);
    }

    /// The current line's column, for width decisions.
    fn column(&self) -> usize {
        self.out.len() - self.out.rfind('\n').map_or(0, |i| i + 1)
    }

    /// Prints an expression that starts on the current line, breaking it when it does not fit.
    fn expr_at_line(&mut self, e: &Expr) {
        if let Some(s) = self.inline(e) {
            if self.column() + s.len() <= WIDTH || !breakable(e) {
                self.out.push_str(&s);
                self.last_end = e.span.end;
                return;
            }
        }
        match &e.kind {
            ExprKind::List(items) => {
                self.out.push('[');
                self.end_line(e.span.start + 1);
                self.indent += 1;
                self.block_start = true;
                for i in items {
                    self.start_line(i.span.start);
                    self.expr_at_line(i);
                    self.out.push(',');
                    self.end_line(i.span.end);
                }
                self.close(e.span, "]");
            }
            ExprKind::Record(fields) => {
                self.out.push('{');
                self.end_line(e.span.start + 1);
                self.indent += 1;
                self.block_start = true;
                for f in fields {
                    self.field_line(f);
                }
                self.close(e.span, "}");
            }
            ExprKind::Call { callee, args } => {
                self.out.push_str(&path_text(callee));
                self.out.push('(');
                self.end_line(path_span(callee).end + 1);
                self.indent += 1;
                self.block_start = true;
                for a in args {
                    self.start_line(a.span.start);
                    if let Some(n) = &a.name {
                        self.out.push_str(&format!("{} = ", n.name));
                    }
                    self.expr_at_line(&a.value);
                    self.out.push(',');
                    self.end_line(a.span.end);
                }
                self.close(e.span, ")");
            }
            _ => {
                // Not breakable and holding a comment: print it plainly; the comment follows the line.
                let s = self.plain(e);
                self.out.push_str(&s);
                self.last_end = e.span.end;
            }
        }
    }

    fn close(&mut self, span: Span, closer: &str) {
        self.leading(span.end - 1);
        self.indent -= 1;
        self.pad();
        self.out.push_str(closer);
        self.last_end = span.end;
    }

    /// One-line form, or `None` if a comment sits inside.
    fn inline(&self, e: &Expr) -> Option<String> {
        if self.has_comment(e.span) {
            return None;
        }
        Some(self.plain(e))
    }

    fn plain(&self, e: &Expr) -> String {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) => {
                self.text(e.span).to_string()
            }
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::List(items) => {
                let parts: Vec<String> = items.iter().map(|i| self.plain(i)).collect();
                format!("[{}]", parts.join(", "))
            }
            ExprKind::Record(fields) if fields.is_empty() => "{}".to_string(),
            ExprKind::Record(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|f| format!("{} = {}", f.name.name, self.plain(&f.value)))
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }
            ExprKind::Path(parts) => path_text(parts),
            ExprKind::Call { callee, args } => {
                let parts: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{} = {}", n.name, self.plain(&a.value)),
                        None => self.plain(&a.value),
                    })
                    .collect();
                format!("{}({})", path_text(callee), parts.join(", "))
            }
            ExprKind::Neg(x) => format!("-{}", self.plain(x)),
            ExprKind::Binary { op, lhs, rhs } => {
                format!("{} {} {}", self.plain(lhs), op.symbol(), self.plain(rhs))
            }
            ExprKind::Paren(x) => format!("({})", self.plain(x)),
        }
    }
}

fn breakable(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::List(items) => !items.is_empty(),
        ExprKind::Record(fields) => !fields.is_empty(),
        ExprKind::Call { args, .. } => !args.is_empty(),
        _ => false,
    }
}
