#!/usr/bin/env python3
"""PyTorch reference for benches/bf16.rs: matmul throughput (GFLOP/s) in f32 and bf16 on the CPU with
2 threads, on the bench model's training shapes (rows = batch 8 x 256 positions).

    python benches/reference/torch_matmul.py   # one JSON line per shape and dtype
"""

import json
import time

import torch

# (m, k, n): a projection forward, its input gradient, and the tied LM head.
SHAPES = [(2048, 512, 1536), (2048, 1536, 512), (2048, 512, 32000)]


def gflops(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    for _ in range(2):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    torch.set_num_threads(2)
    for m, k, n in SHAPES:
        for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
            print(json.dumps({"engine": "pytorch", "m": m, "k": k, "n": n, "dtype": name,
                              "gflops": round(gflops(m, k, n, dtype), 1)}), flush=True)


if __name__ == "__main__":
    main()
