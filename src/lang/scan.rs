//! A quick pass before parsing that finds unclosed strings and unbalanced or too deeply nested
//! brackets, so these errors point at the opening character rather than at the end of the file.

use super::diag::Diag;
use super::source::{FileId, Loc, Span};

/// Brackets may nest this deep; deeper input is rejected before the parser sees it.
pub const MAX_DEPTH: usize = 64;

pub fn scan(file: FileId, text: &str) -> Option<Diag> {
    let at = |start: usize, len: usize| Loc {
        file,
        span: Span::new(start, start + len),
    };
    let bytes = text.as_bytes();
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                let open = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') => {
                            return Some(
                                Diag::error("ptl::unclosed_string", "unclosed string")
                                    .label(at(open, 1), "this string is never closed")
                                    .help("close the string with `\"` on the same line; write a line break as `\\n`"),
                            );
                        }
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            open @ (b'{' | b'[' | b'(') => {
                stack.push((open, i));
                if stack.len() > MAX_DEPTH {
                    return Some(
                        Diag::error(
                            "ptl::too_deep",
                            format!("brackets nest more than {MAX_DEPTH} deep"),
                        )
                        .label(at(i, 1), "too deep here")
                        .help("split the value into `let` bindings"),
                    );
                }
            }
            close @ (b'}' | b']' | b')') => match stack.pop() {
                Some((open, _)) if closer(open) == close => {}
                Some((open, pos)) => {
                    return Some(
                        Diag::error(
                            "ptl::mismatched_delimiter",
                            format!("`{}` closes `{}`", close as char, open as char),
                        )
                        .label(
                            at(i, 1),
                            format!("expected `{}` here", closer(open) as char),
                        )
                        .label(at(pos, 1), "opened here")
                        .help("check that every bracket is closed in the order it was opened"),
                    );
                }
                None => {
                    return Some(
                        Diag::error(
                            "ptl::unexpected_delimiter",
                            format!("unexpected `{}`", close as char),
                        )
                        .label(at(i, 1), "nothing is open here")
                        .help("remove it, or add the opening bracket it belongs to"),
                    );
                }
            },
            _ => {}
        }
        i += 1;
    }
    stack.pop().map(|(open, pos)| {
        Diag::error(
            "ptl::unclosed_delimiter",
            format!("unclosed `{}`", open as char),
        )
        .label(at(pos, 1), "this is never closed")
        .help(format!("add `{}` to close it", closer(open) as char))
    })
}

fn closer(open: u8) -> u8 {
    match open {
        b'{' => b'}',
        b'[' => b']',
        _ => b')',
    }
}

/// The spans of every `#` comment outside strings.
pub fn comments(text: &str) -> Vec<Span> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'#' => {
                let start = i;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push(Span::new(start, i));
            }
            _ => i += 1,
        }
    }
    out
}
