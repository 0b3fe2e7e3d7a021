//! The syntax tree of one .ptl file; every node keeps its span for diagnostics and formatting.

use super::source::Span;

#[derive(Clone, Debug)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: ItemKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ItemKind {
    Import { path: StrLit, alias: Option<Ident> },
    Config(Block),
    Track(Block),
    Store(Block),
    Let { name: Ident, value: Expr },
    Stage { name: Ident, body: StageBody },
    Fn(FnDecl),
}

#[derive(Clone, Debug)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StageBody {
    /// `stage x = sft { ... }`
    Kind { kind: Ident, block: Block },
    /// `stage v1 = recipes.sft_dpo(...)`: a function that declares stages.
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub struct Block {
    pub fields: Vec<Field>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct FnDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    /// `let` and `stage` statements, in order.
    pub body: Vec<Item>,
    pub ret: Option<Expr>,
    /// Span of the closing brace, where comments before it are kept.
    pub close: Span,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }

    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => 1,
            BinOp::Mul | BinOp::Div => 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    List(Vec<Expr>),
    Record(Vec<Field>),
    /// `name` or `a.b.c`
    Path(Vec<Ident>),
    Call {
        callee: Vec<Ident>,
        args: Vec<Arg>,
    },
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Paren(Box<Expr>),
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

/// `a.b.c` as written.
pub fn path_text(parts: &[Ident]) -> String {
    parts
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// The span covering a whole dotted path.
pub fn path_span(parts: &[Ident]) -> Span {
    match (parts.first(), parts.last()) {
        (Some(a), Some(b)) => Span::new(a.span.start, b.span.end),
        _ => Span::default(),
    }
}
