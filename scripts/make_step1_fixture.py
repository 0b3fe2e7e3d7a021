#!/usr/bin/env python3
"""Generate the "step-1 loss" fixture: ptl's first SFT loss must equal transformers' on the same
model, data and chat template.

Writes, under tests/fixtures/step1/:

  model/config.json, model/model.safetensors   a tiny Qwen3 (hidden 16, 2 layers, 2 heads, 1 KV head,
                                               head_dim 8, tied embeddings) over the REAL Qwen3
                                               vocabulary, saved in bf16
  model/tokenizer.json, model/tokenizer_config.json
                                               symlinks to ../../tokenizers/qwen3/ (as
                                               pipelines/models/qwen3-tiny does)
  data.jsonl                                   4 conversations in the `messages` format (system
                                               prompts, multi-turn, a reasoning block, varied lengths)
  qwen3_training.jinja                         TRL's training variant of the Qwen3 template (with
                                               {% generation %} tags), copied from the installed trl
  expected.json                                the reference losses, per-row ids and masks, versions

The tests (tests/step1.rs) need no Python.

Reference quantities (all rows in ONE batch; loss = Σ masked token NLL / Σ mask over the whole
batch, labels shifted as transformers' causal-LM loss does, i.e. token j is predicted from < j;
float32, eager attention, from the bf16 checkpoint as reloaded from disk):

  assistant      the Qwen3 template (tokenizer_config.json), no {% generation %} tags. ptl's rule for
                 such templates (docs/data.md, src/data/encode.rs): each assistant turn trains from
                 the end of its generation header `<|im_start|>assistant\\n` through its content and
                 the `<|im_end|>` that ends it (not the "\\n" after it). Computed here
                 independently, on token ids: after every [<|im_start|>, "assistant", "\\n"] run,
                 mask up to and including the next <|im_end|>.
  all_tokens     the same ids, every token trained (ptl's `train_on_prompt = true`).
  last_turn      the last assistant turn only (ptl's `mask_history = true`).
  trl            what TRL's SFTTrainer(assistant_only_loss=True) trains on for this tokenizer: it
                 swaps in qwen3_training.jinja and uses transformers'
                 apply_chat_template(return_assistant_tokens_mask=True) (the {% generation %} spans,
                 here `<think>…</think>\\n\\n` + content + `<|im_end|>\\n`). Its ids differ from the
                 plain template's (every assistant turn carries a think block).
  lora           the `assistant` loss with a fresh PEFT LoRA (r=4, B=0) on all linear layers: equal
                 to `assistant` (checked here), since a fresh adapter changes nothing at step 1.

Re-run:  HF_HUB_OFFLINE=1 python3 scripts/make_step1_fixture.py
Needs torch, transformers, safetensors; trl (only for its template file) and peft (the LoRA
check) are used when installed.
"""

import json
import math
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "step1"
TOK_SRC = ROOT / "tests" / "fixtures" / "tokenizers" / "qwen3"
TOK_FILES = ("tokenizer.json", "tokenizer_config.json")
SEED = 20250601
MAX_BYTES = 6 * 1024 * 1024

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
transformers.utils.logging.disable_progress_bar()


def s(c):
    return {"role": "system", "content": c}


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


ROWS = [
    [
        s("You are a concise assistant."),
        u("What is the capital of France?"),
        a("Paris."),
    ],
    [
        s("You are a helpful math tutor. Explain each step."),
        u("What is 12 times 7?"),
        a("12 times 7 is 84: 10 times 7 is 70, plus 2 times 7 is 14, and 70 + 14 = 84."),
        u("And 84 divided by 4?"),
        a("84 divided by 4 is 21."),
        u("Thanks! One more: what is 21 squared?"),
        a("21 squared is 441."),
    ],
    [
        u("Write a haiku about autumn leaves."),
        a("Crimson leaves drifting,\nwhispers on the cooling wind,\nthe branches let go."),
        u("Now one about snow, please."),
        a("Silent flakes descend,\nthe world is wrapped in white wool,\nfootsteps disappear."),
    ],
    [
        s("Think before you answer. Reply in one word when you can."),
        u("Is a tomato a fruit or a vegetable?"),
        a("<think>\nBotanically, a tomato develops from the flower's ovary and holds seeds.\n</think>\n\nFruit."),
    ],
]


def build_model(vocab_size, eos_id, bos_id):
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        attn_implementation="eager",
    )
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config)
    # A large init so per-token losses vary a lot: a masking or shifting mistake moves the mean loss
    # by far more than the 1e-4 the test allows. named_parameters() visits the tied tensor once.
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "embed_tokens" in name:
                new = torch.randn(p.shape, generator=g) * 1.0
            elif "norm" in name:
                new = 0.8 + 0.4 * torch.rand(p.shape, generator=g)
            elif name.endswith(".weight"):
                new = torch.randn(p.shape, generator=g) * 0.35
            else:
                raise RuntimeError(f"unexpected parameter {name}")
            p.copy_(new)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def assistant_mask_from_ids(ids, im_start, im_end, assistant_header):
    """ptl's rule for templates without generation tags, on token ids: after each
    [<|im_start|>, "assistant", "\\n"] the turn trains up to and including the next <|im_end|>.
    Returns the mask and the (start, end) token spans of the turns."""
    head = [im_start] + assistant_header
    mask = [0] * len(ids)
    spans = []
    i = 0
    while i < len(ids):
        if ids[i : i + len(head)] == head:
            start = i + len(head)
            end = ids.index(im_end, start)  # raises if a turn is never closed
            for j in range(start, end + 1):
                mask[j] = 1
            spans.append((start, end + 1))
            i = end + 1
        else:
            i += 1
    return mask, spans


@torch.no_grad()
def token_nll(model, ids):
    """nll[j] = -log p(ids[j] | ids[<j]) for j >= 1; nll[0] = 0 (never predicted)."""
    logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    return [0.0] + (-picked).tolist()


def batch_loss(nlls, masks):
    """Token-mean over the whole batch; position 0 is never a target (shifted labels)."""
    total = sum(n * m for row_n, row_m in zip(nlls, masks) for n, m in zip(row_n[1:], row_m[1:]))
    count = sum(sum(m[1:]) for m in masks)
    return total / count, count


@torch.no_grad()
def hf_labels_loss(model, ids_rows, masks):
    """The same loss the transformers way: one right-padded batch, labels = ids with -100 where
    untrained, model(..., labels=...) (its own shift and token mean)."""
    width = max(len(r) for r in ids_rows)
    input_ids = torch.zeros(len(ids_rows), width, dtype=torch.long)
    attn = torch.zeros(len(ids_rows), width, dtype=torch.long)
    labels = torch.full((len(ids_rows), width), -100, dtype=torch.long)
    for b, (ids, m) in enumerate(zip(ids_rows, masks)):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attn[b, : len(ids)] = 1
        labels[b, : len(ids)] = torch.tensor([t if k else -100 for t, k in zip(ids, m)])
    return model(input_ids=input_ids, attention_mask=attn, labels=labels).loss.item()


def main():
    print(f"transformers {transformers.__version__}  torch {torch.__version__}")
    if OUT.exists():
        shutil.rmtree(OUT)
    mdir = OUT / "model"
    mdir.mkdir(parents=True)
    for f in TOK_FILES:
        os.symlink(os.path.relpath(TOK_SRC / f, mdir), mdir / f)

    tok = AutoTokenizer.from_pretrained(mdir)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assistant_header = tok.encode("assistant\n", add_special_tokens=False)
    assert tok.encode("<|im_start|>assistant\n", add_special_tokens=False) == [im_start] + assistant_header
    vocab_size = 151936  # Qwen3's embedding size; covers len(tokenizer)
    assert len(tok) <= vocab_size, len(tok)
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")

    model = build_model(vocab_size, im_end, bos_id)
    model.to(torch.bfloat16).save_pretrained(mdir)
    gc = mdir / "generation_config.json"
    if gc.exists():
        gc.unlink()
    ref = Qwen3ForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager")
    ref.eval()

    with open(OUT / "data.jsonl", "w") as f:
        for r in ROWS:
            f.write(json.dumps({"messages": r}, ensure_ascii=False) + "\n")

    # ---- the plain Qwen3 template: ids, ptl's assistant mask, all-tokens, last turn ----
    rows = []
    for messages in ROWS:
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True)
        ids = list(out["input_ids"])
        text = tok.apply_chat_template(messages, tokenize=False)
        assert ids == tok(text, add_special_tokens=False).input_ids
        mask, spans = assistant_mask_from_ids(ids, im_start, im_end, assistant_header)
        n_turns = sum(1 for m in messages if m["role"] == "assistant")
        assert len(spans) == n_turns, (spans, n_turns)
        last = [0] * len(ids)
        for j in range(*spans[-1]):
            last[j] = 1
        rows.append(dict(text=text, ids=ids, spans=spans, assistant=mask, all_tokens=[1] * len(ids),
                         last_turn=last))
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        print(f"row: {len(ids)} tokens, {sum(mask)} trained: {trained!r}")

    nlls = [token_nll(ref, r["ids"]) for r in rows]
    ids_rows = [r["ids"] for r in rows]
    results = {}
    for key in ("assistant", "all_tokens", "last_turn"):
        masks = [r[key] for r in rows]
        loss, count = batch_loss(nlls, masks)
        hf = hf_labels_loss(ref, ids_rows, masks)
        assert abs(hf - loss) < 5e-5, (key, hf, loss)  # f32 vs f64 sums
        results[key] = dict(loss=loss, tokens=count, hf_f32=hf)

    # How far plausible masking mistakes move the loss (they must be far beyond the 1e-4 tolerance).
    def spans_mask(r, extend_start=0, extend_end=0):
        m = [0] * len(r["ids"])
        for a_, b_ in r["spans"]:
            for j in range(max(0, a_ - extend_start), min(len(m), b_ + extend_end)):
                m[j] = 1
        return m

    variants = {
        "without <|im_end|>": [spans_mask(r, 0, -1) for r in rows],
        "plus the \\n after <|im_end|>": [spans_mask(r, 0, 1) for r in rows],
        "plus the header tokens": [spans_mask(r, 1 + len(assistant_header), 0) for r in rows],
        "mask shifted by one token": [r["assistant"][1:] + [0] for r in rows],
        "per-row mean, then mean": None,
    }
    print()
    sensitivities = {}
    for name, masks in variants.items():
        if masks is None:
            per_row = [batch_loss([n], [m])[0] for n, m in zip(nlls, [r["assistant"] for r in rows])]
            v = sum(per_row) / len(per_row)
        else:
            v = batch_loss(nlls, masks)[0]
        d = abs(v - results["assistant"]["loss"])
        sensitivities[name] = d
        print(f"  {name:38s} loss {v:.6f}  (|Δ| = {d:.4f})")
        assert d > 1e-2, f"{name}: only {d}"

    # ---- TRL: SFTTrainer(assistant_only_loss=True) swaps in its training template ----
    trl_version = None
    try:
        import trl
        from trl.chat_template_utils import get_training_chat_template

        trl_version = trl.__version__
        # The fixture tokenizer carries an older revision of Qwen3's template, which TRL does not
        # recognize (it would refuse to patch it); TRL's copy of the current Qwen3 template renders
        # these rows identically, and for that template TRL swaps in qwen3_training.jinja.
        current = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text(encoding="utf-8")
        for messages in ROWS:
            assert tok.apply_chat_template(messages, tokenize=False, chat_template=current) == \
                tok.apply_chat_template(messages, tokenize=False)
        original = tok.chat_template
        tok.chat_template = current
        training = get_training_chat_template(tok)
        tok.chat_template = original
        assert training is not None and "{%- generation %}" in training
        (OUT / "qwen3_training.jinja").write_text(training, encoding="utf-8")
    except ImportError:
        raise SystemExit("trl is needed once to copy its Qwen3 training template (pip install trl)") from None
    trl_rows = []
    for messages in ROWS:
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True, chat_template=training)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        assert 1 in mask
        trl_rows.append(dict(ids=ids, mask=mask))
    trl_nlls = [token_nll(ref, r["ids"]) for r in trl_rows]
    loss, count = batch_loss(trl_nlls, [r["mask"] for r in trl_rows])
    hf = hf_labels_loss(ref, [r["ids"] for r in trl_rows], [r["mask"] for r in trl_rows])
    assert abs(hf - loss) < 5e-5, (hf, loss)
    results["trl"] = dict(loss=loss, tokens=count, hf_f32=hf)

    # ---- LoRA: a fresh adapter (B = 0) leaves the step-1 loss unchanged ----
    peft_version = None
    try:
        import peft

        peft_version = peft.__version__
        lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
        lmodel = peft.get_peft_model(
            Qwen3ForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager"), lcfg
        )
        lmodel.eval()
        lora = hf_labels_loss(lmodel, ids_rows, [r["assistant"] for r in rows])
        # Same f32 computation with and without the adapter: equal up to f32 rounding.
        assert abs(lora - results["assistant"]["hf_f32"]) < 1e-6, (lora, results["assistant"])
        results["lora"] = dict(loss=results["assistant"]["loss"], tokens=results["assistant"]["tokens"],
                               hf_f32=lora)
    except ImportError:
        print("peft not installed: the LoRA check is skipped")

    logits_std = ref(torch.tensor([rows[1]["ids"]])).logits.std().item()
    expected = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "trl": trl_version,
        "peft": peft_version,
        "note": "loss = sum of masked next-token NLL over all rows / number of masked targets (one batch)",
        "losses": results,
        "rows": [
            {"ids": r["ids"], "assistant_mask": r["assistant"], "last_turn_mask": r["last_turn"]}
            for r in rows
        ],
        "trl_rows": trl_rows,
        "mistake_sensitivity": sensitivities,
        "logit_std": logits_std,
    }
    with open(OUT / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

    print()
    for k, v in results.items():
        print(f"{k:11s} loss {v['loss']:.6f} over {v['tokens']} tokens (transformers f32 labels loss "
              f"{v['hf_f32']:.6f})")
    d = abs(results["all_tokens"]["loss"] - results["assistant"]["loss"])
    print(f"|all_tokens - assistant| = {d:.4f};  logit std {logits_std:.2f};  "
          f"uniform loss would be {math.log(vocab_size):.3f}")
    assert d > 1e-2
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"fixture size {size} bytes (symlinks not counted)")
    assert size < MAX_BYTES, size


if __name__ == "__main__":
    main()
