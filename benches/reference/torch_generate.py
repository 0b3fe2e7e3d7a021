#!/usr/bin/env python3
"""Transformers reference for benches/generate.rs: greedy decode rate of `model.generate` on CPU with
2 threads, for the prompts of a JSONL file in one left-padded batch, f32, the KV cache on (the
default), stopping only at max_new_tokens (EOS ignored, as ptl's random bench model never emits it).

Times `--new` and 1 new tokens (after one warm-up call) and divides the difference in generated
tokens by the difference in seconds; prints one JSON line {"batch", "new_tokens", "tokens_per_s"}.

    python benches/reference/torch_generate.py MODEL_DIR PROMPTS.jsonl [--new 64]
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    # The tokenizer.json ptl reads (transformers 5 rebuilds a Qwen3 folder's tokenizer from its class).
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    prompts = [json.loads(line)["prompt"] for line in open(args.prompts) if line.strip()]
    rows = [tok.encode(p).ids for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    def run(new):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
        return time.perf_counter() - start, (out.shape[1] - width) * len(rows)

    run(2)
    long, n_long = run(args.new)
    short, n_short = run(1)
    print(json.dumps({"batch": len(rows), "new_tokens": args.new,
                      "tokens_per_s": round((n_long - n_short) / (long - short), 1)}))


if __name__ == "__main__":
    main()
