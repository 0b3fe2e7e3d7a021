#!/usr/bin/env python3
"""Generate tiny golden decoder checkpoints + reference outputs for ptl's candle decoder.

For every model variant this writes, under tests/fixtures/models/<name>/:

  config.json                     exactly as transformers' save_pretrained writes it
  model.safetensors               (or model-0000X-of-0000N.safetensors + model.safetensors.index.json)
  expected.json                   reference outputs computed with transformers (float32, eager attention)

The Rust tests read these files with no Python involved.  Re-running the script regenerates
bit-identical weights (everything is seeded with torch.manual_seed / torch.Generator) and,
on the same transformers/torch versions, identical expected.json files.

Requirements (CPU is enough):  pip install torch safetensors transformers
Run:                           HF_HUB_OFFLINE=1 python3 scripts/make_model_fixtures.py
Only some variants:            ONLY=gemma3 python3 scripts/make_model_fixtures.py

Reference quantities in expected.json (all computed in float32, model.eval(), eager attention,
from the checkpoint *as reloaded from disk*, so bf16 checkpoints are rounded first):

  sequences       3 token-id lists (lengths 5, 17, 24), ids < vocab_size (=256, byte-level)
  token_logprobs  token_logprobs[s][i] = log_softmax(logits[s][i])[sequences[s][i+1]], i in 0..len-1
  last_logits     full logits (vocab_size floats) at the last position of sequences[0]
  greedy_prompt   sequences[1][:6]
  greedy_ids      the 8 NEW tokens of model.generate(greedy_prompt, do_sample=False,
                  max_new_tokens=8) with EOS stopping disabled (eos_token_id=None, pad_token_id=0)
  logit_std       std of all logits over all positions of all 3 sequences (shows they are far
                  from uniform)
  token_logprobs_float64, last_logits_float64
                  the same two quantities from the same checkpoint run in float64: transformers'
                  own float32 values lie up to ~8e-6 from these, as close as ptl's do, so the tests
                  compare ptl with these (an f32 engine against the exact values, not against
                  another f32 engine's rounding)

Only add the float64 quantities to existing fixtures (weights untouched):
                                 FLOAT64_ONLY=1 python3 scripts/make_model_fixtures.py
"""

import json
import math
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "models"

VOCAB = 256  # byte-level vocabulary; the tests feed raw ids
SEQ_LENS = (5, 17, 24)
SEQ_SEED = 20240501
GREEDY_PROMPT_LEN = 6
GREEDY_NEW = 8
MAX_DIR_BYTES = 600 * 1024

# Shared small shape.  head_dim defaults to hidden/heads = 16 except where overridden (qwen3).
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    # No EOS/BOS/PAD so nothing stops or rewrites generation; tests use raw ids.
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
transformers.utils.logging.disable_progress_bar()

# Every greedy step must win by at least this much (top1 - top2 logit), so a Rust implementation
# that matches to ~1e-4 cannot flip an argmax.
MIN_GREEDY_MARGIN = 1e-2


def make_sequences():
    """Three fixed token sequences, identical for every model."""
    g = torch.Generator().manual_seed(SEQ_SEED)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in SEQ_LENS]


def reinit_(model, seed):
    """Overwrite the default (tiny, ~0.02 std) init so logits are far from uniform.

    - embeddings:            N(0, 0.5)
    - linear weights:        N(0, 0.2)   (lm_head too, unless tied to the embeddings)
    - linear biases:         N(0, 0.1)   (qwen2 q/k/v)
    - RMSNorm weights:       U(0.8, 1.2) (input/post-attention/final norms, qwen3 q_norm/k_norm)

    named_parameters() de-duplicates shared tensors, so with tied embeddings the shared tensor is
    visited once, under its embed_tokens name, and gets the embedding init.
    """
    g = torch.Generator().manual_seed(seed)
    # Gemma multiplies embeddings by sqrt(hidden) and norms by (1 + w): the same spread from smaller
    # embeddings and norm weights around 0.
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "embed_tokens" in name:
                new = torch.randn(p.shape, generator=g) * (0.3 if gemma else 0.5)
            elif "norm" in name and gemma:
                new = 0.4 * torch.rand(p.shape, generator=g) - 0.2
            elif "norm" in name:
                new = 0.8 + 0.4 * torch.rand(p.shape, generator=g)
            elif name.endswith(".bias"):
                new = torch.randn(p.shape, generator=g) * 0.1
            elif name.endswith(".weight"):
                new = torch.randn(p.shape, generator=g) * 0.2
            else:
                raise RuntimeError(f"unexpected parameter {name}")
            p.copy_(new.to(p.dtype))


def build(cls, config, seed):
    torch.manual_seed(seed)
    model = cls(config)
    reinit_(model, seed)
    model.eval()
    return model


@torch.no_grad()
def logits_of(model, ids):
    return model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def reference(model, sequences):
    """All reference outputs for one (float32, eager) model."""
    all_logits = [logits_of(model, s) for s in sequences]
    token_logprobs = []
    for s, lg in zip(sequences, all_logits):
        lp = torch.log_softmax(lg, dim=-1)
        token_logprobs.append([lp[i, s[i + 1]].item() for i in range(len(s) - 1)])
    last_logits = all_logits[0][-1].tolist()
    logit_std = torch.cat(all_logits, 0).std().item()

    prompt = sequences[1][:GREEDY_PROMPT_LEN]
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=GREEDY_NEW,
        min_new_tokens=GREEDY_NEW,
        eos_token_id=None,
        pad_token_id=0,
        use_cache=True,
    )
    greedy_ids = out[0, len(prompt):].tolist()
    assert len(greedy_ids) == GREEDY_NEW, greedy_ids

    # Cross-check generate() (KV cache, sliding-window cache for mistral) against a naive
    # full-recompute argmax loop.
    ids = list(prompt)
    margins = []
    for _ in range(GREEDY_NEW):
        top2 = logits_of(model, ids)[-1].topk(2).values
        margins.append((top2[0] - top2[1]).item())
        ids.append(int(logits_of(model, ids)[-1].argmax()))
    assert ids[len(prompt):] == greedy_ids, (ids[len(prompt):], greedy_ids)
    assert min(margins) > MIN_GREEDY_MARGIN, f"greedy near-tie: margins {margins}"

    return dict(
        token_logprobs=token_logprobs,
        last_logits=last_logits,
        greedy_prompt=prompt,
        greedy_ids=greedy_ids,
        logit_std=logit_std,
        _all_logits=all_logits,
        _min_margin=min(margins),
    )


@torch.no_grad()
def float64_reference(d, sequences):
    """token_logprobs and last_logits of the checkpoint in `d`, computed in float64."""
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    m.eval()
    token_logprobs, last_logits = [], None
    for n, s in enumerate(sequences):
        logits = m(torch.tensor([s])).logits[0]
        lp = torch.log_softmax(logits, dim=-1)
        token_logprobs.append([lp[i, s[i + 1]].item() for i in range(len(s) - 1)])
        if n == 0:
            last_logits = logits[-1].tolist()
    return dict(token_logprobs_float64=token_logprobs, last_logits_float64=last_logits)


def save(model, name, dtype=torch.float32, max_shard_size="50GB"):
    d = OUT_DIR / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.to(dtype).save_pretrained(d, max_shard_size=max_shard_size)
    # The tests only use config.json + weights; generation defaults are passed explicitly.
    gc = d / "generation_config.json"
    if gc.exists():
        gc.unlink()
    return d


def reload(cls, d):
    """Load the checkpoint back exactly as written and upcast to float32 for the reference."""
    m = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    m.generation_config.eos_token_id = None
    m.generation_config.bos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def dir_size(d):
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def main():
    sequences = make_sequences()
    print(f"transformers {transformers.__version__}  torch {torch.__version__}")
    print("sequences:", sequences)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    default_rope = {"rope_type": "default", "rope_theta": 10000.0}
    llama3_rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }

    specs = []  # (name, cls, config, save dtype, shard size)

    specs.append(("llama", LlamaForCausalLM, LlamaConfig(
        **COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=dict(default_rope), attn_implementation="eager",
    ), torch.float32, "50GB"))

    specs.append(("llama3_scaled", LlamaForCausalLM, LlamaConfig(
        **COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=dict(llama3_rope), attn_implementation="eager",
    ), torch.float32, "50GB"))

    specs.append(("mistral_sw", MistralForCausalLM, MistralConfig(
        **COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=8,
        rope_parameters=dict(default_rope), attn_implementation="eager",
    ), torch.float32, "50GB"))

    specs.append(("qwen2", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        rope_parameters=dict(default_rope), attn_implementation="eager",
    ), torch.bfloat16, "50GB"))

    specs.append(("qwen3", Qwen3ForCausalLM, Qwen3Config(
        **COMMON, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=False,
        use_sliding_window=False, rope_parameters=dict(default_rope),
        attn_implementation="eager",
    ), torch.float32, "200KB"))

    # Gemma 3 (text): scaled embeddings, (1 + w) norms in f32, GeGLU (tanh GELU), q/k norms,
    # query_pre_attn_scalar, sliding and full layers alternating with their own rope bases.
    def gemma3():
        return Gemma3TextConfig(
            **COMMON, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=True,
            sliding_window=4, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
            attn_implementation="eager",
        )

    specs.append(("gemma3", Gemma3ForCausalLM, gemma3(), torch.float32, "50GB"))

    # Gemma 2: as Gemma 3 without q/k norms and with one rope base, plus soft-capping of attention
    # scores and final logits (small caps here, so tanh is far from linear on these logits).
    def gemma2():
        return Gemma2Config(
            **COMMON, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=True,
            sliding_window=4, query_pre_attn_scalar=24, final_logit_softcapping=5.0,
            attn_logit_softcapping=3.0, layer_types=["sliding_attention", "full_attention"],
            rope_parameters=dict(default_rope), attn_implementation="eager",
        )

    specs.append(("gemma2", Gemma2ForCausalLM, gemma2(), torch.float32, "50GB"))

    # Gemma 3 stored in bf16 (as Gemma checkpoints ship): the reference is the f32 model of the
    # rounded weights, as for qwen2.
    specs.append(("gemma3_bf16", Gemma3ForCausalLM, gemma3(), torch.bfloat16, "50GB"))
    specs.append(("gemma2_bf16", Gemma2ForCausalLM, gemma2(), torch.bfloat16, "50GB"))

    only = [n for n in os.environ.get("ONLY", "").split(",") if n]
    if os.environ.get("FLOAT64_ONLY"):
        for name, *_ in specs:
            if only and name not in only:
                continue
            path = OUT_DIR / name / "expected.json"
            expected = json.loads(path.read_text())
            expected.update(float64_reference(OUT_DIR / name, expected["sequences"]))
            with open(path, "w") as f:
                json.dump(expected, f, indent=1)
                f.write("\n")
            worst = max(abs(a - b)
                        for row, row64 in zip(expected["token_logprobs"],
                                              expected["token_logprobs_float64"])
                        for a, b in zip(row, row64))
            print(f"{name:14s} transformers float32 vs float64 log-probs: {worst:.2e}")
        return
    summary = []
    for seed, (name, cls, config, dtype, shard) in enumerate(specs, start=1):
        if only and name not in only:
            continue
        model = build(cls, config, seed * 1000)
        if config.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        # In-memory f32 logits, used for the variant checks below and the round-trip check.
        mem_logits = [logits_of(model, s) for s in sequences]

        # ---- variant checks: the feature under test must actually change the outputs ----
        if name == "llama3_scaled":
            plain_cfg = LlamaConfig(**{**config.to_dict(), "rope_parameters": dict(default_rope)})
            plain_cfg._attn_implementation = "eager"
            plain = cls(plain_cfg).eval()
            plain.load_state_dict(model.state_dict())
            diff = (logits_of(plain, sequences[2]) - mem_logits[2]).abs().max().item()
            print(f"  llama3 scaling: max |logit diff| vs unscaled rope = {diff:.4f}")
            assert diff > 1e-2, "llama3 rope scaling does not change logits"
        if name == "mistral_sw":
            full_cfg = MistralConfig(**{**config.to_dict(), "sliding_window": None})
            full_cfg._attn_implementation = "eager"
            full = cls(full_cfg).eval()
            full.load_state_dict(model.state_dict())
            fl = logits_of(full, sequences[2])
            w = config.sliding_window
            same = (fl[:w] - mem_logits[2][:w]).abs().max().item()
            diff = (fl[w:] - mem_logits[2][w:]).abs().max().item()
            print(f"  sliding window {w}: max |diff| vs no window, positions <{w}: {same:.2e}, "
                  f">={w}: {diff:.4f}")
            assert same < 1e-5, "positions inside the window must be unaffected"
            assert diff > 1e-2, "sliding window does not change logits"
            # Per-position check of the exact window: position w-1 is still unaffected (it sees
            # w tokens 0..w-1), position w differs (it loses token 0).
            assert (fl[w - 1] - mem_logits[2][w - 1]).abs().max() < 1e-5
            assert (fl[w] - mem_logits[2][w]).abs().max() > 1e-4

        d = save(model, name, dtype=dtype, max_shard_size=shard)
        ref_model = reload(cls, d)
        ref = reference(ref_model, sequences)

        # f32 checkpoints must round-trip exactly; the bf16 one must differ (weights got rounded).
        rt = max((a - b).abs().max().item() for a, b in zip(ref["_all_logits"], mem_logits))
        if dtype == torch.float32:
            assert rt == 0.0, f"{name}: f32 round trip changed logits by {rt}"
        else:
            assert rt > 0.0, f"{name}: bf16 rounding had no effect?"
        del ref["_all_logits"]
        min_margin = ref.pop("_min_margin")

        expected = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "sequences": sequences,
            **ref,
            **float64_reference(d, sequences),
        }
        with open(d / "expected.json", "w") as f:
            json.dump(expected, f, indent=1)
            f.write("\n")

        size = dir_size(d)
        assert size < MAX_DIR_BYTES, f"{name}: {size} bytes"
        files = sorted(p.name for p in d.iterdir())
        lp = [x for row in ref["token_logprobs"] for x in row]
        mean_lp = sum(lp) / len(lp)
        summary.append(
            f"{name:14s} {size / 1024:6.1f} KiB  logit_std={ref['logit_std']:.3f}  "
            f"mean token logprob={mean_lp:.3f} (uniform={-math.log(VOCAB):.3f})  "
            f"greedy={ref['greedy_ids']} (min top1-top2 margin {min_margin:.3f})  roundtrip_diff={rt:.2e}  files={files}"
        )

    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
