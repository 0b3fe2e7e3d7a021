#!/usr/bin/env python3
"""Generate the QLoRA model fixture: per-token log-probs of a tiny Qwen3 whose projections hold the
weights bitsandbytes' NF4 (double quantization) gives them — transformers' f32 model with each
nn.Linear weight replaced by `dequantize_4bit(quantize_4bit(w, nf4, compress_statistics=True))`, what
a 4-bit model computes in exact arithmetic. ptl's QLoRA model (the same checkpoint with qlora(...)
tuning and fresh adapters) must reproduce them.

bitsandbytes' own CPU forward of the 4-bit model (`BitsAndBytesConfig(load_in_4bit=True, ...)`) is not
that exact: on this machine it is up to 2.6e-2 away from its own dequantized weights times x (its CPU
4-bit matmul rounds internally); the script prints that figure, it is not the reference.

Writes tests/fixtures/nf4/qwen3/ (a random Qwen3: hidden 64, 2 layers, 4 heads, the tiny-chat
character tokenizer's 100-token vocabulary; every projection a multiple of 64 wide, as bitsandbytes'
CPU 4-bit matmul needs) and tests/fixtures/nf4/qlora_logprobs.json: the token ids of a few sequences
and transformers' per-token log-probs of the model loaded in 4 bits.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_qlora_fixture.py   (needs torch, transformers, bitsandbytes 0.50)
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import bitsandbytes  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/fixtures/nf4/qwen3"
TOKENIZER = ROOT / "pipelines/tokenizers/tiny-chat"
TEXTS = ["The capital of France is Paris.", "What is 2+2? It is 4.", "Water boils at 100 degrees Celsius."]


def make_model():
    import shutil
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=True, initializer_range=0.1, rms_norm_eps=1e-6)
    torch.manual_seed(5)
    Qwen3ForCausalLM(cfg).save_pretrained(MODEL, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER / f, MODEL / f)


def main():
    make_model()
    tok = AutoTokenizer.from_pretrained(MODEL)
    import bitsandbytes.functional as F
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                q, state = F.quantize_4bit(module.weight.data, quant_type="nf4", compress_statistics=True,
                                           blocksize=64)
                module.weight.data = F.dequantize_4bit(q, state)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    bnb_model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=config, dtype=torch.float32,
                                                     device_map="cpu").eval()
    rows, bnb_gap = [], 0.0
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].float()
            bnb_logits = bnb_model(input_ids=x).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        bnb_lp = torch.log_softmax(bnb_logits[:-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        bnb_gap = max(bnb_gap, (lp - bnb_lp).abs().max().item())
        rows.append({"ids": ids, "token_logprobs": lp.tolist()})
    print(f"bitsandbytes' CPU 4-bit forward vs its dequantized weights: {bnb_gap:.2e}")
    out = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__},
        "rows": rows,
    }
    (ROOT / "tests/fixtures/nf4/qlora_logprobs.json").write_text(json.dumps(out, indent=1) + "\n")
    print([len(r["ids"]) for r in rows])


if __name__ == "__main__":
    main()
