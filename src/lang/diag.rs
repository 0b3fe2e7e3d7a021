//! Diagnostics: every user-facing error has a code, a message, labeled spans and a help line.

use super::source::{FileId, Loc, SourceMap, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a pipeline, pointing into one source file.
#[derive(Clone, Debug)]
pub struct Diag {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    /// The file the labels point into; `None` for problems with no source (a missing file on the command line).
    pub file: Option<FileId>,
    /// The first label is the primary one.
    pub labels: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diag {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diag {
            code,
            severity: Severity::Error,
            message: message.into(),
            file: None,
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(code, message)
        }
    }

    /// Adds a label at `loc`. Labels in another file than the first one are dropped from the
    /// source view, so callers keep one diagnostic's labels in one file.
    pub fn label(mut self, loc: Loc, text: impl Into<String>) -> Self {
        match self.file {
            None => self.file = Some(loc.file),
            Some(f) if f != loc.file => return self,
            Some(_) => {}
        }
        self.labels.push((loc.span, text.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Diagnostics collected during one check.
#[derive(Debug, Default)]
pub struct Diags {
    pub list: Vec<Diag>,
}

impl Diags {
    pub fn push(&mut self, d: Diag) {
        self.list.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(Diag::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.list.iter().filter(|d| d.is_error()).count()
    }
}

/// A "did you mean" help line for `name` among `candidates`, if one is close enough.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        // Optimal string alignment counts a swap of two letters (`stf` → `sft`) as one edit.
        let edits = strsim::osa_distance(name, c);
        let close = if name.chars().count() < 3 {
            edits <= 1 && c.chars().count() > 1
        } else {
            score > 0.85 || edits <= 1.max(name.chars().count() / 3)
        };
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// A diagnostic bound to its source text, in the shape miette renders.
struct Report<'a> {
    diag: &'a Diag,
    source: Option<NamedSource<String>>,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let len = self.source.as_ref().map_or(0, |s| s.inner().len());
        Some(Box::new(self.diag.labels.iter().enumerate().map(
            move |(i, (span, text))| {
                let start = span.start.min(len);
                let end = span.end.clamp(start, len);
                let text = (!text.is_empty()).then(|| text.clone());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, (start, end - start))
                } else {
                    LabeledSpan::new_with_span(text, (start, end - start))
                }
            },
        )))
    }
}

/// Renders diagnostics for a terminal (`color` false gives plain Unicode, as for NO_COLOR or a pipe).
pub fn render(diags: &[Diag], sources: &SourceMap, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        // A long path in a help line wraps whole onto its own line, never split in the middle.
        .with_break_words(false)
        .with_word_separator(textwrap::WordSeparator::AsciiSpace)
        .with_word_splitter(textwrap::WordSplitter::NoHyphenation)
        .with_links(false);
    let mut out = String::new();
    for d in diags {
        let source = d.file.map(|f| {
            let file = sources.get(f);
            NamedSource::new(file.name.clone(), file.text.to_string())
        });
        let report = Report { diag: d, source };
        let _ = handler.render_report(&mut out, &report);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JsonDiag {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub help: Option<String>,
    pub labels: Vec<JsonLabel>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JsonLabel {
    pub message: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
}

/// The machine-readable form of a diagnostic (1-based lines, columns counted in characters).
pub fn to_json(d: &Diag, sources: &SourceMap) -> JsonDiag {
    let labels: Vec<JsonLabel> = match d.file {
        Some(f) => d
            .labels
            .iter()
            .map(|(span, text)| {
                let (line, column) = sources.line_col(f, span.start);
                let (end_line, end_column) = sources.line_col(f, span.end);
                JsonLabel {
                    message: text.clone(),
                    line,
                    column,
                    end_line,
                    end_column,
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let first = labels.first();
    JsonDiag {
        code: d.code,
        severity: d.severity,
        message: d.message.clone(),
        file: d.file.map(|f| sources.get(f).name.clone()),
        line: first.map(|l| l.line),
        column: first.map(|l| l.column),
        end_line: first.map(|l| l.end_line),
        end_column: first.map(|l| l.end_column),
        help: d.help.clone(),
        labels,
    }
}
