//! `ptl score MODEL_DIR --input FILE|-`: per-token log-probabilities of JSONL rows under a model.

use crate::data::tokenizer::TextTokenizer;
use crate::plan::compute::{Compute, Loading};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;

/// The ids of a row and how many leading ids are context only (not scored).
fn row_ids(
    row: &Value,
    tok: &mut Option<Result<TextTokenizer, String>>,
    model: &Path,
) -> Result<(Vec<u32>, usize), String> {
    if let Some(ids) = row.get("ids").and_then(Value::as_array) {
        let ids: Option<Vec<u32>> = ids.iter().map(|i| i.as_u64().map(|v| v as u32)).collect();
        return Ok((ids.ok_or("`ids` must be a list of token ids")?, 0));
    }
    let tok = tok
        .get_or_insert_with(|| TextTokenizer::load(model))
        .as_ref()
        .map_err(|e| format!("rows with text need the model's tokenizer: {e}"))?;
    if let Some(text) = row.get("text").and_then(Value::as_str) {
        return Ok((tok.encode(text, true)?.ids, 0));
    }
    match (
        row.get("prompt").and_then(Value::as_str),
        row.get("completion").and_then(Value::as_str),
    ) {
        (Some(p), Some(c)) => {
            let mut ids = tok.encode(p, true)?.ids;
            let context = ids.len();
            ids.extend(tok.encode(c, false)?.ids);
            Ok((ids, context))
        }
        _ => Err("a row needs `text`, `prompt` and `completion`, or `ids`".into()),
    }
}

pub fn run(model: &Path, with: &Loading, input: &Path, compute: &Compute) -> i32 {
    let loaded = compute.load_with(model, with);
    let decoder = match loaded {
        Ok(d) => d,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    let mut tok = None;
    each_row(input, |_, row| {
        let (ids, context) = row_ids(&row, &mut tok, model)?;
        let all = decoder.token_logprobs(&ids)?;
        // token_logprobs[i] scores token i+1: completion tokens start at `context`.
        let lps = all[context.saturating_sub(1)..].to_vec();
        let sum: f64 = lps.iter().map(|&l| l as f64).sum();
        let n_tok = lps.len();
        let ppl = if n_tok == 0 {
            f64::NAN
        } else {
            (-sum / n_tok as f64).exp()
        };
        outln!(
            "{}",
            json!({"tokens": n_tok, "logprob_sum": sum, "token_logprobs": lps, "ppl": ppl})
        );
        Ok(())
    })
}

/// Runs `each` on every JSON row of `input` (a JSONL file, or - for standard input) with its line
/// number; blank lines are skipped. A row that is not JSON or that `each` fails on is reported as
/// `file:line: why` and the others go on; the exit code is 1 if any failed (or the input cannot be
/// read), else 0.
pub fn each_row(input: &Path, mut each: impl FnMut(usize, Value) -> Result<(), String>) -> i32 {
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(input) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                errln!("error: cannot read {}: {e}", input.display());
                return 1;
            }
        }
    };
    let mut code = 0;
    for (n, line) in reader.lines().enumerate() {
        let Ok(line) = line else {
            errln!("error: {}:{}: not valid UTF-8", input.display(), n + 1);
            return 1;
        };
        if line.trim().is_empty() {
            continue;
        }
        let result = serde_json::from_str::<Value>(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|row| each(n + 1, row));
        if let Err(e) = result {
            errln!("error: {}:{}: {e}", input.display(), n + 1);
            code = 1;
        }
    }
    code
}
