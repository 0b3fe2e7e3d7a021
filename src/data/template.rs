//! Chat templates rendered like transformers does: a Jinja environment with trim_blocks,
//! lstrip_blocks, loop controls, Python string methods, `tojson` as Python's json.dumps,
//! `raise_exception`, `strftime_now`, and `{% generation %}` spans for assistant-only loss.

use minijinja::{Environment, Error, ErrorKind, Value};
use std::collections::BTreeMap;

/// Marks the start and end of a `{% generation %}` block in the rendered text (private-use characters).
const GEN_START: char = '\u{F8F0}';
const GEN_END: char = '\u{F8F1}';

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template marks assistant text with `{% generation %}`.
    pub has_generation: bool,
}

/// A rendered conversation, with the byte spans that `{% generation %}` marked.
pub struct Rendered {
    pub text: String,
    pub generation: Vec<(usize, usize)>,
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let (comma, colon) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    match v {
        serde_json::Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        serde_json::Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(colon);
                py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time, for templates that print today's date.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const LONG: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let m = (month - 1) as usize;
    format
        .replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%b", MONTHS[m])
        .replace("%B", LONG[m])
}

/// Turns `{% generation %}` / `{% endgeneration %}` (with any whitespace control) into markers.
fn mark_generation(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(open) = rest.find("{%") {
        let Some(close) = rest[open..].find("%}") else {
            break;
        };
        let tag = &rest[open + 2..open + close];
        let word = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let marker = match word {
            "generation" => Some(GEN_START),
            "endgeneration" => Some(GEN_END),
            _ => None,
        };
        out.push_str(&rest[..open]);
        match marker {
            Some(m) => {
                found = true;
                // Keep the tag's whitespace control: `{%- ... -%}` becomes `{{- '…' -}}`.
                let left = if tag.starts_with('-') { "-" } else { "" };
                let right = if tag.ends_with('-') { "-" } else { "" };
                out.push_str(&format!("{{{{{left} '{m}' {right}}}}}"));
            }
            None => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    (out, found)
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let (source, has_generation) = mark_generation(source);
        env.add_template_owned("chat", source)
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            has_generation,
        })
    }

    /// Renders `messages` (JSON objects with `role` and `content`) with the special-token variables.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        specials: &BTreeMap<&str, Option<String>>,
        extra: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Rendered, String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        for (k, v) in specials {
            if let Some(v) = v {
                ctx.insert(k.to_string(), Value::from(v.clone()));
            }
        }
        for (k, v) in extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let raw = tmpl.render(ctx).map_err(|e| {
            let mut msg = format!("the chat template failed: {e}");
            if let Some(detail) = e.detail() {
                msg = format!("{msg}: {detail}");
            }
            msg
        })?;
        let mut text = String::with_capacity(raw.len());
        let mut generation = Vec::new();
        let mut open = None;
        for c in raw.chars() {
            match c {
                GEN_START => open = Some(text.len()),
                GEN_END => {
                    if let Some(s) = open.take() {
                        generation.push((s, text.len()));
                    }
                }
                c => text.push(c),
            }
        }
        Ok(Rendered { text, generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_spans() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'assistant' %}A: {% generation %}{{ m.content }}!{% endgeneration %}\n{% else %}U: {{ m.content }}\n{% endif %}{% endfor %}",
        )
        .unwrap();
        assert!(t.has_generation);
        let msgs = vec![
            serde_json::json!({"role": "user", "content": "hi"}),
            serde_json::json!({"role": "assistant", "content": "yo"}),
        ];
        let r = t
            .render(&msgs, false, &BTreeMap::new(), &BTreeMap::new())
            .unwrap();
        assert_eq!(r.text, "U: hi\nA: yo!\n");
        assert_eq!(&r.text[r.generation[0].0..r.generation[0].1], "yo!");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let mut out = String::new();
        py_json(
            &serde_json::json!({"a": [1, "é"], "b": {}}),
            None,
            0,
            &mut out,
        );
        assert_eq!(out, r#"{"a": [1, "é"], "b": {}}"#);
        let mut out = String::new();
        py_json(&serde_json::json!({"a": [1]}), Some(2), 0, &mut out);
        assert_eq!(out, "{\n  \"a\": [\n    1\n  ]\n}");
    }
}
