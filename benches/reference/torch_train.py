#!/usr/bin/env python3
"""PyTorch reference for benches/train.rs: training throughput in PyTorch eager + transformers
(+ PEFT for LoRA) on CPU with 2 threads, on the shared benchmark config.

Qwen3 architecture (Qwen3ForCausalLM from config, random init, f32), vocab 32000, hidden 512,
intermediate 1536, 8 layers, 8 heads, 4 KV heads, head_dim 64, tied embeddings (41.6 M
parameters); with --model quickstart the quickstart's model instead (vocab 100, hidden 128,
intermediate 384, 3 layers, 4 heads, 2 KV heads, head_dim 32, rope base 10000: 0.6 M parameters);
batch 8 x 256 random token ids, AdamW (lr 1e-4), transformers' default attention (sdpa).
One step = forward (labels=input_ids, transformers' own loss) + backward + gradient clipping at 1.0
(as ptl's and the HF Trainer's default max_grad_norm) + AdamW step + zero_grad.
With --dtype bf16 the forward runs under `torch.autocast("cpu", dtype=torch.bfloat16)` (bf16
matmuls, f32 weights and optimizer state: PyTorch's mixed precision on the CPU).
Warms up 2 steps, then times --steps steps; prints one JSON line
{"mode", "dtype", "params", "trainable", "tokens_per_s", "step_s", "peak_rss_mib", "losses"}.

    python benches/reference/torch_train.py --mode full [--steps 5]
    python benches/reference/torch_train.py --mode lora   # LoRA r 16, alpha 32, all linear layers
    python benches/reference/torch_train.py --dtype bf16  # bf16 autocast
    python benches/reference/torch_train.py --model quickstart  # the quickstart's 0.6 M model

Offline: nothing is downloaded (the model is built from a config).
"""

import argparse
import resource
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

BATCH, SEQ = 8, 256
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# (vocab, hidden, intermediate, layers, heads, kv heads, head_dim, rope base, max positions)
MODELS = {
    "bench": (32000, 512, 1536, 8, 8, 4, 64, 1000000.0, 4096),
    "quickstart": (100, 128, 384, 3, 4, 2, 32, 10000.0, 2048),
}


def config(name: str) -> Qwen3Config:
    vocab, hidden, inter, layers, heads, kv, head_dim, theta, positions = MODELS[name]
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        max_position_embeddings=positions,
        attention_dropout=0.0,
        use_cache=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["full", "lora"], default="full")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--model", choices=sorted(MODELS), default="bench")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = config(args.model)
    model = Qwen3ForCausalLM._from_config(cfg, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())  # tied: embed/lm_head counted once
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                bias="none", task_type="CAUSAL_LM",
            ),
        )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> float:
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step() for _ in range(2)]
    start = time.perf_counter()
    losses += [step() for _ in range(args.steps)]
    step_s = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "mode": args.mode,
        "model": args.model,
        "dtype": args.dtype,
        "params": params,
        "trainable": n_trainable,
        "tokens_per_s": round(BATCH * SEQ / step_s, 1),
        "step_s": round(step_s, 3),
        # The process's peak resident memory (Linux reports ru_maxrss in KiB).
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "losses": [round(x, 5) for x in losses],
    }), flush=True)


if __name__ == "__main__":
    main()
