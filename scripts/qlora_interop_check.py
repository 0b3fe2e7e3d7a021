#!/usr/bin/env python3
"""Checks that a QLoRA stage's adapter loads in PEFT on transformers' 4-bit base with ptl's numbers.

Trains a `qlora(rank = 4)` sft stage (6 steps) on tests/fixtures/nf4/qwen3 in a temporary folder with
the ptl binary, then loads the base with `BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)` on CPU, puts the stage's adapter on it
with `PeftModel.from_pretrained`, and compares per-token log-probs of the fixture rows with
`ptl score BASE --adapter ADAPTER --load-in-4bit`.

Two figures: PEFT on the 4-bit base with each 4-bit layer computing x · dequantize_4bit(W)ᵀ (what
the 4-bit model is in exact arithmetic; must be within --tol, default 1e-4), and with bitsandbytes'
own CPU 4-bit matmul, which rounds internally (printed, not checked). Also checks that the adapter
changed the numbers (a check on a zero adapter would prove nothing).

Not run in CI (needs torch, transformers, peft and bitsandbytes 0.50). Offline: nothing is downloaded.

    cargo build && python scripts/qlora_interop_check.py [--ptl target/debug/ptl]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
PIPELINE = """stage q = sft {
  model = hf_model("base")
  data = jsonl("chat.jsonl", format = "messages")
  tuning = qlora(rank = 4)
  lr = 1e-2
  batch_size = 8
  max_steps = 6
}
"""


def logprobs(model, rows):
    import torch

    out = []
    with torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
            out.append(lp.gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1).tolist())
    return out


def worst(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def exact_4bit_forward(model):
    """Each bitsandbytes 4-bit layer computes x · dequantize_4bit(W)ᵀ in f32 instead of its CPU kernel."""
    import bitsandbytes as bnb
    import torch.nn.functional as F

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            def forward(x, m=module):
                w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).to(x.dtype)
                return F.linear(x, w, m.bias)
            module.forward = forward


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ptl", default=str(REPO / "target/debug/ptl"))
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    import bitsandbytes
    import peft
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    fixture = REPO / "tests/fixtures/nf4"
    rows = [r["ids"] for r in json.loads((fixture / "qlora_logprobs.json").read_text())["rows"]]
    with tempfile.TemporaryDirectory(prefix="ptl-qlora-interop-") as tmp:
        d = Path(tmp)
        shutil.copytree(fixture / "qwen3", d / "base", symlinks=False)
        train = (REPO / "pipelines/data/quickstart/train.jsonl").read_text().splitlines()[:32]
        (d / "chat.jsonl").write_text("".join(line + "\n" for line in train))
        (d / "p.ptl").write_text(PIPELINE)
        subprocess.run([args.ptl, "run", "p.ptl"], cwd=d, check=True)
        out = d / subprocess.run([args.ptl, "path", "p.ptl", "q"], cwd=d, check=True,
                                 capture_output=True, text=True).stdout.strip()
        (d / "rows.jsonl").write_text("".join(json.dumps({"ids": r}) + "\n" for r in rows))

        def score(*extra):
            lines = subprocess.run([args.ptl, "score", str(d / "base"), "--load-in-4bit", "--input", "rows.jsonl",
                                    *extra], cwd=d, check=True, capture_output=True, text=True).stdout.splitlines()
            return [json.loads(line)["token_logprobs"] for line in lines]

        ptl_tuned, ptl_base = score("--adapter", str(out / "adapter")), score()

        def four_bit():
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.float32)
            base = AutoModelForCausalLM.from_pretrained(d / "base", quantization_config=quant, dtype=torch.float32,
                                                        device_map="cpu")
            return PeftModel.from_pretrained(base, out / "adapter").eval()

        kernel = logprobs(four_bit(), rows)
        exact = four_bit()
        exact_4bit_forward(exact)
        exact_lp = logprobs(exact, rows)
    versions = f"bitsandbytes {bitsandbytes.__version__}, peft {peft.__version__}, torch {torch.__version__}"
    moved = worst(ptl_tuned, ptl_base)
    got = worst(exact_lp, ptl_tuned)
    print(f"{versions}")
    print(f"the adapter moves ptl's 4-bit log-probs by up to {moved:.2e}")
    print(f"PEFT on the 4-bit base (x · dequantized W): max |Δ log-prob| vs ptl {got:.2e} (tolerance {args.tol:g})")
    print(f"PEFT on the 4-bit base (bitsandbytes' CPU kernel): max |Δ log-prob| vs ptl {worst(kernel, ptl_tuned):.2e}")
    if moved < 10 * args.tol:
        print("the adapter barely changes the model: the check would prove nothing", file=sys.stderr)
        return 1
    return 0 if got <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
