#!/usr/bin/env python3
"""Generate the Gemma LoRA fixture: PEFT's numbers for a LoRA adapter on each Gemma model fixture.

For tests/fixtures/models/gemma2 and gemma3 (tiny random checkpoints saved by transformers), writes
tests/fixtures/gemma_peft/<name>/adapter/ (a PEFT LoRA adapter, r 4, alpha 8, every projection, both
A and B random, so the adapter moves every log-prob) and tests/fixtures/gemma_peft/expected.json: for
each model, token ids (the model fixture's sequences, longer than the sliding window) and the
per-token log-probs of `PeftModel.from_pretrained(base, adapter)` in f32, unmerged.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_gemma_peft_fixture.py   (needs torch, transformers, peft)
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
OUT = ROOT / "tests/fixtures/gemma_peft"


def main():
    models = {}
    for name, seed in [("gemma2", 31), ("gemma3", 32)]:
        base_dir = ROOT / "tests/fixtures/models" / name
        sequences = json.loads((base_dir / "expected.json").read_text())["sequences"]
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(OUT / name / "adapter")
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(base, OUT / name / "adapter").eval()
        plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        rows = []
        for ids in sequences:
            x = torch.tensor([ids])
            with torch.no_grad():
                lps = [torch.log_softmax(m(input_ids=x).logits[0, :-1].float(), -1)
                       .gather(-1, x[0, 1:, None])[:, 0] for m in (tuned, plain)]
            rows.append({"ids": ids, "token_logprobs": lps[0].tolist(),
                         "moved_by": float((lps[0] - lps[1]).abs().max())})
        models[name] = rows
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    (OUT / "expected.json").write_text(json.dumps({"versions": versions, "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
