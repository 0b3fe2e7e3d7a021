"""Writes pipelines/tokenizers/tiny-chat: a character-level tokenizer (printable ASCII and newline)
with ChatML special tokens and a Qwen-style chat template, for models the quickstart creates.

Run: python3 scripts/make_tiny_tokenizer.py  (needs the `tokenizers` package)."""

import json
import pathlib

from tokenizers import AddedToken, Tokenizer, decoders, models

OUT = pathlib.Path(__file__).resolve().parent.parent / "pipelines/tokenizers/tiny-chat"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]

vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
tok.decoder = decoders.Fuse()
tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])

TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

OUT.mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "tokenizer.json"))
(OUT / "tokenizer_config.json").write_text(
    json.dumps(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<unk>",
            "model_max_length": 2048,
            "chat_template": TEMPLATE,
        },
        indent=2,
    )
    + "\n"
)
print(f"wrote {OUT} ({len(vocab)} tokens)")
