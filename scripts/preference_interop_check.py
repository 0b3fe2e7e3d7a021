#!/usr/bin/env python3
"""Checks that what the preference stages write loads in transformers and PEFT with ptl's numbers.

Reward model: trains a LoRA `reward_model` stage (20 steps) on tests/fixtures/reward in a temporary folder with the
ptl binary, scores the chat pairs with `ptl reward`, then loads the merged folder with
AutoModelForSequenceClassification and base + adapter with PEFT (the score head comes from the
adapter's modules_to_save) and compares every reward.
DPO: trains a LoRA `dpo` stage (3 steps) on tests/fixtures/dpo, loads policy + the adapter with PEFT
and compares the per-token log-probs of the chosen sequences with `ptl score` of the merged folder.
Exits non-zero when a reward differs by more than --tol (default 1e-5) or a log-prob by more than
--logprob-tol (default 1e-4, as scripts/interop_check.py: log-softmax over 151,936 f32 logits).

Not run in CI (needs torch, transformers and peft). Offline: no model is downloaded.

    cargo build && python scripts/preference_interop_check.py [--ptl target/debug/ptl]
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
PIPELINE = """stage rm = reward_model {
  model = hf_model("start")
  data = jsonl("chat.jsonl", format = "preference")
  tuning = lora(rank = 4, alpha = 8)
  lr = 5e-2
  batch_size = 4
  max_steps = 20
}
"""
DPO_PIPELINE = """stage aligned = dpo {
  model = hf_model("policy")
  reference = hf_model("reference")
  data = jsonl("data.jsonl", format = "preference")
  tuning = lora(rank = 4, alpha = 8)
  lr = 1e-2
  batch_size = 2
  max_steps = 3
}
"""


def dpo_worst(ptl: str) -> float:
    """Largest |log-prob difference| between ptl's merged DPO model and PEFT's policy + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fixture = REPO / "tests/fixtures/dpo"
    with tempfile.TemporaryDirectory(prefix="ptl-dpo-interop-") as tmp:
        d = Path(tmp)
        for sub in ["policy", "reference"]:
            shutil.copytree(fixture / sub, d / sub, symlinks=False)
        shutil.copy(fixture / "data.jsonl", d)
        (d / "p.ptl").write_text(DPO_PIPELINE)
        subprocess.run([ptl, "run", "p.ptl"], cwd=d, check=True)
        out = d / subprocess.run([ptl, "path", "p.ptl", "aligned"], cwd=d, check=True,
                                 capture_output=True, text=True).stdout.strip()
        expected = json.loads((fixture / "expected.json").read_text())
        rows = [t["prompt_ids"] + t["chosen_ids"] for t in expected["tokenized"]]
        (d / "rows.jsonl").write_text("".join(json.dumps({"ids": r}) + "\n" for r in rows))
        scored = subprocess.run([ptl, "score", str(out / "model"), "--input", "rows.jsonl"], cwd=d,
                                check=True, capture_output=True, text=True).stdout.splitlines()
        base = AutoModelForCausalLM.from_pretrained(d / "policy", dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, out / "adapter").eval()
        worst = 0.0
        with torch.no_grad():
            for ids, line in zip(rows, scored):
                x = torch.tensor([ids])
                lp = torch.log_softmax(peft(input_ids=x).logits[0, :-1].float(), dim=-1)
                lp = lp.gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1).tolist()
                mine = json.loads(line)["token_logprobs"]
                worst = max(worst, max(abs(a - b) for a, b in zip(lp, mine)))
        print(f"dpo adapter through PEFT: max |Δ log-prob| {worst:.2e}")
        return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ptl", default=str(REPO / "target/debug/ptl"))
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--logprob-tol", type=float, default=1e-4)
    args = ap.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    fixture = REPO / "tests/fixtures/reward"
    with tempfile.TemporaryDirectory(prefix="ptl-rm-interop-") as tmp:
        d = Path(tmp)
        shutil.copytree(fixture / "start", d / "start", symlinks=False)
        shutil.copy(fixture / "chat.jsonl", d)
        (d / "p.ptl").write_text(PIPELINE)
        subprocess.run([args.ptl, "run", "p.ptl"], cwd=d, check=True)
        out = d / subprocess.run([args.ptl, "path", "p.ptl", "rm"], cwd=d, check=True,
                                 capture_output=True, text=True).stdout.strip()
        expected = json.loads((fixture / "expected.json").read_text())
        rows = [t[k] for t in expected["cases"]["chat"]["tokenized"] for k in ["chosen_ids", "rejected_ids"]]
        (d / "rows.jsonl").write_text("".join(json.dumps({"ids": r}) + "\n" for r in rows))
        scored = subprocess.run([args.ptl, "reward", str(out / "model"), "--input", "rows.jsonl"], cwd=d,
                                check=True, capture_output=True, text=True).stdout.split()
        ptl = [float(x) for x in scored]
        merged = AutoModelForSequenceClassification.from_pretrained(out / "model", dtype=torch.float32).eval()
        base = AutoModelForSequenceClassification.from_pretrained(d / "start", dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, out / "adapter").eval()
        worst = 0.0
        print(f"{'ptl':>12} {'merged':>12} {'peft':>12}")
        with torch.no_grad():
            for ids, r in zip(rows, ptl):
                a = merged(input_ids=torch.tensor([ids])).logits[0, 0].item()
                b = peft(input_ids=torch.tensor([ids])).logits[0, 0].item()
                worst = max(worst, abs(a - r), abs(b - r))
                print(f"{r:12.6f} {a:12.6f} {b:12.6f}")
    ok = worst <= args.tol
    print(f"reward model: max |Δ reward| {worst:.2e} (tolerance {args.tol:g}): {'ok' if ok else 'FAILED'}")
    worst = dpo_worst(args.ptl)
    ok_dpo = worst <= args.logprob_tol
    print(f"dpo: tolerance {args.logprob_tol:g}: {'ok' if ok_dpo else 'FAILED'}")
    return 0 if ok and ok_dpo else 1


if __name__ == "__main__":
    sys.exit(main())
