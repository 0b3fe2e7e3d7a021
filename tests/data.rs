//! `ptl data show` / `ptl data stats` through the binary: what trains is what is shown.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ptl-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.0.join(name), text).unwrap();
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ptl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ptl"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_lines(o: &Output) -> Vec<Value> {
    out(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fixture_case(tokenizer: &str, name: &str) -> Value {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("tests/fixtures/chat/{tokenizer}.json")).unwrap(),
    )
    .unwrap();
    fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

const LLAMA: &str = "tests/fixtures/tokenizers/llama3_1";

#[test]
fn show_json_gives_the_ids_transformers_gives() {
    let d = Dir::new("ids");
    let case = fixture_case("llama3_1", "multi_turn_with_system");
    let file = d.write(
        "chat.jsonl",
        &format!("{}\n", serde_json::json!({"messages": case["messages"]})),
    );
    let o = ptl(&[
        "data",
        "show",
        &file,
        "--tokenizer",
        LLAMA,
        "--format",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows = json_lines(&o);
    assert_eq!(rows[0]["ids"], case["ids"]);
    assert_eq!(rows[0]["text"], case["text"]);
    let mask = rows[0]["labels_mask"].as_array().unwrap();
    assert_eq!(mask.len(), case["ids"].as_array().unwrap().len());
    assert_eq!(rows[0]["truncated"], false);
}

#[test]
fn preference_and_kto_rows_show_their_parts() {
    let d = Dir::new("pref");
    let prompt = fixture_case("llama3_1", "pref_prompt_system_user");
    let file = d.write(
        "prefs.jsonl",
        &format!(
            "{}\n",
            serde_json::json!({"prompt": prompt["messages"], "chosen": [{"role": "assistant", "content": "Yes."}], "rejected": [{"role": "assistant", "content": "No."}]})
        ),
    );
    let o = ptl(&[
        "data",
        "show",
        &file,
        "--tokenizer",
        LLAMA,
        "--format-in",
        "preference",
        "--format",
        "json",
    ]);
    let row = &json_lines(&o)[0];
    assert_eq!(
        row["prompt_ids"], prompt["ids"],
        "the prompt is rendered with add_generation_prompt"
    );
    assert_eq!(row["chosen"], "Yes.<|eot_id|>");
    assert_eq!(
        row["chosen_mask"].as_array().unwrap().len(),
        row["chosen_ids"].as_array().unwrap().len()
    );
    assert!(row["prompt_mask"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m == 0));
    let kto = d.write(
        "kto.jsonl",
        "{\"prompt\": \"Hi\", \"completion\": \"Hello!\", \"label\": false}\n",
    );
    let row = &json_lines(&ptl(&[
        "data",
        "show",
        &kto,
        "--tokenizer",
        LLAMA,
        "--format",
        "json",
    ]))[0];
    assert_eq!(row["label"], false);
    assert_eq!(row["completion"], "Hello!");
    assert_eq!(
        row["prompt_ids"][0], 128000,
        "plain-text prompts get the tokenizer's BOS"
    );
}

#[test]
fn text_output_marks_trained_tokens_without_color() {
    let d = Dir::new("text");
    let file = d.write(
        "a.jsonl",
        "{\"instruction\": \"Add\", \"input\": \"2 and 3\", \"output\": \"5\"}\n{\"instruction\": \"Say hi\", \"output\": \"hi\"}\n",
    );
    let o = ptl(&[
        "data",
        "show",
        &file,
        "--tokenizer",
        LLAMA,
        "--rows",
        "1",
        "--offset",
        "1",
    ]);
    let text = out(&o);
    assert!(
        text.starts_with(&format!("── row 1 · {file}:2 · ")),
        "{text}"
    );
    assert!(
        text.contains("user<|end_header_id|>\n\nSay hi<|eot_id|>"),
        "{text}"
    );
    assert!(text.contains("⟦hi<|eot_id|>⟧"), "{text}");
    assert!(!text.contains('\u{1b}'));
    let o = ptl(&[
        "data",
        "show",
        &file,
        "--tokenizer",
        LLAMA,
        "--rows",
        "1",
        "--train-on-prompt",
    ]);
    assert!(out(&o).contains("⟦<|begin_of_text|>"), "{}", out(&o));
}

#[test]
fn stats_count_tokens_truncation_drops_and_malformed_rows() {
    let d = Dir::new("stats");
    let long = "word ".repeat(200_000);
    let file = d.write(
        "mixed.jsonl",
        &format!(
            "{}\n{}\nnot json\n{{\"messages\": [{{\"role\": \"wizard\", \"content\": \"x\"}}]}}\n{}\n",
            serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
            serde_json::json!({"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"}]}),
            serde_json::json!({"messages": [{"role": "user", "content": "only a question"}]}),
        ),
    );
    let o = ptl(&[
        "data",
        "stats",
        &file,
        "--tokenizer",
        LLAMA,
        "--max-len",
        "64",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let s: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(s["rows"], 5);
    assert_eq!(s["encoded"], 2);
    assert_eq!(s["truncated"], 1);
    assert_eq!(s["length_max"], 64);
    let malformed: Vec<&str> = s["malformed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(malformed.len(), 2);
    assert!(
        malformed[0].ends_with("mixed.jsonl:3:2: not JSON: expected ident"),
        "{malformed:?}"
    );
    assert!(
        malformed[1].contains(":4: message 0 of `messages` has an unknown role \"wizard\""),
        "{malformed:?}"
    );
    assert!(s["unencodable"][0]
        .as_str()
        .unwrap()
        .contains(":5: the conversation has no assistant turn"));
    // Preference pairs whose prompt fills max_len are dropped, with the reason counted.
    let prefs = d.write(
        "p.jsonl",
        "{\"prompt\": \"a b c d e f g h i j k l\", \"chosen\": \"x\", \"rejected\": \"y\"}\n",
    );
    let s: Value = serde_json::from_str(&out(&ptl(&[
        "data",
        "stats",
        &prefs,
        "--tokenizer",
        LLAMA,
        "--max-len",
        "4",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        s["dropped"].as_object().unwrap().values().next().unwrap(),
        1
    );
}

#[test]
fn empty_files_and_unknown_targets_are_clear_errors() {
    let d = Dir::new("empty");
    let file = d.write("empty.jsonl", "");
    let o = ptl(&["data", "show", &file, "--tokenizer", LLAMA]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no rows"));
    let o = ptl(&["data", "show", "pipelines/chat_assistant.ptl", "sftt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("`sftt` is neither a stage nor a dataset binding"));
}

#[test]
fn a_stage_target_uses_the_stage_s_own_options() {
    let d = Dir::new("stage");
    std::fs::create_dir_all(d.0.join("m")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(format!("{LLAMA}/{f}"), d.0.join("m").join(f)).unwrap();
    }
    d.write("chat.jsonl", &format!("{}\n", serde_json::json!({"messages": [{"role": "user", "content": "a b c d e f g h i j k l m n o p"}, {"role": "assistant", "content": "ok"}]})));
    let p = d.write(
        "p.ptl",
        "stage tune = sft {\n  model = hf_model(\"m\")\n  data = jsonl(\"chat.jsonl\", format = \"messages\")\n  max_len = 16\n  train_on_prompt = true\n}\n",
    );
    let o = ptl(&["data", "show", &p, "tune", "--format", "json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let row = &json_lines(&o)[0];
    assert_eq!(row["ids"].as_array().unwrap().len(), 16);
    assert_eq!(row["truncated"], true);
    assert!(row["labels_mask"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m == 1));
    // stats caches the tokenization artifact in the pipeline's store; the second call reuses it.
    let first = out(&ptl(&["data", "stats", &p, "tune"]));
    let second = out(&ptl(&["data", "stats", &p, "tune"]));
    assert!(
        !first.contains("(cached)") && second.contains("(cached)"),
        "{first}\n{second}"
    );
}
