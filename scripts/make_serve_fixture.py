#!/usr/bin/env python3
"""Generate the serving fixture: what transformers + PEFT `generate` answers, greedily, for the base
tests/fixtures/nf4/qwen3 (a tiny Qwen3 with the tiny chat tokenizer) and for two LoRA adapters on it.

Writes tests/fixtures/serve/adapter_a/, adapter_b/ and adapter_c/ (PEFT LoRA adapters, r 4, alpha 8,
every projection, A and B random with different seeds, so each changes the answers) and
tests/fixtures/serve/expected.json: for each model (base, a, b, c) and each chat prompt, the prompt's
token ids (the chat template with the generation prompt), the greedy continuation's ids (at most
8 new tokens, stopping at <|im_end|>) and their text (special tokens skipped).

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_serve_fixture.py   (needs torch, transformers, peft)
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "tests/fixtures/nf4/qwen3"
OUT = ROOT / "tests/fixtures/serve"
PROMPTS = ["12+34=", "7+8=", "99+1=", "hello"]
MAX_NEW = 8


def main():
    tok = AutoTokenizer.from_pretrained(BASE)
    for name, seed in [("a", 21), ("b", 22), ("c", 23)]:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(OUT / f"adapter_{name}")
    answers = {}
    for name in ["base", "a", "b", "c"]:
        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        if name != "base":
            model = PeftModel.from_pretrained(model, OUT / f"adapter_{name}")
        model.eval()
        rows = []
        for p in PROMPTS:
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                                     eos_token_id=2, pad_token_id=0)
            new = out[0, len(ids):].tolist()
            rows.append({"prompt": p, "prompt_ids": ids, "ids": new,
                         "text": tok.decode(new, skip_special_tokens=True)})
        answers[name] = rows
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    (OUT / "expected.json").write_text(json.dumps({"versions": versions, "max_new_tokens": MAX_NEW,
                                                   "answers": answers}, indent=1) + "\n")
    for name, rows in answers.items():
        print(name, [r["text"] for r in rows])


if __name__ == "__main__":
    main()
