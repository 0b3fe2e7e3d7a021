#!/usr/bin/env python3
"""Checks that llama.cpp runs what `export { format = "gguf" }` writes, with ptl's numbers.

In a temporary folder: the DPO fixture's tiny Qwen3 over the real Qwen3 vocabulary, and a new tiny
Llama over the real Llama 3.1 vocabulary (`init`); each exported to GGUF in f32 and f16. llama.cpp
(through llama-cpp-python) loads every file, tokenizes the prompts as the HF tokenizer does, gives
per-token log-probs of the prompts within --tol of `ptl score` (f32 export; --tol-f16 for f16), and
its greedy continuation (temperature 0, no repeat penalty) equals `ptl generate`'s ids.

`cargo test` runs it (tests/export.rs) in a venv the harness provisions (pip builds llama.cpp from
source once, a few minutes). By hand, offline once installed:

    pip install llama-cpp-python==0.3.36 tokenizers==0.23.3 numpy==2.4.6
    cargo build && python scripts/gguf_check.py [--ptl target/debug/ptl]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Hello"]
PIPELINE = """stage llama = init {
  tokenizer = "llama-tokenizer"
  arch = "llama"
  size = "tiny"
}
"""


def export(name: str, model: str, quant: str) -> str:
    return (f'stage {name} = export {{\n  model = {model}\n  path = "out/{name}.gguf"\n'
            f'  format = "gguf"\n  quant = "{quant}"\n}}\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ptl", default=str(REPO / "target/debug/ptl"))
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4, help="f32 export: largest |Δ log-prob|")
    ap.add_argument("--tol-f16", type=float, default=1e-2, help="f16 export: largest |Δ log-prob|")
    args = ap.parse_args()
    import numpy as np
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    failed = False
    with tempfile.TemporaryDirectory(prefix="ptl-gguf-") as tmp:
        d = Path(tmp)
        shutil.copytree(REPO / "tests/fixtures/dpo/policy", d / "qwen3")
        shutil.copytree(REPO / "tests/fixtures/tokenizers/llama3_1", d / "llama-tokenizer")
        pipeline = PIPELINE
        for quant in ["f32", "f16"]:
            pipeline += export(f"qwen3_{quant}", 'hf_model("qwen3")', quant)
            pipeline += export(f"llama_{quant}", "llama.model", quant)
        (d / "p.ptl").write_text(pipeline)
        subprocess.run([args.ptl, "run", "p.ptl"], cwd=d, check=True)
        llama_dir = d / subprocess.run([args.ptl, "path", "p.ptl", "llama"], cwd=d, check=True,
                                       capture_output=True, text=True).stdout.strip() / "model"
        for family, hf in [("qwen3", d / "qwen3"), ("llama", llama_dir)]:
            tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
            want, logprobs = {}, {}
            for p in PROMPTS:
                ids = tok.encode(p).ids
                (d / "rows.jsonl").write_text(json.dumps({"ids": ids}) + "\n")
                scored = subprocess.run([args.ptl, "score", str(hf), "--input", "rows.jsonl"], cwd=d,
                                        check=True, capture_output=True, text=True).stdout
                logprobs[p] = json.loads(scored)["token_logprobs"]
                out = subprocess.run([args.ptl, "generate", str(hf), "--prompt", p, "--max-new-tokens",
                                      str(args.new_tokens), "--format", "json"], cwd=d, check=True,
                                     capture_output=True, text=True).stdout
                want[p] = json.loads(out)["ids"]
            for quant in ["f32", "f16"]:
                llm = Llama(model_path=str(d / f"out/{family}_{quant}.gguf"), n_ctx=128, verbose=False,
                            logits_all=True, type_k=0, type_v=0)  # an f32 KV cache (default f16)
                for p in PROMPTS:
                    ids = tok.encode(p).ids
                    theirs = llm.tokenize(p.encode(), add_bos=bool(family == "llama"), special=True)
                    llm.reset()
                    llm.eval(ids)
                    scores = np.array(llm.scores[: len(ids)], dtype=np.float64)
                    lse = np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)) + scores.max(-1)
                    theirs_lp = [scores[i, ids[i + 1]] - lse[i] for i in range(len(ids) - 1)]
                    diff = max((abs(a - b) for a, b in zip(theirs_lp, logprobs[p])), default=0.0)
                    tol = args.tol if quant == "f32" else args.tol_f16
                    got = []
                    llm.reset()
                    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
                        got.append(t)
                        if len(got) == len(want[p]):
                            break
                    if theirs != ids:
                        print("  tokens: hf", ids, "llama.cpp", theirs)
                    ok = got == want[p] and theirs == ids and diff <= tol
                    failed |= not ok
                    print(f"{family:6} {quant:4} {p!r:28} tokens {'=' if theirs == ids else '≠'} "
                          f"|Δ log-prob| {diff:.1e} greedy {'=' if got == want[p] else '≠'} {'ok' if ok else 'DIFFERENT'}")
    print("FAILED" if failed else "all ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
