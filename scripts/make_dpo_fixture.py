#!/usr/bin/env python3
"""Generate the DPO fixture: ptl's step-1 DPO loss and metrics must equal TRL's own DPOTrainer on the
same policy, reference, rows and chat template.

Writes, under tests/fixtures/dpo/:

  policy/      the step-1 fixture's tiny Qwen3 over the real Qwen3 vocabulary (symlinks to
               ../../step1/model and ../../tokenizers/qwen3, with the tokenizer_config.json that holds
               the chat template)
  reference/   another tiny Qwen3 of the same shape (seed 1, initializer_range 0.1, bf16), so that
               policy != reference and the losses are not constants
  data.jsonl   4 conversational preference rows (system prompt, multi-turn prompt, short and long answers)
  expected.json  for each loss (sigmoid, ipo, hinge, robust with label_smoothing 0.1), TRL's logged
               step-1 values (loss, rewards/chosen, rewards/rejected, rewards/accuracies,
               rewards/margins, logps/chosen, logps/rejected) with all 4 rows in one batch and
               learning_rate 0, in float32 (bf16 autocast off); TRL's tokenized rows (prompt_ids,
               chosen_ids, rejected_ids); and under "truncated" the sigmoid loss's values with
               max_length 24 (one row dropped, completions truncated); and under "tokenized_plain"
               TRL's tokenization of plain.jsonl, 4 plain-text rows.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_dpo_fixture.py   (needs torch, transformers, trl 1.16)
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
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/dpo"

ROWS = [
    {
        "prompt": [{"role": "user", "content": "What is 2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5, I think."}],
    },
    {
        "prompt": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a primary color."},
        ],
        "chosen": [{"role": "assistant", "content": "Red."}],
        "rejected": [{"role": "assistant", "content": "Green is one of them, probably."}],
    },
    {
        "prompt": [{"role": "user", "content": "The capital of France is?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Berlin, of course."}],
    },
    {
        "prompt": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "At what temperature does water boil?"},
        ],
        "chosen": [{"role": "assistant", "content": "100 degrees Celsius at sea level."}],
        "rejected": [{"role": "assistant", "content": "50 degrees."}],
    },
]

PLAIN = [
    {"prompt": "Question: What is 2+2?\nAnswer:", "chosen": " 4", "rejected": " 5, I think."},
    {"prompt": "Name a primary color:", "chosen": " Red.", "rejected": " Green is one, probably."},
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Berlin, of course."},
    {"prompt": "Water boils at", "chosen": " 100 degrees Celsius at sea level.", "rejected": " 50 degrees."},
]


def link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(os.path.relpath(src, dst.parent))


def tokenized_plain(policy_dir: Path, tokenizer) -> list:
    """TRL's tokenization of plain-text rows (plain.jsonl): prompt + completion + EOS text tokenized
    together, the completion starting where it departs from the prompt alone."""
    (OUT / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PLAIN))
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, max_length=1024, bf16=False, fp16=False)
        trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(PLAIN),
                             processing_class=tokenizer)
    keys = ["prompt_ids", "chosen_ids", "rejected_ids"]
    return [{k: trainer.train_dataset[i][k] for k in keys} for i in range(len(PLAIN))]


def truncated(policy_dir: Path, ref_dir: Path, tokenizer) -> dict:
    """The sigmoid loss with max_length 24: TRL drops the row whose prompt fills it (34 tokens) and
    truncates the others' completions (keep_start); 3 rows left, all in one batch."""
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=3, max_steps=1, learning_rate=0.0,
                         logging_steps=1, report_to=[], use_cpu=True, loss_type=["sigmoid"], beta=0.1,
                         max_length=24, save_strategy="no", seed=0, bf16=False, fp16=False)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args,
                             train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
        rows = len(trainer.train_dataset)
        trainer.train()
    log = trainer.state.log_history[0]
    keys = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected"]
    print("truncated", rows, {k: log[k] for k in keys})
    return {"max_length": 24, "batch_size": 3, "rows": rows, **{k: log[k] for k in keys}}


def main() -> None:
    tok_dir = ROOT / "tests/fixtures/tokenizers/qwen3"
    step1 = ROOT / "tests/fixtures/step1/model"
    policy_dir, ref_dir = OUT / "policy", OUT / "reference"
    policy_dir.mkdir(parents=True, exist_ok=True)
    ref_dir.mkdir(parents=True, exist_ok=True)
    for name in ["config.json", "model.safetensors"]:
        link(step1 / name, policy_dir / name)
    for d in [policy_dir, ref_dir]:
        for name in ["tokenizer.json", "tokenizer_config.json"]:
            link(tok_dir / name, d / name)
    cfg = Qwen3Config.from_pretrained(step1)
    cfg.initializer_range = 0.1
    torch.manual_seed(1)
    ref = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    ref.save_pretrained(ref_dir, safe_serialization=True)
    (OUT / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    results = {}
    tokenized = None
    for loss, smoothing in [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)]:
        policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            args = DPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=len(ROWS),
                max_steps=1,
                learning_rate=0.0,
                logging_steps=1,
                report_to=[],
                use_cpu=True,
                loss_type=[loss],
                beta=0.1,
                label_smoothing=smoothing,
                max_length=1024,
                save_strategy="no",
                seed=0,
                # TRL's configs turn bf16 autocast on by default where the CPU supports it; the fixture is
                # float32 throughout, as ptl computes.
                bf16=False,
                fp16=False,
            )
            trainer = DPOTrainer(
                model=policy,
                ref_model=reference,
                args=args,
                train_dataset=Dataset.from_list(ROWS),
                processing_class=tokenizer,
            )
            if tokenized is None:
                tokenized = [
                    {k: trainer.train_dataset[i][k] for k in trainer.train_dataset.column_names if k.endswith("ids") or k.endswith("mask")}
                    for i in range(len(ROWS))
                ]
            trainer.train()
        log = trainer.state.log_history[0]
        keys = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected"]
        results[loss] = {"label_smoothing": smoothing, **{k: log[k] for k in keys}}
        print(loss, results[loss])
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "beta": 0.1,
        "losses": results,
        "tokenized": tokenized,
        "truncated": truncated(policy_dir, ref_dir, tokenizer),
        "tokenized_plain": tokenized_plain(policy_dir, tokenizer),
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
