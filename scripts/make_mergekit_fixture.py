#!/usr/bin/env python3
"""Generate the model-merge fixture: ptl's `merge` must give mergekit's own linear, slerp and TIES
merges.

Writes tests/fixtures/mergekit/a and .../b: two "fine-tunes" of tests/fixtures/nf4/qwen3 (the base
plus seeded normal noise on every weight, different per model and large enough that TIES' signs
disagree), stored in bf16 so the fixture stays small; and tests/fixtures/mergekit/expected.json: for
each merge (the mergekit configuration it ran, in f32), token ids and the per-token log-probs that
transformers gives for mergekit's merged model.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_mergekit_fixture.py   (needs torch, transformers, mergekit)
"""

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import mergekit  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from importlib.metadata import version  # noqa: E402
from mergekit.config import MergeConfiguration  # noqa: E402
from mergekit.merge import MergeOptions, run_merge  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "tests/fixtures/nf4/qwen3"
OUT = ROOT / "tests/fixtures/mergekit"
SEQUENCES = [[1, 5, 9, 20, 33, 41, 50, 60, 70, 80, 90], [3, 3, 7, 12, 18, 25, 31, 47]]

# Each merge as mergekit runs it and as the ptl stage that should match it writes it.
MERGES = {
    "linear": (
        """merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters: {{weight: 3.0}}
dtype: float32
""",
        'models = [a, b]\n  weights = [1.0, 3.0]',
    ),
    "slerp": (
        """merge_method: slerp
base_model: {a}
models:
  - model: {a}
  - model: {b}
parameters: {{t: 0.3}}
dtype: float32
""",
        'models = [a, b]\n  method = "slerp"\n  t = 0.3',
    ),
    "ties": (
        """merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{density: 0.5, weight: 1.0}}
  - model: {b}
    parameters: {{density: 0.5, weight: 0.5}}
dtype: float32
""",
        'models = [a, b]\n  method = "ties"\n  base = base\n  weights = [1.0, 0.5]\n  density = 0.5',
    ),
}


def fine_tune(name, seed):
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std().clamp(min=1e-3) * 0.3)
    model.to(torch.bfloat16).save_pretrained(OUT / name)


def logprobs(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for ids in SEQUENCES:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1))[:, 0]
        rows.append({"ids": ids, "token_logprobs": lp.tolist()})
    return rows


def main():
    fine_tune("a", 1)
    fine_tune("b", 2)
    merges = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, stage) in MERGES.items():
            text = config.format(a=OUT / "a", b=OUT / "b", base=BASE)
            out = Path(tmp) / name
            run_merge(
                MergeConfiguration.model_validate(yaml.safe_load(text)),
                str(out),
                options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False),
            )
            shown = config.format(a="tests/fixtures/mergekit/a", b="tests/fixtures/mergekit/b", base="tests/fixtures/nf4/qwen3")
            merges.append({"name": name, "mergekit": shown, "ptl": stage, "rows": logprobs(out)})
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "mergekit": version("mergekit")}
    (OUT / "expected.json").write_text(json.dumps({"versions": versions, "merges": merges}, indent=1) + "\n")
    print([m["name"] for m in merges])


if __name__ == "__main__":
    main()
