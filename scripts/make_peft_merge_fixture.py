#!/usr/bin/env python3
"""Generate the adapter-merge fixture: a LoRA adapter folded into its base must give the numbers of
PEFT's own `merge_and_unload()`.

Writes tests/fixtures/peft_merge/adapter/ (a PEFT LoRA adapter, r 4, alpha 8, every projection, both
A and B random so the merge is not a no-op) for the base tests/fixtures/nf4/qwen3, and
tests/fixtures/peft_merge/expected.json: token ids and the per-token log-probs of
`PeftModel.from_pretrained(base, adapter).merge_and_unload()` in f32.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_peft_merge_fixture.py   (needs torch, transformers, peft)
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
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "tests/fixtures/nf4/qwen3"
OUT = ROOT / "tests/fixtures/peft_merge"
SEQUENCES = [[1, 5, 9, 20, 33, 41, 50, 60, 70, 80, 90], [3, 3, 7, 12, 18, 25, 31, 47]]


def main():
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(OUT / "adapter")
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, OUT / "adapter").merge_and_unload().eval()
    rows = []
    for ids in SEQUENCES:
        x = torch.tensor([ids])
        with torch.no_grad():
            lp = torch.log_softmax(merged(input_ids=x).logits[0, :-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        rows.append({"ids": ids, "token_logprobs": lp.tolist()})
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    (OUT / "expected.json").write_text(json.dumps({"versions": versions, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
