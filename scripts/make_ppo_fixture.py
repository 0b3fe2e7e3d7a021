#!/usr/bin/env python3
"""Generate the PPO fixture: ptl's rollout numbers, losses, gradients and logged metrics for fixed
rollouts must equal TRL's experimental PPOTrainer (TRL 0.29.0, the last release that ships it).

Models (all tiny Qwen3 with one 100-token vocabulary, f32):
- the policy is tests/fixtures/mergekit/a,
- the frozen reference is tests/fixtures/nf4/qwen3 (other weights, so the KL term is not zero),
- the reward model is tests/fixtures/ppo/reward, written here: tests/fixtures/mergekit/b as a
  Qwen3ForSequenceClassification with a seeded score head; the value model starts from it, as TRL's
  examples load both from one reward-model folder.

TRL's own `train()` runs one update (4 queries of different lengths, left-padded; 2 PPO epochs of one
mini-batch and one micro-batch each) with generation replaced by fixed responses: EOS (99) at
different places, one response cut at `response_length` without EOS (missing_eos_penalty applies),
one whose EOS is the last generated position (the score then lands on it, not one past it). The
generation logits are the policy's own logits at the sampling temperature, as `generate` returns them.
Recorded, for kl_estimator k1 and k3: the values and scores TRL computed, the advantages before and
after whitening, the loss and the gradient norm (policy and value model together) of each of the two
optimizer steps (the second after an AdamW step, so ratios and both clip fractions move), and the
metrics TRL logged.

Writes tests/fixtures/ppo/expected.json and tests/fixtures/ppo/reward/.

Re-run:  pip install --no-deps --target /tmp/trl029 trl==0.29.0
         PYTHONPATH=/tmp/trl029 HF_HUB_OFFLINE=1 python3 scripts/make_ppo_fixture.py
         (needs torch, transformers 5, accelerate, datasets)
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
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
import trl.experimental.ppo.ppo_trainer as ppo_module  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "tests/fixtures/mergekit/a"
REFERENCE = ROOT / "tests/fixtures/nf4/qwen3"
REWARD_FROM = ROOT / "tests/fixtures/mergekit/b"
OUT = ROOT / "tests/fixtures/ppo"
REWARD = OUT / "reward"
EOS, PAD = 99, 0
RESPONSE_LENGTH = 6
QUERIES = [[5, 9, 20, 33], [41, 50, 60], [3, 3, 7, 12, 8], [18, 25, 31, 47]]
# What each query's response is; after EOS, generate pads.
RESPONSES = [[10, 11, 99], [12, 13, 14, 15, 16, 17], [20, 99], [21, 22, 23, 24, 25, 99]]
SETTINGS = dict(
    temperature=0.7, kl_coef=0.2, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
    missing_eos_penalty=1.0, learning_rate=3e-3, num_ppo_epochs=2,
)


def write_reward_model(tok):
    torch.manual_seed(7)
    rm = AutoModelForSequenceClassification.from_pretrained(REWARD_FROM, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        rm.score.weight.normal_(0.0, 0.5)
    rm.config.pad_token_id = PAD
    rm.save_pretrained(REWARD)
    tok.save_pretrained(REWARD)


def run(kl_estimator, tok):
    policy = AutoModelForCausalLM.from_pretrained(POLICY, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(REFERENCE, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(REWARD, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(REWARD, dtype=torch.float32)
    for m in (policy, ref):
        m.generation_config.pad_token_id = PAD
    seen = {}

    def fixed_generation(model, queries, batch, pad, config):
        rows = []
        for q in queries.tolist():
            query = [t for t in q if t != PAD]
            response = RESPONSES[QUERIES.index(query)]
            rows.append(q + response + [PAD] * (RESPONSE_LENGTH - len(response)))
        seen["queries"] = [[t for t in q if t != PAD] for q in queries.tolist()]
        query_responses = torch.tensor(rows)
        context = queries.shape[1]
        with torch.no_grad():
            out = ppo_module.forward(model, query_responses, pad)
        logits = out.logits[:, context - 1 : -1] / (config.temperature)
        return query_responses, logits

    reward_calls = []
    real_get_reward = ppo_module.get_reward

    def recorded_get_reward(model, query_responses, pad, context):
        out = real_get_reward(model, query_responses, pad, context)
        reward_calls.append((out[0][:, context - 1 : -1].squeeze(-1).tolist(), out[1].tolist()))
        return out

    whitened = []
    real_whiten = ppo_module.masked_whiten

    def recorded_whiten(values, mask, shift_mean=True):
        out = real_whiten(values, mask, shift_mean)
        whitened.append((values.tolist(), out.tolist(), mask.tolist()))
        return out

    ppo_module.batch_generation = fixed_generation
    ppo_module.get_reward = recorded_get_reward
    ppo_module.masked_whiten = recorded_whiten
    with tempfile.TemporaryDirectory() as tmp:
        args = PPOConfig(
            output_dir=tmp, per_device_train_batch_size=len(QUERIES), gradient_accumulation_steps=1,
            num_mini_batches=1, total_episodes=len(QUERIES), response_length=RESPONSE_LENGTH,
            kl_estimator=kl_estimator, stop_token="eos", report_to=[], use_cpu=True, bf16=False,
            num_sample_generations=0, save_strategy="no", logging_steps=1, seed=0, **SETTINGS,
        )
        data = Dataset.from_list([{"input_ids": q} for q in QUERIES])
        trainer = PPOTrainer(
            args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
            value_model=value, train_dataset=data, eval_dataset=data,
        )
        steps = []
        real_backward = trainer.accelerator.backward

        def recorded_backward(loss, **kwargs):
            real_backward(loss, **kwargs)
            grads = [p.grad.double() for p in trainer.model.parameters() if p.grad is not None]
            steps.append({"loss": loss.item(), "grad_norm": torch.sqrt(sum((g**2).sum() for g in grads)).item()})

        trainer.accelerator.backward = recorded_backward
        logged = []
        trainer.log = lambda metrics, *a, **k: logged.append(dict(metrics))
        trainer.train()
    ppo_module.get_reward = real_get_reward
    ppo_module.masked_whiten = real_whiten
    # The first get_reward call of the rollout is the value model's, the second the reward model's.
    (values, _), (_, scores) = reward_calls[0], reward_calls[1]
    raw, adv, mask = whitened[0]
    metrics = {k: v for k, v in logged[0].items() if "/" in k or k == "lr"}
    return {
        "kl_estimator": kl_estimator,
        "queries": seen["queries"],
        "values": values,
        "scores": scores,
        "advantages_raw": raw,
        "advantages": adv,
        "steps": steps,
        "metrics": metrics,
    }


def main():
    tok = AutoTokenizer.from_pretrained(REFERENCE)
    tok.eos_token = tok.convert_ids_to_tokens(EOS)
    tok.pad_token = tok.convert_ids_to_tokens(PAD)
    tok.padding_side = "left"
    OUT.mkdir(parents=True, exist_ok=True)
    write_reward_model(tok)
    cases = [run(k, tok) for k in ["k1", "k3"]]
    out = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "policy": "tests/fixtures/mergekit/a", "reference": "tests/fixtures/nf4/qwen3",
        "reward": "tests/fixtures/ppo/reward", "eos": EOS, "pad": PAD, "response_length": RESPONSE_LENGTH,
        "responses": {str(q): r for q, r in zip(QUERIES, RESPONSES)}, **SETTINGS, "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
    for c in cases:
        print(c["kl_estimator"], c["steps"], {k: round(v, 5) for k, v in c["metrics"].items()})


if __name__ == "__main__":
    main()
