#!/usr/bin/env python3
"""Generate the SimPO fixture: ptl's step-1 SimPO loss and metrics must equal TRL's own CPOTrainer
(loss_type="simpo") on the DPO fixture's policy and rows (tests/fixtures/dpo, made first by
scripts/make_dpo_fixture.py).

Writes tests/fixtures/simpo/expected.json: for cpo_alpha 0 (pure SimPO) and 1 (TRL's CPO default),
with beta 2.0, simpo_gamma 0.5 and label_smoothing 0.1 for the second, TRL's logged step-1 values
(loss, rewards/*, logps/*, nll_loss) with all 4 rows in one batch, learning_rate 0, float32; and TRL's
tokenized rows (its CPO preprocessing appends the EOS token to each completion that lacks it).

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_simpo_fixture.py   (needs torch, transformers, trl 1.16)
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
from trl.experimental.cpo import CPOConfig, CPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DPO = ROOT / "tests/fixtures/dpo"
OUT = ROOT / "tests/fixtures/simpo"
KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected", "nll_loss"]
# Also from a float64 run of the same trainer: the summed NLL over a 152k vocabulary carries f32
# summation error in TRL's float32 values (1.3e-5 at 19.5); ptl sums in f64 and is checked against these.
FLOAT64_KEYS = ["loss", "nll_loss"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (DPO / "data.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/tokenizers/qwen3")
    cases = {}
    tokenized = None
    for name, cpo_alpha, smoothing in [("simpo", 0.0, 0.0), ("cpo_alpha", 1.0, 0.1)]:
        logs = {}
        for dtype in (torch.float32, torch.float64):
            policy = AutoModelForCausalLM.from_pretrained(DPO / "policy", dtype=dtype)
            with tempfile.TemporaryDirectory() as tmp:
                args = CPOConfig(
                    output_dir=tmp,
                    per_device_train_batch_size=len(rows),
                    max_steps=1,
                    learning_rate=0.0,
                    logging_steps=1,
                    report_to=[],
                    use_cpu=True,
                    loss_type="simpo",
                    cpo_alpha=cpo_alpha,
                    simpo_gamma=0.5,
                    beta=2.0,
                    label_smoothing=smoothing,
                    max_length=1024,
                    save_strategy="no",
                    seed=0,
                    bf16=False,
                    fp16=False,
                )
                trainer = CPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows),
                                     processing_class=tokenizer)
                if tokenized is None:
                    ds = trainer.train_dataset
                    tokenized = [
                        {
                            "chosen_input_ids": ds[i]["chosen_input_ids"],
                            "chosen_labels": ds[i]["chosen_labels"],
                            "rejected_input_ids": ds[i]["rejected_input_ids"],
                            "rejected_labels": ds[i]["rejected_labels"],
                        }
                        for i in range(len(rows))
                    ]
                trainer.train()
            logs[dtype] = trainer.state.log_history[0]
        log = logs[torch.float32]
        cases[name] = {
            "cpo_alpha": cpo_alpha,
            "label_smoothing": smoothing,
            **{k: log[k] for k in KEYS},
            "float64": {k: logs[torch.float64][k] for k in FLOAT64_KEYS},
        }
        print(name, cases[name])
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "beta": 2.0,
        "gamma": 0.5,
        "cases": cases,
        "tokenized": tokenized,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
