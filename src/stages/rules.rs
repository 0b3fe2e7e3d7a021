//! Semantic rules shared by stage kinds: ranges of numbers and fields that exclude each other.

use super::schema::StageView;
use crate::lang::diag::Diag;

/// A stage's own `device` must name one (the config's was checked with the `config` block).
pub fn device(s: &StageView, d: &mut Vec<Diag>) {
    if !s.locs.contains_key("device") {
        return;
    }
    if let Some(diag) = s
        .str("device")
        .and_then(|v| crate::lang::settings::bad_device(v, s.loc("device")))
    {
        d.push(diag);
    }
}

/// `field` must be > 0 (when set).
pub fn positive(s: &StageView, d: &mut Vec<Diag>, field: &str) {
    if let Some(v) = s.num(field) {
        if v <= 0.0 || v.is_nan() {
            d.push(out_of_range(s, field, v, "must be greater than 0"));
        }
    }
}

/// `field` must be >= 0 (when set).
pub fn non_negative(s: &StageView, d: &mut Vec<Diag>, field: &str) {
    if let Some(v) = s.num(field) {
        if v < 0.0 || v.is_nan() {
            d.push(out_of_range(s, field, v, "must not be negative"));
        }
    }
}

/// `field` must lie in [lo, hi) (or [lo, hi] with `closed`).
pub fn within(s: &StageView, d: &mut Vec<Diag>, field: &str, lo: f64, hi: f64, closed: bool) {
    if let Some(v) = s.num(field) {
        let ok = v >= lo && if closed { v <= hi } else { v < hi };
        if !ok {
            let bracket = if closed { "]" } else { ")" };
            d.push(out_of_range(
                s,
                field,
                v,
                &format!("must be in [{lo}, {hi}{bracket}"),
            ));
        }
    }
}

pub fn out_of_range(s: &StageView, field: &str, v: f64, why: &str) -> Diag {
    let doc = s.kind.field(field).map_or("", |f| f.doc);
    Diag::error(
        "ptl::out_of_range",
        format!("`{field}` of stage `{}` {why}", s.name),
    )
    .label(s.loc(field), format!("{v} is out of range"))
    .help(format!("`{field}` is the {doc}"))
}

/// Two fields that may not both be set.
pub fn exclusive(s: &StageView, d: &mut Vec<Diag>, a: &str, b: &str) {
    if s.locs.contains_key(a) && s.locs.contains_key(b) {
        d.push(
            Diag::error(
                "ptl::conflicting_fields",
                format!("`{a}` and `{b}` cannot both be set"),
            )
            .label(s.loc(b), format!("`{b}` set here"))
            .label(s.loc(a), format!("`{a}` set here"))
            .help(format!("keep one of `{a}` and `{b}`")),
        );
    }
}
