"""Drives `ptl serve` with the official openai client (strict response validation): every endpoint,
streaming and not, against the answers transformers + PEFT gave (tests/fixtures/serve/expected.json).

Usage: python openai_serve_check.py BASE_URL EXPECTED_JSON. Prints one line per check; exits 1 at the
first failure, with what differed."""

import json
import sys
import threading

import openai

URL, EXPECTED = sys.argv[1], json.load(open(sys.argv[2]))
client = openai.OpenAI(base_url=URL, api_key="unused", _strict_response_validation=True, max_retries=0)
MODELS = ["base", "a", "b", "c"]
N = EXPECTED["max_new_tokens"]


def check(what, ok, detail=""):
    if not ok:
        print(f"FAIL {what}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def messages(prompt):
    return [{"role": "user", "content": prompt}]


def chat(model, prompt, **kw):
    return client.chat.completions.create(model=model, messages=messages(prompt), temperature=0, max_tokens=N, **kw)


def streamed(model, prompt, **kw):
    text, chunks = "", []
    for c in client.chat.completions.create(model=model, messages=messages(prompt), temperature=0,
                                            max_tokens=N, stream=True, **kw):
        chunks.append(c)
        for ch in c.choices:
            text += ch.delta.content or ""
    return text, chunks


# Models: the base and its adapters, each adapter naming its base as `parent`.
listed = {m.id: m for m in client.models.list().data}
check("models", set(listed) == set(MODELS), listed)
check("adapters name their base", all((listed[m].model_extra or {}).get("parent") == "base" for m in MODELS[1:]))

# Greedy answers equal transformers + PEFT's, for the base and each adapter.
for model in MODELS:
    for row in EXPECTED["answers"][model]:
        r = chat(model, row["prompt"])
        c = r.choices[0]
        check(f"{model} {row['prompt']!r}", c.message.content == row["text"], (c.message.content, row["text"]))
        check(f"{model} usage", r.usage.completion_tokens == len(row["ids"])
              and r.usage.prompt_tokens == len(row["prompt_ids"]), r.usage)
        reason = "stop" if row["ids"] and row["ids"][-1] == 2 else "length"
        check(f"{model} finish_reason", c.finish_reason == reason, c.finish_reason)

# `base:adapter` selects the adapter, as Ray Serve spells it.
row = EXPECTED["answers"]["a"][0]
check("base:a", chat("base:a", row["prompt"]).choices[0].message.content == row["text"])

# Streaming: the role first, the deltas join to the same answer, finish_reason last, then usage.
row = EXPECTED["answers"]["b"][1]
text, chunks = streamed("b", row["prompt"], stream_options={"include_usage": True})
check("stream text", text == row["text"], (text, row["text"]))
check("stream role first", chunks[0].choices[0].delta.role == "assistant")
check("stream finish_reason", [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length"))
check("stream usage", chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(row["ids"]), chunks[-1])

# A stop string ends the answer before it, and is not in it.
row = EXPECTED["answers"]["base"][0]
stop = row["text"][2:4]
r = chat("base", row["prompt"], stop=[stop])
check("stop string", r.choices[0].message.content == row["text"][: row["text"].index(stop)]
      and r.choices[0].finish_reason == "stop", r.choices[0])
text, _ = streamed("base", row["prompt"], stop=stop)
check("stop string, streamed", text == row["text"][: row["text"].index(stop)], text)

# Log-probs: one entry per answer token, with the alternatives asked for.
r = chat("a", EXPECTED["answers"]["a"][2]["prompt"], logprobs=True, top_logprobs=2)
lp = r.choices[0].logprobs.content
check("chat logprobs", len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in lp)
      and all(t.logprob <= 0 for t in lp), lp)

# n choices, sampled with a seed: reproducible.
kw = dict(model="a", messages=messages("7+8="), temperature=0.9, max_tokens=N, n=3, seed=5)
r1, r2 = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
check("n choices", [c.index for c in r1.choices] == [0, 1, 2])
check("seeded sampling", [c.message.content for c in r1.choices] == [c.message.content for c in r2.choices])

# Legacy completions: a list of prompts, log-probs, echo.
r = client.completions.create(model="base", prompt=["12", "7+"], max_tokens=4, temperature=0, logprobs=2)
check("completions", len(r.choices) == 2 and all(len(c.logprobs.tokens) == len(c.logprobs.token_logprobs)
                                                for c in r.choices), r)
r = client.completions.create(model="base", prompt="12", max_tokens=3, temperature=0, echo=True)
check("echo", r.choices[0].text.startswith("12"), r.choices[0].text)
# The SDK types a legacy completion choice's finish_reason as never null, yet OpenAI (and ptl) send
# null until a stream's last chunk: this one check reads the stream without strict validation.
loose = openai.OpenAI(base_url=URL, api_key="unused", max_retries=0)
chunks = list(loose.completions.create(model="b", prompt="12", max_tokens=3, temperature=0, stream=True))
check("completions stream", chunks[-1].choices[0].finish_reason in ("stop", "length")
      and all(c.choices[0].finish_reason is None for c in chunks[:-1]))

# 64 concurrent streaming clients over the base and three adapters: every answer complete and
# right (rows of different adapters share the batch); 8 more that leave mid-stream free their rows.
results, errors = {}, []


def client_thread(k):
    model = MODELS[k % 4]
    row = EXPECTED["answers"][model][(k // 4) % 4]
    try:
        results[k] = (streamed(model, row["prompt"])[0], row["text"])
    except Exception as e:  # noqa: BLE001
        errors.append(repr(e))


def leaver(k):
    try:
        stream = client.chat.completions.create(model=MODELS[k % 4], messages=messages("hello"),
                                                temperature=0, max_tokens=2000, stream=True)
        next(iter(stream))
        stream.close()
    except Exception as e:  # noqa: BLE001
        errors.append(repr(e))


threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(64)]
threads += [threading.Thread(target=leaver, args=(k,)) for k in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("64 concurrent clients", not errors and len(results) == 64
      and all(got == want for got, want in results.values()), (errors, [v for v in results.values() if v[0] != v[1]]))
row = EXPECTED["answers"]["a"][3]
check("served after the leavers", chat("a", row["prompt"]).choices[0].message.content == row["text"])
print("all checks passed")
