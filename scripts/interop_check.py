#!/usr/bin/env python3
"""Checks that what ptl writes loads in the Python ecosystem with the same numbers.

Runs the Rust test `adapters_and_merged_models_reload_with_the_same_logits` with PTL_INTEROP_DIR
set, which leaves, for each model (qwen3, qwen2, gemma2, gemma3), a folder holding

    adapter/   PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)
    merged/    full HF folder, one safetensors file
    sharded/   full HF folder, sharded, with model.safetensors.index.json
    ptl.json   {"base": <base model dir, relative to the repo>, "sequence": [ids],
                "token_logprobs": [ptl's per-token log-probs of the adapter-tuned model]}

then loads base + adapter with transformers + PEFT, and merged and sharded with transformers alone,
and compares their per-token log-probs of the sequence with ptl's. Prints a table; exits non-zero
if any difference exceeds --tol (default 1e-4) or any folder fails to load.

Not run in CI (needs torch, transformers and peft). Offline: no model is downloaded.

    python scripts/interop_check.py                 # build and run the test, then compare
    python scripts/interop_check.py --dir /tmp/x    # keep the folders in /tmp/x
    python scripts/interop_check.py --dir /tmp/x --no-cargo   # compare folders already there
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
TEST = "adapters_and_merged_models_reload_with_the_same_logits"
MODELS = ["qwen3", "qwen2", "gemma2", "gemma3"]


def run_cargo(out: Path, repo: Path, target_dir: str) -> None:
    env = dict(os.environ, PTL_INTEROP_DIR=str(out))
    env.setdefault("CARGO_TARGET_DIR", target_dir)
    cmd = ["cargo", "test", "--test", "model", TEST]
    print(f"$ PTL_INTEROP_DIR={out} CARGO_TARGET_DIR={env['CARGO_TARGET_DIR']} {' '.join(cmd)}",
          flush=True)
    proc = subprocess.run(cmd, cwd=repo, env=env)
    if proc.returncode != 0:
        sys.exit(f"cargo test failed (exit {proc.returncode})")


def token_logprobs(model, ids):
    import torch

    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    return lp.gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1)


def load_causal_lm(path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def check_model(folder: Path, repo: Path):
    """Yields (name, variant, max_abs_diff or None, error or None)."""
    import torch

    name = folder.name
    record_path = folder / "ptl.json"
    if not record_path.is_file():
        yield name, "-", None, f"{record_path} is missing (the test did not write ptl.json)"
        return
    record = json.loads(record_path.read_text())
    base = Path(record["base"])
    if not base.is_absolute():
        base = repo / base
    ids = [int(i) for i in record["sequence"]]
    want = torch.tensor(record["token_logprobs"], dtype=torch.float32)

    def compare(variant, make):
        try:
            model = make()
            got = token_logprobs(model, ids)
            if got.shape != want.shape:
                return variant, None, f"{got.shape[0]} log-probs, ptl has {want.shape[0]}"
            return variant, float((got - want).abs().max()), None
        except Exception as e:  # report the exact error: it points at ptl's writer
            return variant, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"

    def with_adapter():
        from peft import PeftModel

        adapter = folder / "adapter"
        model = PeftModel.from_pretrained(load_causal_lm(base), str(adapter))
        model.eval()
        # Every LoRA tensor in the file must have landed on a module (PEFT only warns otherwise).
        from safetensors import safe_open

        with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
            saved = set(f.keys())
        loaded = {
            k.replace(".default.", ".") for k in model.state_dict() if "lora_" in k
        }
        missing = sorted(saved - loaded)
        unused = sorted(loaded - saved)
        if missing or unused:
            raise RuntimeError(
                f"adapter tensors not matched: in file but not model {missing[:5]}, "
                f"in model but not file {unused[:5]}"
            )
        return model

    yield (name, *compare("base+adapter (PEFT)", with_adapter))
    for variant in ["merged", "sharded"]:
        yield (name, *compare(variant, lambda v=variant: load_causal_lm(folder / v)))
    # Sanity: the base alone must differ, or the comparison proves nothing.
    try:
        base_diff = float((token_logprobs(load_causal_lm(base), ids) - want).abs().max())
        yield name, "base alone (should differ)", base_diff, None
    except Exception as e:
        yield name, "base alone (should differ)", None, f"{type(e).__name__}: {e}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="where the test writes its folders (default: a temporary dir)")
    ap.add_argument("--repo", default=str(REPO), help="ptl checkout (default: this script's)")
    ap.add_argument("--no-cargo", action="store_true", help="only compare folders already in --dir")
    ap.add_argument("--target-dir", default=str(Path(REPO).parent / "target-helper"),
                    help="CARGO_TARGET_DIR when not set in the environment")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    repo = Path(args.repo).resolve()

    import torch

    torch.manual_seed(0)
    tmp = None
    if args.dir:
        out = Path(args.dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
    elif args.no_cargo:
        sys.exit("--no-cargo needs --dir")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ptl-interop-")
        out = Path(tmp.name)
    if not args.no_cargo:
        run_cargo(out, repo, args.target_dir)

    rows = []
    for name in MODELS:
        folder = out / name
        if not folder.is_dir():
            rows.append((name, "-", None, f"{folder} is missing (does the test keep its folders when "
                                               "PTL_INTEROP_DIR is set?)"))
            continue
        rows.extend(check_model(folder, repo))

    failed = False
    print()
    print(f"{'model':<7} {'variant':<28} {'max |Δ log-prob|':>17}  status")
    print("-" * 64)
    for name, variant, diff, error in rows:
        if error is not None:
            failed = True
            print(f"{name:<7} {variant:<28} {'-':>17}  ERROR")
        elif variant.startswith("base alone"):
            ok = diff > args.tol
            failed |= not ok
            print(f"{name:<7} {variant:<28} {diff:>17.3e}  {'ok' if ok else 'FAIL (adapter did nothing)'}")
        else:
            ok = diff <= args.tol
            failed |= not ok
            print(f"{name:<7} {variant:<28} {diff:>17.3e}  {'ok' if ok else 'FAIL'}")
    errors = [(n, v, e) for n, v, _, e in rows if e is not None]
    for name, variant, error in errors:
        print(f"\n{name} / {variant}:\n{error}")
    print(f"\ntolerance {args.tol:g}: {'FAILED' if failed else 'all ok'}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
