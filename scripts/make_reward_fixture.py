#!/usr/bin/env python3
"""Generate the reward-model fixture: ptl's step-1 reward_model loss and metrics must equal TRL's own
RewardTrainer, and ptl's rewards must equal transformers' AutoModelForSequenceClassification.

Writes, under tests/fixtures/reward/:

  start/        a Qwen3ForSequenceClassification (num_labels 1) that already has a score head: the
                step-1 fixture's tiny Qwen3 body over the real Qwen3 vocabulary plus a seeded
                `score.weight` (initializer_range 0.5, so rewards differ between sequences), in bf16,
                with pad_token_id set and the Qwen3 tokenizer files
  chat.jsonl    the DPO fixture's 4 conversational preference rows
  margin.jsonl  the same rows with a `margin` column
  plain.jsonl   4 plain-text preference rows
  expected.json for each case, TRL 1.16's logged step-1 values (loss, accuracy, margin, mean_reward,
                min_reward, max_reward) with all 4 rows in one batch and learning_rate 0, in float32;
                TRL's tokenized chosen_ids / rejected_ids; and transformers' reward of every chosen and
                rejected sequence under start/ (the model's own forward, batch of one, no padding).

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_reward_fixture.py   (needs torch, transformers, trl 1.16)
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
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dpo_fixture import PLAIN, ROWS, link  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/reward"

MARGINS = [0.5, 0.0, 1.25, -0.5]


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    tok_dir = ROOT / "tests/fixtures/tokenizers/qwen3"
    step1 = ROOT / "tests/fixtures/step1/model"
    start = OUT / "start"
    start.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_pretrained(step1, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.5)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(start, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        link(tok_dir / name, start / name)

    margin_rows = [dict(r, margin=m) for r, m in zip(ROWS, MARGINS)]
    write_jsonl(OUT / "chat.jsonl", ROWS)
    write_jsonl(OUT / "margin.jsonl", margin_rows)
    write_jsonl(OUT / "plain.jsonl", PLAIN)
    cases = {
        "chat": (ROWS, None),
        "margin": (margin_rows, 0.01),
        "plain": (PLAIN, None),
    }
    results = {}
    for name, (rows, center) in cases.items():
        model = AutoModelForSequenceClassification.from_pretrained(start, dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            args = RewardConfig(
                output_dir=tmp,
                per_device_train_batch_size=len(rows),
                max_steps=1,
                learning_rate=0.0,
                logging_steps=1,
                report_to=[],
                use_cpu=True,
                center_rewards_coefficient=center,
                max_length=1024,
                save_strategy="no",
                seed=0,
                bf16=False,
                fp16=False,
            )
            trainer = RewardTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
            )
            tokenized = [
                {k: trainer.train_dataset[i][k] for k in ["chosen_ids", "rejected_ids"]}
                for i in range(len(rows))
            ]
            trainer.train()
        log = trainer.state.log_history[0]
        keys = ["loss", "accuracy", "margin", "mean_reward", "min_reward", "max_reward"]
        scorer = AutoModelForSequenceClassification.from_pretrained(start, dtype=torch.float32).eval()
        rewards = []
        with torch.no_grad():
            for t in tokenized:
                rewards.append([
                    scorer(input_ids=torch.tensor([t[k]])).logits[0, 0].item()
                    for k in ["chosen_ids", "rejected_ids"]
                ])
        results[name] = {
            "center_rewards_coefficient": center,
            "metrics": {k: log[k] for k in keys},
            "tokenized": tokenized,
            "rewards": rewards,
        }
        print(name, results[name]["metrics"])
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "cases": results,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
