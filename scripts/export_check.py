#!/usr/bin/env python3
"""Checks that what `export` writes loads in transformers with the numbers of the model it came from.

In a temporary folder: a new tiny Qwen3 over the real Qwen3 vocabulary (`init`), 3 LoRA SFT steps, and
two exports of the result, f32 sharded at 10 MB and bf16 in one file. transformers loads both; their
per-token log-probs of the SFT rows are compared with `ptl score` of the stage's own model: f32 within
--tol (default 1e-5), bf16 with the same greedy next token at every position.

Not run in CI (needs torch and transformers). Offline: no model is downloaded.

    cargo build && python scripts/export_check.py [--ptl target/debug/ptl]
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
PIPELINE = """stage base = init {
  tokenizer = "qwen3-tokenizer"
  size = "tiny"
}

stage tuned = sft {
  model = base.model
  data = jsonl("chat.jsonl", format = "sharegpt")
  tuning = lora(rank = 4)
  lr = 1e-2
  max_steps = 3
}

stage full = export {
  model = tuned.model
  path = "exports/f32"
  dtype = "f32"
  shard_mb = 10
}

stage half = export {
  model = tuned.model
  path = "exports/bf16"
  dtype = "bf16"
}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ptl", default=str(REPO / "target/debug/ptl"))
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="ptl-export-") as tmp:
        d = Path(tmp)
        shutil.copytree(REPO / "pipelines/models/qwen3-tiny", d / "qwen3-tokenizer")
        shutil.copy(REPO / "pipelines/data/chat.jsonl", d / "chat.jsonl")
        (d / "p.ptl").write_text(PIPELINE)
        subprocess.run([args.ptl, "run", "p.ptl"], cwd=d, check=True)
        tuned = d / subprocess.run([args.ptl, "path", "p.ptl", "tuned"], cwd=d, check=True,
                                   capture_output=True, text=True).stdout.strip() / "model"
        shards = sorted(p.name for p in (d / "exports/f32").glob("*.safetensors"))
        print("f32 export:", shards)
        rows = ["What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4", "Reverse the word dog: god"]
        (d / "rows.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
        scored = subprocess.run([args.ptl, "score", str(tuned), "--input", "rows.jsonl"], cwd=d, check=True,
                                capture_output=True, text=True).stdout.splitlines()
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tuned)
        worst, same_argmax = 0.0, True
        for name in ["f32", "bf16"]:
            model = AutoModelForCausalLM.from_pretrained(d / "exports" / name).eval()
            reference = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32).eval()
            for row, line in zip(rows, scored):
                x = torch.tensor([tok(row)["input_ids"]])
                with torch.no_grad():
                    logits = model(input_ids=x).logits[0].float()
                    ref_logits = reference(input_ids=x).logits[0].float()
                lp = torch.log_softmax(logits[:-1], -1).gather(-1, x[0, 1:, None])[:, 0].tolist()
                if name == "f32":
                    mine = json.loads(line)["token_logprobs"]
                    worst = max(worst, max(abs(a - b) for a, b in zip(lp, mine)))
                else:
                    same_argmax &= bool((logits.argmax(-1) == ref_logits.argmax(-1)).all())
        print(f"f32 export vs ptl score: max |Δ log-prob| {worst:.2e} (tolerance {args.tol:g})")
        print(f"bf16 export: same greedy next token at every position: {same_argmax}")
        ok = worst <= args.tol and same_argmax and len(shards) > 1
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
