#!/usr/bin/env python3
"""Generate the ORPO fixture: ptl's step-1 ORPO loss and metrics must equal TRL's own ORPOTrainer on
the DPO fixture's policy and rows (tests/fixtures/dpo, made first by scripts/make_dpo_fixture.py).

Writes tests/fixtures/orpo/expected.json: for beta 0.1 (TRL's default) and 0.5, TRL's logged step-1
values (loss, rewards/*, logps/*, nll_loss, log_odds_ratio, log_odds_chosen) with all 4 rows in one
batch, learning_rate 0, float32. ORPO tokenizes as CPO does (tests/fixtures/simpo has those rows).

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_orpo_fixture.py   (needs torch, transformers, trl 1.16)
"""

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DPO = ROOT / "tests/fixtures/dpo"
OUT = ROOT / "tests/fixtures/orpo"
KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"]
# Also from a float64 run of the same trainer: the summed NLL over a 152k vocabulary carries f32
# summation error in TRL's float32 values (1.3e-5 at 19.5); ptl sums in f64 and is checked against these.
FLOAT64_KEYS = ["loss", "nll_loss"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (DPO / "data.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/tokenizers/qwen3")
    cases = {}
    for beta in [0.1, 0.5]:
        logs = {}
        for dtype in (torch.float32, torch.float64):
            policy = AutoModelForCausalLM.from_pretrained(DPO / "policy", dtype=dtype)
            with tempfile.TemporaryDirectory() as tmp:
                args = ORPOConfig(
                    output_dir=tmp,
                    per_device_train_batch_size=len(rows),
                    max_steps=1,
                    learning_rate=0.0,
                    logging_steps=1,
                    report_to=[],
                    use_cpu=True,
                    beta=beta,
                    max_length=1024,
                    save_strategy="no",
                    seed=0,
                    bf16=False,
                    fp16=False,
                )
                trainer = ORPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=tokenizer)
                trainer.train()
            logs[dtype] = trainer.state.log_history[0]
        log = logs[torch.float32]
        cases[f"beta_{beta}"] = {
            "beta": beta,
            **{k: log[k] for k in KEYS},
            "float64": {k: logs[torch.float64][k] for k in FLOAT64_KEYS},
        }
        print(beta, cases[f"beta_{beta}"])
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
