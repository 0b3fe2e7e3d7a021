"""Writes the preference demo's data under pipelines/data/preference/: the quickstart's two-number
sums, answered in two styles, terse ("94") and unsure ("94?"). Deterministic.

  sft.jsonl      3000 chat rows, 70% hedged and 30% terse (the style users do not want dominates)
  prefs.jsonl    1000 preference rows: chosen terse, rejected hedged (both correct)
  heldout.jsonl  the quickstart's 100 held-out sums as preference rows (eval: exact match against the
                 terse answer, reward, win rate, preference accuracy)

The pretraining documents are the quickstart's (pipelines/data/quickstart/pretrain.jsonl).

Run: python3 scripts/make_preference_data.py"""

import json
import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parent.parent / "pipelines/data/preference"
rng = random.Random(7)
pairs = [(a, b) for a in range(100) for b in range(100)]
rng.shuffle(pairs)
# The same split as scripts/make_quickstart_data.py: the first 100 are held out.
test, rest = pairs[:100], pairs[100:]
sft, prefs = rest[:3000], rest[3000:4000]
style = random.Random(11)


def terse(a, b):
    return str(a + b)


def hedged(a, b):
    return f"{a + b}?"


def user(a, b):
    return [{"role": "user", "content": f"{a}+{b}="}]


def chat(a, b):
    answer = hedged(a, b) if style.random() < 0.7 else terse(a, b)
    return {"messages": user(a, b) + [{"role": "assistant", "content": answer}]}


def preference(a, b):
    return {
        "prompt": user(a, b),
        "chosen": [{"role": "assistant", "content": terse(a, b)}],
        "rejected": [{"role": "assistant", "content": hedged(a, b)}],
    }


def write(name, rows):
    with open(OUT / name, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


OUT.mkdir(parents=True, exist_ok=True)
write("sft.jsonl", [chat(a, b) for a, b in sft])
write("prefs.jsonl", [preference(a, b) for a, b in prefs])
write("heldout.jsonl", [preference(a, b) for a, b in test])
print(f"{len(sft)} SFT rows, {len(prefs)} preference rows, {len(test)} held-out rows")
