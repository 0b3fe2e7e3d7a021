#!/usr/bin/env python3
"""Generate the KTO fixture: ptl's step-1 KTO loss and metrics must equal TRL 1.16's own KTOTrainer on
the same policy, reference, rows and chat template.

Writes, under tests/fixtures/kto/:

  data.jsonl     6 unpaired conversational rows (prompt, completion, label) from the DPO fixture's
                 pairs, 4 desirable and 2 undesirable, in the order TRL reads them (sequential)
  expected.json  for each case (which fixture model is the policy and which the reference; the
                 desirable/undesirable weights), TRL's logged step-1 values (loss, kl,
                 rewards/chosen, rewards/rejected, rewards/margins, logps/chosen, logps/rejected)
                 with all rows in one batch and learning_rate 0, in float32; and TRL's tokenized rows
                 (prompt_ids, completion_ids, KL_completion_ids)

The policy and reference are the DPO fixture's (tests/fixtures/dpo/policy and reference).

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_kto_fixture.py   (needs torch, transformers, trl 1.16)
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import KTOConfig, KTOTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dpo_fixture import ROWS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/kto"
DPO = ROOT / "tests/fixtures/dpo"

UNPAIRED = [
    {"prompt": ROWS[0]["prompt"], "completion": ROWS[0]["chosen"], "label": True},
    {"prompt": ROWS[1]["prompt"], "completion": ROWS[1]["rejected"], "label": False},
    {"prompt": ROWS[2]["prompt"], "completion": ROWS[2]["chosen"], "label": True},
    {"prompt": ROWS[3]["prompt"], "completion": ROWS[3]["chosen"], "label": True},
    {"prompt": ROWS[0]["prompt"], "completion": ROWS[0]["rejected"], "label": False},
    {"prompt": ROWS[1]["prompt"], "completion": ROWS[1]["chosen"], "label": True},
]
# (policy, reference, desirable_weight, undesirable_weight): with the DPO fixture's reference as the
# policy the mismatched pairs' KL estimate is positive; the other way round it is clamped to 0.
CASES = {
    "balanced": ("reference", "policy", 1.0, 1.0),
    "weighted": ("reference", "policy", 1.0, 1.5),
    "clamped": ("policy", "reference", 1.0, 1.0),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in UNPAIRED))
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/tokenizers/qwen3")
    results = {}
    tokenized = None
    for name, (policy_dir, reference_dir, desirable, undesirable) in CASES.items():
        policy = AutoModelForCausalLM.from_pretrained(DPO / policy_dir, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(DPO / reference_dir, dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            args = KTOConfig(
                output_dir=tmp,
                per_device_train_batch_size=len(UNPAIRED),
                max_steps=1,
                learning_rate=0.0,
                logging_steps=1,
                report_to=[],
                use_cpu=True,
                beta=0.1,
                desirable_weight=desirable,
                undesirable_weight=undesirable,
                max_length=1024,
                save_strategy="no",
                seed=0,
                bf16=False,
                fp16=False,
            )
            trainer = KTOTrainer(
                model=policy,
                ref_model=reference,
                args=args,
                train_dataset=Dataset.from_list(UNPAIRED),
                processing_class=tokenizer,
            )
            if tokenized is None:
                cols = ["prompt_ids", "completion_ids", "KL_completion_ids", "label"]
                tokenized = [{k: trainer.train_dataset[i][k] for k in cols} for i in range(len(UNPAIRED))]
            trainer.train()
        log = trainer.state.log_history[0]
        keys = ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                "logps/rejected"]
        results[name] = {"policy": policy_dir, "reference": reference_dir,
                         "desirable_weight": desirable, "undesirable_weight": undesirable,
                         **{k: log[k] for k in keys}}
        print(name, results[name])
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "beta": 0.1,
        "cases": results,
        "tokenized": tokenized,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
