//! The reward builtins of `grpo`: `exact_match(field, extract, weight)`, `regex_match(pattern,
//! weight)` and `length_penalty(target, weight)`; their patterns compile and their numbers are in
//! range before anything runs.

use super::Checker;
use crate::lang::diag::Diag;
use crate::lang::source::Loc;
use crate::lang::value::{Reward, RewardRule, Value};

/// A reward from a builtin's checked arguments (`values` and `locs` in its parameter order).
pub(super) fn reward(c: &mut Checker, name: &str, values: &[Value], locs: &[Loc]) -> Value {
    let weight_at = values.len() - 1;
    let weight = values[weight_at].as_number().unwrap_or(1.0);
    if !weight.is_finite() {
        c.error(
            Diag::error(
                "ptl::out_of_range",
                format!("the weight of `{name}(...)` is not a number"),
            )
            .label(locs[weight_at], "not finite")
            .help("weights scale each reward in the sum: 1.0, 0.5, -1.0"),
        );
        return Value::Error;
    }
    let text = |v: &Value| v.as_str().map(str::to_string);
    let rule = match name {
        "exact_match" => {
            let field = text(&values[0]).unwrap_or_default();
            if field.is_empty() {
                c.error(
                    Diag::error(
                        "ptl::out_of_range",
                        "`field` of `exact_match(...)` is empty",
                    )
                    .label(locs[0], "names no field")
                    .help("name the row's field that holds the reference answer, e.g. \"answer\""),
                );
                return Value::Error;
            }
            let extract = text(&values[1]);
            if let Some(p) = &extract {
                if !compiles(c, p, locs[1], "extract") {
                    return Value::Error;
                }
            }
            RewardRule::ExactMatch { field, extract }
        }
        "regex_match" => {
            let pattern = text(&values[0]).unwrap_or_default();
            if !compiles(c, &pattern, locs[0], "pattern") {
                return Value::Error;
            }
            RewardRule::RegexMatch { pattern }
        }
        _ => {
            let target = match values[0] {
                Value::Int(n) => n,
                _ => 0,
            };
            if target < 1 {
                c.error(
                    Diag::error(
                        "ptl::out_of_range",
                        "`target` of `length_penalty(...)` must be at least 1",
                    )
                    .label(locs[0], "out of range")
                    .help("the completion length (in tokens) up to which there is no penalty"),
                );
                return Value::Error;
            }
            RewardRule::LengthPenalty { target }
        }
    };
    Value::Reward(Reward { rule, weight })
}

/// Whether `pattern` is a regular expression (Rust's `regex` syntax); reports it at `loc` if not.
fn compiles(c: &mut Checker, pattern: &str, loc: Loc, arg: &str) -> bool {
    match regex::Regex::new(pattern) {
        Ok(_) => true,
        Err(e) => {
            let why = e.to_string();
            let last = why.lines().last().unwrap_or("").trim().to_string();
            c.error(
                Diag::error("ptl::bad_regex", format!("`{arg}` is not a regular expression: {last}"))
                    .label(loc, "does not compile")
                    .help("the syntax is Rust's `regex` crate (like Python's `re` without look-around or backreferences)"),
            );
            false
        }
    }
}
