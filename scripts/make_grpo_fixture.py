#!/usr/bin/env python3
"""Generate the GRPO fixture: ptl's advantages, loss and gradient for fixed rollouts must equal TRL's.

TRL 1.16's GRPOTrainer on tests/fixtures/nf4/qwen3 (a tiny Qwen3): its reference is that checkpoint,
and the policy is tests/fixtures/mergekit/a (the same architecture, other weights), so the KL term is
not zero. Generation is replaced by fixed completions (4 prompts of 4 tokens, 4 completions each, of
different lengths, some ending with EOS, some cut at max_completion_length) and the reward function
by fixed scores (groups with equal scores included, so a zero standard deviation is exercised); then
TRL's own `_generate_and_score_completions` computes the advantages and the reference log-probs,
and its `_compute_loss` the loss of each loss_type (dapo, grpo, dr_grpo, bnpo), for scale_rewards
group, batch and none; the gradient's global norm over the policy's parameters is recorded too.
For scale_rewards group, the loss and gradient are recorded again with the reference's log-probs as
π_old (completions reused by a later step, `num_iterations` > 1), so ratios leave the clip range.
Temperature 0.7, beta 0.04, epsilon 0.2 / epsilon_high 0.28.

Writes tests/fixtures/grpo/expected.json.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_grpo_fixture.py   (needs torch, transformers, trl 1.16, datasets)
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
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests/fixtures/nf4/qwen3"
POLICY = ROOT / "tests/fixtures/mergekit/a"
OUT = ROOT / "tests/fixtures/grpo"
G = 4
MAX_COMPLETION = 6
PROMPTS = [[5, 9, 20, 33], [41, 50, 60, 70], [3, 3, 7, 12], [18, 25, 31, 47]]
# Completions per prompt; 99 is the EOS below. Lengths 1..6; the 6-token ones without EOS are cut.
COMPLETIONS = [
    [[10, 11, 99], [12, 13, 14, 15, 16, 17], [20, 99], [21, 22, 23, 24, 99]],
    [[30, 31, 32, 99], [33, 99], [34, 35, 36, 37, 38, 39], [40, 41, 42, 43, 99]],
    [[44, 99], [45, 46, 99], [47, 48, 49, 99], [51, 52, 53, 54, 55, 56]],
    [[57, 58, 59, 61, 99], [62, 99], [63, 64, 99], [65, 66, 67, 68, 69, 71]],
]
SCORES = [[1.0, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 1.0, 0.0], [2.0, -1.0, 0.5, 0.0]]


def losses_of(trainer, inputs):
    """TRL's loss and the gradient's global norm for each loss_type."""
    losses = {}
    for loss_type in ["dapo", "grpo", "dr_grpo", "bnpo"]:
        trainer.loss_type = loss_type
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainer.model.parameters()
                              if p.grad is not None))
        losses[loss_type] = {"loss": loss.item(), "grad_norm": norm.item()}
    return losses


def main():
    tok = AutoTokenizer.from_pretrained(REFERENCE)
    tok.eos_token = tok.convert_ids_to_tokens(99)
    tok.pad_token = tok.convert_ids_to_tokens(0)
    flat_completions = [c for group in COMPLETIONS for c in group]
    flat_scores = [s for group in SCORES for s in group]

    def reward(completions, completion_ids, **kwargs):
        return [flat_scores[flat_completions.index(list(ids))] for ids in completion_ids]

    cases = []
    for scale in ["group", "batch", "none"]:
        with tempfile.TemporaryDirectory() as tmp:
            args = GRPOConfig(
                output_dir=tmp, per_device_train_batch_size=G * len(PROMPTS), num_generations=G,
                max_completion_length=MAX_COMPLETION, temperature=0.7, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                scale_rewards=scale, report_to=[], use_cpu=True, bf16=False, loss_type="dapo",
                logging_steps=1,
            )
            data = Dataset.from_list([{"prompt": "x"}] * 16)
            model = AutoModelForCausalLM.from_pretrained(REFERENCE, dtype=torch.float32)
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                                  processing_class=tok)
            # The policy: other weights than the reference's.
            policy = {k: v.float() for k, v in load_file(POLICY / "model.safetensors").items()}
            trainer.model.load_state_dict(policy, strict=False)
            trainer.model.train()
            prompt_list = [p for p in PROMPTS for _ in range(G)]

            def fixed(prompts):
                texts = [tok.decode(c) for c in flat_completions]
                return prompt_list, flat_completions, None, texts, None, {}, None, None

            trainer._generate = fixed
            inputs = trainer._generate_and_score_completions([{"prompt": "x"}] * (G * len(PROMPTS)))
            trainer.current_gradient_accumulation_steps = 1
            losses = losses_of(trainer, inputs)
            # Completions reused for a second optimizer step (num_iterations > 1) are scored against
            # the log-probs they were sampled with: here the reference's, so the ratio moves.
            off_policy = {}
            if scale == "group":
                inputs["old_per_token_logps"] = inputs["ref_per_token_logps"].clone()
                off_policy = losses_of(trainer, inputs)
                del inputs["old_per_token_logps"]
            cases.append({
                "losses_old_is_reference": off_policy,
                "scale_rewards": scale,
                "advantages": inputs["advantages"].tolist(),
                "ref_per_token_logps": inputs["ref_per_token_logps"].tolist(),
                "losses": losses,
            })
    out = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "policy": "tests/fixtures/mergekit/a", "reference": "tests/fixtures/nf4/qwen3",
        "num_generations": G, "max_completion_length": MAX_COMPLETION, "temperature": 0.7, "beta": 0.04,
        "epsilon": 0.2, "epsilon_high": 0.28, "eos": 99,
        "prompts": PROMPTS, "completions": COMPLETIONS, "scores": SCORES, "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
    print([(c["scale_rewards"], c["losses"]["dapo"]) for c in cases])


if __name__ == "__main__":
    main()
