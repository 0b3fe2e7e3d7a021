"""Writes the quickstart's data under pipelines/data/quickstart/: two-number additions as plain text
(for pretraining), as chat rows (for SFT) and held-out chat rows (for eval). Deterministic.

Run: python3 scripts/make_quickstart_data.py"""

import json
import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parent.parent / "pipelines/data/quickstart"
rng = random.Random(7)
pairs = [(a, b) for a in range(100) for b in range(100)]
rng.shuffle(pairs)
test, rest = pairs[:100], pairs[100:]
sft, pretrain = rest[:3000], rest[3000:]


def chat(a, b):
    return {"messages": [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": str(a + b)}]}


def write(name, rows):
    with open(OUT / name, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


OUT.mkdir(parents=True, exist_ok=True)
# Pretraining documents: 16 equations a line-separated document.
docs = ["".join(f"{a}+{b}={a + b}\n" for a, b in pretrain[i : i + 16]) for i in range(0, len(pretrain), 16)]
write("pretrain.jsonl", [{"text": d} for d in docs])
write("train.jsonl", [chat(a, b) for a, b in sft])
write("test.jsonl", [chat(a, b) for a, b in test])
print(f"{len(docs)} pretraining documents, {len(sft)} SFT rows, {len(test)} test rows")
