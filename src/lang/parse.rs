//! The pest parser and the conversion of its parse tree into the AST (grammar/ptl.pest).

use super::ast::*;
use super::diag::Diag;
use super::scan;
use super::source::{FileId, Loc, Span};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::collections::BTreeSet;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/ptl.pest"]
struct PtlParser;

/// An expression may chain at most this many operators.
const MAX_OPERATORS: usize = 256;

/// Parses one file. Syntax errors stop at the first one; value errors (bad escapes, numbers out
/// of range) are all collected.
pub fn parse(file: FileId, text: &str) -> Result<Module, Vec<Diag>> {
    if let Some(d) = scan::scan(file, text) {
        return Err(vec![d]);
    }
    let mut pairs = match parse_rule(Rule::file, text) {
        Ok(p) => p,
        Err(e) => return Err(vec![syntax_error(file, text, &e)]),
    };
    let mut b = Builder::new(file, text);
    let root = pairs.next().expect("file rule");
    let items = root
        .into_inner()
        .filter(|p| p.as_rule() != Rule::EOI)
        .map(|p| b.item(p))
        .collect();
    if b.errors.is_empty() {
        Ok(Module { items })
    } else {
        Err(b.errors)
    }
}

/// Parses the value of a `--set path=value` override: the expression `text[start..]`, nothing
/// else; spans point into `text`.
pub fn parse_expr(file: FileId, text: &str, start: usize) -> Result<Expr, Vec<Diag>> {
    let value = &text[start..];
    if let Some(mut d) = scan::scan(file, value) {
        shift_diag(&mut d, start as isize);
        return Err(vec![d]);
    }
    // `expr ~ EOI` is not a rule of its own: parse `let _v = <value>` and take the value.
    let prefix = "let _v = ";
    let wrapped = format!("{prefix}{value}");
    let delta = start as isize - prefix.len() as isize;
    let mut b = Builder::new(file, &wrapped);
    let items: Vec<Item> = match parse_rule(Rule::file, &wrapped) {
        Ok(mut p) => p
            .next()
            .expect("file rule")
            .into_inner()
            .filter(|p| p.as_rule() != Rule::EOI)
            .map(|p| b.item(p))
            .collect(),
        Err(e) => {
            let d = syntax_error(file, &wrapped, &e);
            let pos = d.labels.first().map_or(prefix.len(), |(s, _)| s.start);
            let d = Diag::error("ptl::bad_set", "`--set` takes one value")
                .label(Loc { file, span: Span::new(pos, wrapped.len()) }, "not part of one value")
                .help("write one value: `0.2`, `\"text\"`, `[1, 2]` or `lora(rank = 8)`; quote the whole argument in the shell");
            b.errors.push(d);
            Vec::new()
        }
    };
    if !b.errors.is_empty() {
        for d in &mut b.errors {
            shift_diag(d, delta);
        }
        return Err(b.errors);
    }
    let single = items.len() == 1;
    match items.into_iter().next() {
        Some(Item {
            kind: ItemKind::Let { mut value, .. },
            ..
        }) if single => {
            shift_expr(&mut value, delta);
            Ok(value)
        }
        _ => Err(vec![Diag::error("ptl::bad_set", "expected one value")
            .label(
                Loc {
                    file,
                    span: Span::new(start, text.len()),
                },
                "not a single value",
            )
            .help(
                "write a value such as `0.2`, `\"text\"` or `lora(rank = 8)`",
            )]),
    }
}

fn shift_span(s: &mut Span, delta: isize) {
    s.start = (s.start as isize + delta).max(0) as usize;
    s.end = (s.end as isize + delta).max(0) as usize;
}

fn shift_diag(d: &mut Diag, delta: isize) {
    for (span, _) in &mut d.labels {
        shift_span(span, delta);
    }
}

fn shift_expr(e: &mut Expr, delta: isize) {
    shift_span(&mut e.span, delta);
    match &mut e.kind {
        ExprKind::List(items) => items.iter_mut().for_each(|i| shift_expr(i, delta)),
        ExprKind::Record(fields) => {
            for f in fields {
                shift_span(&mut f.span, delta);
                shift_span(&mut f.name.span, delta);
                shift_expr(&mut f.value, delta);
            }
        }
        ExprKind::Path(parts) => parts
            .iter_mut()
            .for_each(|p| shift_span(&mut p.span, delta)),
        ExprKind::Call { callee, args } => {
            callee
                .iter_mut()
                .for_each(|p| shift_span(&mut p.span, delta));
            for a in args {
                shift_span(&mut a.span, delta);
                if let Some(n) = &mut a.name {
                    shift_span(&mut n.span, delta);
                }
                shift_expr(&mut a.value, delta);
            }
        }
        ExprKind::Neg(x) | ExprKind::Paren(x) => shift_expr(x, delta),
        ExprKind::Binary { lhs, rhs, .. } => {
            shift_expr(lhs, delta);
            shift_expr(rhs, delta);
        }
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}

/// Parses fast; only a failed parse is repeated with pest's error detail on, for a better message.
/// pest's error-detail switch is process-wide: parses hold this lock so threads do not flip it
/// under each other.
fn parse_rule(rule: Rule, text: &str) -> Result<Pairs<'_, Rule>, Box<pest::error::Error<Rule>>> {
    static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = DETAIL.lock().unwrap_or_else(|e| e.into_inner());
    pest::set_error_detail(false);
    match PtlParser::parse(rule, text) {
        Ok(p) => Ok(p),
        Err(_) => {
            pest::set_error_detail(true);
            let detailed = PtlParser::parse(rule, text).map_err(Box::new);
            pest::set_error_detail(false);
            detailed
        }
    }
}

fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::file
        | Rule::item
        | Rule::fn_stmt
        | Rule::import
        | Rule::config_block
        | Rule::track_block
        | Rule::store_block
        | Rule::let_decl
        | Rule::stage_decl
        | Rule::fn_decl => "a statement",
        Rule::ident | Rule::keyword => "a name",
        Rule::string | Rule::str_body => "a string",
        Rule::block | Rule::record => "`{`",
        Rule::field => "a field (`name = value`)",
        Rule::kind_block => "a stage kind",
        Rule::params | Rule::param => "a parameter",
        Rule::arg => "an argument",
        Rule::return_stmt => "`return`",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::infix => "an operator",
        _ => "a value",
    }
}

const KEYWORDS: &[&str] = &[
    "stage", "let", "fn", "import", "as", "config", "track", "return", "true", "false",
];

/// Words that open a statement without being reserved (a stage may still be named `store`).
const STATEMENT_WORDS: &[&str] = &["store"];

fn syntax_error(file: FileId, text: &str, e: &pest::error::Error<Rule>) -> Diag {
    let attempts = e.parse_attempts();
    // The furthest position any token was tried at is where the text stopped making sense.
    let pos = match (&attempts, e.location.clone()) {
        (Some(a), _) => a.max_position,
        (None, pest::error::InputLocation::Pos(p)) => p,
        (None, pest::error::InputLocation::Span((s, _))) => s,
    }
    .min(text.len());
    // Point at the next token, not at the whitespace before it.
    let pos = pos + (text[pos..].len() - text[pos..].trim_start().len());
    let at = |start: usize, len: usize| Loc {
        file,
        span: Span::new(start, start + len),
    };
    let mut expected: BTreeSet<String> = BTreeSet::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        for r in positives {
            expected.insert(describe(*r).to_string());
        }
    }
    if let Some(attempts) = &attempts {
        for t in attempts.expected_tokens() {
            // ParsingToken is not exported; literal tokens are its `Sensitive` variant.
            if !format!("{t:?}").starts_with("Sensitive") {
                continue;
            }
            let token = t.to_string();
            let named = match token.as_str() {
                "+" | "-" | "*" | "/" => "an operator".to_string(),
                "true" | "false" | "\"" | "(" | "[" => "a value".to_string(),
                "_" => "a name".to_string(),
                t if t.trim().is_empty() || t == "#" => continue,
                t if (KEYWORDS.contains(&t) || STATEMENT_WORDS.contains(&t))
                    && t != "as"
                    && t != "return" =>
                {
                    "a statement".to_string()
                }
                t => format!("`{t}`"),
            };
            expected.insert(named);
        }
    }
    // Operators can follow any value; naming them only adds noise next to a real expectation.
    if expected.len() > 1 {
        expected.remove("an operator");
    }
    if expected.contains("a value") {
        expected.remove("`{`");
        expected.remove("a string");
        expected.remove("a name");
    }
    let expected: Vec<String> = expected.into_iter().collect();
    let wanted = match expected.as_slice() {
        [] => "something else".to_string(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    };
    let tok = token_at(text, pos);
    if tok.is_empty() {
        return Diag::error(
            "ptl::syntax",
            format!("expected {wanted}, found end of file"),
        )
        .label(at(pos, 0), "the file ends here")
        .help(format!("write {wanted} here"));
    }
    if let Some(c) = tok
        .chars()
        .next()
        .filter(|c| !c.is_ascii() && !c.is_alphanumeric())
    {
        let ascii = match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' => " (did you mean `-`?)",
            '\u{201C}' | '\u{201D}' | '\u{201E}' => " (did you mean `\"`?)",
            _ => "",
        };
        return Diag::error(
            "ptl::syntax",
            format!("unexpected `{c}` (U+{:04X})", c as u32),
        )
        .label(at(pos, c.len_utf8()), "not an ASCII symbol")
        .help(format!("ptl's symbols are ASCII{ascii}"));
    }
    // `name =` at the end of a line, then the next field: the value is missing.
    if tok == "=" {
        let before = text[..pos].trim_end();
        let word = before.len()
            - before
                .trim_end_matches(|c: char| c.is_alphanumeric() || c == '_')
                .len();
        let before_word = before[..before.len() - word].trim_end_matches([' ', '\t']);
        if word > 0 && before_word.ends_with('\n') && before_word.trim_end().ends_with('=') {
            let eq = before_word.trim_end().len() - 1;
            return Diag::error("ptl::syntax", "expected a value after `=`")
                .label(at(eq, 1), "no value after this `=`")
                .help("write the value on the same line as its `=`, e.g. `lr = 2e-4`");
        }
    }
    if expected.iter().any(|e| e == "a name") {
        // The keyword is either the token here or the word just before (pest looks past it).
        let before = text[..pos].trim_end();
        let prev_start = before
            .trim_end_matches(|c: char| c.is_alphanumeric() || c == '_')
            .len();
        let (kw, kw_pos) = if KEYWORDS.contains(&tok) {
            (tok, pos)
        } else {
            (&before[prev_start..], prev_start)
        };
        let decl = before[..prev_start].trim_end();
        let after_decl = ["stage", "let", "fn"].iter().any(|d| decl.ends_with(d));
        if KEYWORDS.contains(&kw) && (kw_pos == pos || after_decl) {
            return Diag::error(
                "ptl::syntax",
                format!("`{kw}` is a keyword and cannot be a name"),
            )
            .label(at(kw_pos, kw.len()), "keyword")
            .help(format!(
                "keywords: {}; choose another name",
                KEYWORDS.join(", ")
            ));
        }
    }
    if expected.iter().any(|e| e == "`=`") {
        let before = text[..pos].trim_end();
        let word = &before[before
            .trim_end_matches(|c: char| c.is_alphanumeric() || c == '_')
            .len()..];
        let is_name = word.starts_with(|c: char| c.is_alphabetic() || c == '_');
        if is_name && !KEYWORDS.contains(&word) {
            return Diag::error(
                "ptl::syntax",
                format!("expected `=` after `{word}`, found `{tok}`"),
            )
            .label(at(pos, tok.len()), "expected `=` before this")
            .help(format!(
                "fields and bindings are written `name = value`: `{word} = {tok}`"
            ));
        }
    }
    let mut help = if expected.iter().any(|e| e == "`=`") {
        "fields and bindings are written `name = value`".to_string()
    } else if expected.iter().any(|e| e == "a statement") {
        "a file holds `import`, `config`, `track`, `store`, `let`, `stage` and `fn` statements"
            .to_string()
    } else {
        format!("write {wanted} here")
    };
    // A look-alike of an ASCII symbol (en dash, curly quote) is the usual cause of a puzzling error.
    let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    if let Some(c) = text[line_start..line_end]
        .chars()
        .find(|c| !c.is_ascii() && !c.is_alphanumeric())
    {
        help = format!(
            "this line holds `{c}` (U+{:04X}), which is not ASCII: ptl's symbols are ASCII",
            c as u32
        );
    }
    Diag::error("ptl::syntax", format!("expected {wanted}, found `{tok}`"))
        .label(at(pos, tok.len()), format!("unexpected `{tok}`"))
        .help(help)
}

/// The word or symbol starting at `pos`, for messages.
fn token_at(text: &str, pos: usize) -> &str {
    let rest = &text[pos..];
    let word: usize = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .take(40)
        .map(char::len_utf8)
        .sum();
    if word > 0 {
        &rest[..word]
    } else {
        let c = rest.chars().next().map_or(0, char::len_utf8);
        &rest[..c]
    }
}

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
            .op(Op::prefix(Rule::neg))
    })
}

struct Builder {
    file: FileId,
    errors: Vec<Diag>,
    text: String,
    comments: Vec<Span>,
}

impl Builder {
    fn new(file: FileId, text: &str) -> Self {
        Builder {
            file,
            errors: Vec::new(),
            text: text.to_string(),
            comments: scan::comments(text),
        }
    }

    /// A node's span without the whitespace and comments pest includes after its last token.
    fn span(&self, s: pest::Span) -> Span {
        let start = s.start();
        let mut end = s.end();
        loop {
            let trimmed = start + self.text[start..end].trim_end().len();
            // Comments are sorted and disjoint: the one that could end here is found by its end.
            let comment = self
                .comments
                .binary_search_by_key(&trimmed, |c| c.end)
                .ok()
                .map(|i| self.comments[i])
                .filter(|c| c.start >= start);
            end = match comment {
                Some(c) => c.start,
                None => trimmed,
            };
            if comment.is_none() {
                return Span::new(start, end);
            }
        }
    }

    fn loc(&self, span: Span) -> Loc {
        Loc {
            file: self.file,
            span,
        }
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: p.as_span().into(),
        }
    }

    fn item(&mut self, p: Pair<Rule>) -> Item {
        let span = self.span(p.as_span());
        let rule = p.as_rule();
        let mut inner = p.into_inner();
        let kind = match rule {
            Rule::import => {
                let s = inner.next().expect("import path");
                let path = self.string(s);
                let alias = inner.next().map(|a| self.ident(a));
                ItemKind::Import { path, alias }
            }
            Rule::config_block => ItemKind::Config(self.block(inner.next().expect("block"))),
            Rule::track_block => ItemKind::Track(self.block(inner.next().expect("block"))),
            Rule::store_block => ItemKind::Store(self.block(inner.next().expect("block"))),
            Rule::let_decl => {
                let name = self.ident(inner.next().expect("name"));
                let value = self.expr(inner.next().expect("value"));
                ItemKind::Let { name, value }
            }
            Rule::stage_decl => {
                let name = self.ident(inner.next().expect("name"));
                let body = inner.next().expect("body");
                let body = if body.as_rule() == Rule::kind_block {
                    let mut kb = body.into_inner();
                    let kind = self.ident(kb.next().expect("kind"));
                    let block = self.block(kb.next().expect("block"));
                    StageBody::Kind { kind, block }
                } else {
                    StageBody::Expr(self.expr(body))
                };
                ItemKind::Stage { name, body }
            }
            Rule::fn_decl => {
                let name = self.ident(inner.next().expect("name"));
                let params = inner
                    .next()
                    .expect("params")
                    .into_inner()
                    .map(|param| {
                        let pspan = self.span(param.as_span());
                        let mut pi = param.into_inner();
                        let name = self.ident(pi.next().expect("param name"));
                        let default = pi.next().map(|d| self.expr(d));
                        Param {
                            name,
                            default,
                            span: pspan,
                        }
                    })
                    .collect();
                let mut body = Vec::new();
                let mut ret = None;
                for s in inner {
                    if s.as_rule() == Rule::return_stmt {
                        ret = Some(self.expr(s.into_inner().next().expect("return value")));
                    } else {
                        body.push(self.item(s));
                    }
                }
                ItemKind::Fn(FnDecl {
                    name,
                    params,
                    body,
                    ret,
                    close: Span::new(span.end - 1, span.end),
                })
            }
            r => unreachable!("item rule {r:?}"),
        };
        Item { kind, span }
    }

    fn block(&mut self, p: Pair<Rule>) -> Block {
        let span = self.span(p.as_span());
        Block {
            fields: self.fields(p.into_inner()),
            span,
        }
    }

    fn fields(&mut self, pairs: Pairs<Rule>) -> Vec<Field> {
        pairs
            .map(|f| {
                let span = self.span(f.as_span());
                let mut fi = f.into_inner();
                let name = self.ident(fi.next().expect("field name"));
                let value = self.expr(fi.next().expect("field value"));
                Field { name, value, span }
            })
            .collect()
    }

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(p.as_span());
        let too_many = p
            .clone()
            .into_inner()
            .filter(|q| matches!(q.as_rule(), Rule::add | Rule::sub | Rule::mul | Rule::div))
            .nth(MAX_OPERATORS);
        if let Some(op) = too_many {
            let op_span = Span::from(op.as_span());
            self.errors.push(
                Diag::error(
                    "ptl::too_deep",
                    format!("an expression chains more than {MAX_OPERATORS} operators"),
                )
                .label(self.loc(op_span), "one operator too many")
                .help("split the value into `let` bindings"),
            );
            return Expr {
                kind: ExprKind::Int(0),
                span,
            };
        }
        let this = std::cell::RefCell::new(self);
        pratt()
            .map_primary(|q| this.borrow_mut().primary(q))
            .map_prefix(|op, rhs| {
                let span = Span::new(op.as_span().start(), rhs.span.end);
                Expr {
                    kind: ExprKind::Neg(Box::new(rhs)),
                    span,
                }
            })
            .map_infix(|lhs, op, rhs| {
                let op = match op.as_rule() {
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    _ => BinOp::Div,
                };
                let span = Span::new(lhs.span.start, rhs.span.end);
                Expr {
                    kind: ExprKind::Binary {
                        op,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    },
                    span,
                }
            })
            .parse(p.into_inner())
    }

    fn primary(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(p.as_span());
        let kind = match p.as_rule() {
            Rule::int => {
                let digits: String = p.as_str().chars().filter(|c| *c != '_').collect();
                match digits.parse::<i64>() {
                    Ok(v) => ExprKind::Int(v),
                    Err(_) => {
                        self.errors.push(
                            Diag::error("ptl::bad_number", "integer out of range")
                                .label(self.loc(span), "does not fit in 64 bits")
                                .help("integers range from -9223372036854775807 to 9223372036854775807"),
                        );
                        ExprKind::Int(0)
                    }
                }
            }
            Rule::float => {
                let digits: String = p.as_str().chars().filter(|c| *c != '_').collect();
                match digits.parse::<f64>() {
                    Ok(v) if v.is_finite() => ExprKind::Float(v),
                    _ => {
                        self.errors.push(
                            Diag::error("ptl::bad_number", "number out of range")
                                .label(self.loc(span), "not a finite number")
                                .help("floats must fit in 64 bits"),
                        );
                        ExprKind::Float(0.0)
                    }
                }
            }
            Rule::string => return self.string_expr(p),
            Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
            Rule::list => ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect()),
            Rule::record => ExprKind::Record(self.fields(p.into_inner())),
            Rule::path => ExprKind::Path(p.into_inner().map(|i| self.ident(i)).collect()),
            Rule::paren => {
                ExprKind::Paren(Box::new(self.expr(p.into_inner().next().expect("inner"))))
            }
            Rule::call => {
                let mut inner = p.into_inner();
                let head = inner.next().expect("call head");
                let callee = head
                    .into_inner()
                    .next()
                    .expect("callee path")
                    .into_inner()
                    .map(|i| self.ident(i))
                    .collect();
                let args = inner
                    .map(|a| {
                        let aspan = self.span(a.as_span());
                        let mut ai = a.into_inner();
                        let first = ai.next().expect("arg");
                        let (name, value) = match ai.next() {
                            Some(v) => (Some(self.ident(first)), self.expr(v)),
                            None => (None, self.expr(first)),
                        };
                        Arg {
                            name,
                            value,
                            span: aspan,
                        }
                    })
                    .collect();
                ExprKind::Call { callee, args }
            }
            r => unreachable!("primary rule {r:?}"),
        };
        Expr { kind, span }
    }

    fn string_expr(&mut self, p: Pair<Rule>) -> Expr {
        let s = self.string(p);
        Expr {
            kind: ExprKind::Str(s.value),
            span: s.span,
        }
    }

    fn string(&mut self, p: Pair<Rule>) -> StrLit {
        let span = self.span(p.as_span());
        let body = p.into_inner().next().expect("string body");
        let base = body.as_span().start();
        let raw = body.as_str();
        let mut value = String::with_capacity(raw.len());
        let mut chars = raw.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            let (_, e) = chars.next().unwrap_or((i + 1, '\\'));
            match e {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                '0' => value.push('\0'),
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                'u' => {
                    // \u{XXXX}
                    let rest = &raw[i + 2..];
                    let parsed = rest
                        .strip_prefix('{')
                        .and_then(|r| r.find('}').map(|end| &r[..end]))
                        .filter(|hex| !hex.is_empty() && hex.len() <= 6)
                        .and_then(|hex| u32::from_str_radix(hex, 16).ok().map(|v| (hex.len(), v)))
                        .and_then(|(n, v)| char::from_u32(v).map(|c| (n, c)));
                    match parsed {
                        Some((n, ch)) => {
                            value.push(ch);
                            for _ in 0..n + 2 {
                                chars.next();
                            }
                        }
                        None => self.bad_escape(base + i, 2),
                    }
                }
                other => self.bad_escape(base + i, 1 + other.len_utf8()),
            }
        }
        StrLit { value, span }
    }

    fn bad_escape(&mut self, at: usize, len: usize) {
        self.errors.push(
            Diag::error("ptl::bad_escape", "unknown escape in string")
                .label(self.loc(Span::new(at, at + len)), "not a valid escape")
                .help("valid escapes: \\\" \\\\ \\n \\t \\r \\0 \\u{1F600}"),
        );
    }
}
