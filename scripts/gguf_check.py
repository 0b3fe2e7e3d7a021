#!/usr/bin/env python3
"""Checks that llama.cpp runs what `export { format = "gguf" }` writes, with ptl's numbers.

In a temporary folder: the DPO fixture's tiny Qwen3 over the real Qwen3 vocabulary, and a new tiny
Llama over the real Llama 3.1 vocabulary (`init`); each exported to GGUF in f32 and f16. llama.cpp
(through llama-cpp-python) loads every file, tokenizes the prompts as the HF tokenizer does, and its
greedy continuation (temperature 0, no repeat penalty) equals `ptl generate`'s ids.

Not run in CI (llama-cpp-python builds llama.cpp from source). Offline once installed:

    pip install llama-cpp-python==0.3.36 tokenizers
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
    args = ap.parse_args()
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
            want = {}
            for p in PROMPTS:
                out = subprocess.run([args.ptl, "generate", str(hf), "--prompt", p, "--max-new-tokens",
                                      str(args.new_tokens), "--format", "json"], cwd=d, check=True,
                                     capture_output=True, text=True).stdout
                want[p] = json.loads(out)["ids"]
            for quant in ["f32", "f16"]:
                llm = Llama(model_path=str(d / f"out/{family}_{quant}.gguf"), n_ctx=128, verbose=False)
                for p in PROMPTS:
                    ids = tok.encode(p).ids
                    theirs = llm.tokenize(p.encode(), add_bos=bool(family == "llama"), special=True)
                    got = []
                    llm.reset()
                    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
                        got.append(t)
                        if len(got) == len(want[p]):
                            break
                    ok = got == want[p] and theirs == ids
                    failed |= not ok
                    print(f"{family:6} {quant:4} {p!r:28} tokens {'=' if theirs == ids else '≠'} "
                          f"ptl {want[p]} llama.cpp {got} {'ok' if ok else 'DIFFERENT'}")
    print("FAILED" if failed else "all ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
