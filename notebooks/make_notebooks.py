"""Writes the teaching notebooks (notebooks/*.ipynb) from the cells below, and optionally runs them.

    python notebooks/make_notebooks.py            # write the four .ipynb files, outputs empty
    python notebooks/make_notebooks.py --execute  # ... and run them, saving the outputs (plots)

The notebooks are generated so that their code lives in one reviewable Python file; edit the cells
here, not in the .ipynb files. Each notebook runs offline, top to bottom, in well under two
minutes: it uses the demo model (``minicodegen.load("tiny")``) when the package ships one, and
otherwise builds a small CodeGen-shaped model with random weights in NumPy (the SETUP cell).
``tests/test_notebooks.py`` runs them all, so a notebook that breaks fails the build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The model every notebook uses (shared so that they agree). Executed as the notebook's first code.
SETUP = r'''import numpy as np
import matplotlib
import matplotlib.pyplot as plt
import minicodegen
from minicodegen import Tokenizer
from minicodegen.model import Config, Model, expected_shapes


def random_model(n_embd=128, n_layer=2, n_head=4, rotary_dim=16, seed=0):
    """A CodeGen-shaped model with random weights, CodeGen's vocabulary and tokenizer.

    Weights are named as in the Hugging Face checkpoints (expected_shapes lists them);
    matrices ~ N(0, 1/n_in) (the head and qkv a little larger, so that distributions and
    attention maps are not flat), layer-norm gains ~ 1, biases small.
    """
    cfg = Config(vocab_size=51200, n_embd=n_embd, n_layer=n_layer, n_head=n_head, rotary_dim=rotary_dim,
                 n_positions=2048, n_inner=4 * n_embd)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_f.weight")):
            w = 1 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            w = 0.1 * rng.standard_normal(shape)
        else:
            gain = 3.0 if name == "lm_head.weight" else 2.0 if "qkv_proj" in name else 1.0
            w = gain * rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = w.astype(np.float32)
    return Model(cfg, weights, Tokenizer.codegen(), fast=False, source=f"random weights (seed {seed})")


try:  # the trained demo model, if this minicodegen ships one
    model = minicodegen.load("tiny", fast=False)
    # Its weights are int8. These notebooks multiply them in float32, as transformers would; the
    # library's default also rounds each row of activations to 8 bits (README: "What int8 costs").
    model.int8_activations = "float32"
except Exception as e:  # noqa: BLE001
    print(f"no demo model ({type(e).__name__}): using random weights; pictures show noise, not learned structure")
    model = random_model(**RANDOM_SHAPE)
cfg = model.config
tok = model.tokenizer
print(model.source, cfg)'''


def setup(**shape: int) -> str:
    """The SETUP cell with the shape of the random fallback model."""
    return f"RANDOM_SHAPE = {shape!r}\n" + SETUP


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# ============================================================================ 01 the tokenizer

TOKENIZER = [
    md(r"""
# 1. The tokenizer: from text to token ids

CodeGen reads **token ids**, integers in `[0, 51200)`. Its tokenizer is GPT-2's byte-level BPE plus
38 tokens for runs of spaces and tabs. This notebook follows a piece of code through every step of
`minicodegen.Tokenizer.encode`:

1. the text becomes **bytes** (UTF-8);
2. each byte is spelled as one printable **character** (the byte↔unicode table);
3. a regex cuts the text into **words**;
4. **BPE** merges each word's characters pair by pair, in the order `merges.txt` ranks them;
5. the resulting tokens are looked up in `vocab.json`.

Before step 3, the **added tokens** (indentation runs, `<|endoftext|>`) are cut out of the raw text.
Everything here runs offline: the vocabulary ships with minicodegen.
"""),
    code(r"""
import matplotlib
import matplotlib.pyplot as plt
import inspect, textwrap
from minicodegen import Tokenizer
from minicodegen import tokenizer as T

tok = Tokenizer.codegen()
print(tok)
text = "def café(x):\n        return x + 1  # 😀"
ids = tok.encode(text)
print(ids)
print([tok.decode([i]) for i in ids])
"""),
    md(r"""
## Step 1: bytes

A tokenizer that works on bytes never meets an unknown character: any text is a sequence of the
256 byte values. ASCII characters are one byte each; `é` is two bytes, the emoji four.
"""),
    code(r"""
for ch in ["d", " ", "\n", "é", "😀"]:
    print(repr(ch), "->", list(ch.encode("utf-8")))
print(len(text), "characters,", len(text.encode("utf-8")), "bytes")
"""),
    md(r"""
## Step 2: the byte ↔ unicode table

BPE works on strings, and GPT-2 wanted every byte to be a *visible* character in `vocab.json` (no
spaces, no control characters). So the 188 printable Latin-1 bytes stand for themselves and the
other 68 (controls, space, DEL, 0x80–0xA0, the soft hyphen) are given the characters `U+0100`,
`U+0101`, … in byte order. That is why the space is `Ġ` (U+0120) and the newline `Ċ` in the vocabulary.
"""),
    code(r"""
table = T.bytes_to_unicode()            # {byte: char}
shifted = {b for b, c in table.items() if ord(c) != b}
print(len(table), "bytes,", len(shifted), "of them spelled with another character")
print("space ->", table[0x20], " newline ->", table[0x0A], " tab ->", table[0x09], " é (0xE9) ->", table[0xE9])

fig, ax = plt.subplots(figsize=(8, 8))
for b, c in table.items():
    row, col = divmod(b, 16)
    ax.add_patch(plt.Rectangle((col, row), 1, 1, color="#f4a582" if b in shifted else "#d1e5f0"))
    ax.text(col + 0.5, row + 0.5, c, ha="center", va="center", fontsize=11)
ax.set_xlim(0, 16); ax.set_ylim(16, 0); ax.set_aspect("equal")
ax.set_xticks([i + 0.5 for i in range(16)], [f"{i:X}" for i in range(16)])
ax.set_yticks([i + 0.5 for i in range(16)], [f"{i:X}_" for i in range(16)])
ax.set_title("byte 0xRC -> its character (orange: not itself, U+0100 + n)")
plt.show()
"""),
    code(r"""
spelled = T.to_alphabet(" café\n")
print(repr(spelled), "<-", list(" café\n".encode()))
assert bytes(T.CHAR_TO_BYTE[c] for c in spelled).decode() == " café\n"   # and back
"""),
    md(r"""
## Step 3: words

A regex (GPT-2's) cuts the text into words that BPE handles one at a time: a word is an optional
space plus letters, or plus digits, or plus other symbols; runs of whitespace are kept apart,
except that the space just before a word belongs to it. A merge never crosses a word boundary.
"""),
    code(r"""
print(T.GPT2_SPLIT_PATTERN)
print(T.pre_tokenize("def f(x):\n    return x's   1"))
"""),
    md(r"""
## Step 4: BPE, merge by merge

`merges.txt` lists 50,000 pairs, most frequent first. A word starts as single characters; at each
step the adjacent pair with the best (lowest) rank is merged everywhere in the word, until no
adjacent pair is in the list. Below, the same algorithm as `minicodegen.tokenizer.bpe`, printing
each step.
"""),
    code(r"""
def bpe_steps(word, ranks):
    parts = list(word)
    yield None, parts
    while len(parts) > 1:
        rank, a, b = min((ranks.get((a, b), float("inf")), a, b) for a, b in zip(parts, parts[1:]))
        if rank == float("inf"):
            return
        merged, i = [], 0
        while i < len(parts):                      # merge every occurrence, left to right
            if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                merged.append(a + b); i += 2
            else:
                merged.append(parts[i]); i += 1
        parts = merged
        yield (rank, a, b), parts


for word in [" return", " café", "hello_world"]:
    spelled = T.to_alphabet(word)
    print(f"word {word!r} spelled {spelled!r}")
    for step, parts in bpe_steps(spelled, tok.ranks):
        how = "start" if step is None else f"merge #{step[0]:<5} {step[1]!r} + {step[2]!r}"
        print(f"   {how:34s} {parts}")
    assert parts == T.bpe(spelled, tok.ranks)          # the library agrees
    print("   ids:", [tok.vocab[p] for p in parts])
"""),
    md(r"""
## Step 5 and the whitespace tokens

Python code is mostly indentation. Plain GPT-2 BPE spends one token per space of an indent;
CodeGen's `mono`/`multi` checkpoints add 38 tokens, ids 50257–50294: runs of 2 to 31 spaces and of
2 to 9 tabs. They are cut out of the text *before* the regex (longest run first), so an indent of 8
spaces is one token.
"""),
    code(r"""
added = {t: i for t, i in tok.added_tokens.items() if t != "<|endoftext|>"}
print(len(added), "whitespace tokens:", sorted(added.values())[:3], "...", sorted(added.values())[-3:])
print({repr(t): i for t, i in sorted(added.items(), key=lambda kv: kv[1]) if len(t) in (2, 4, 8) })

def plain_gpt2(text):   # steps 3-5 only: GPT-2's BPE with no added tokens (what the `nl` checkpoints use)
    return [tok.vocab[t] for word in T.pre_tokenize(text) for t in T.bpe(T.to_alphabet(word), tok.ranks)]

line = "def f():\n        return 1"
print("split with added tokens:   ", tok.split(line), tok.encode(line))
print("plain GPT-2 (no added ones):", T.pre_tokenize(line), plain_gpt2(line))
"""),
    code(r"""
src = inspect.getsource(textwrap)                       # a real Python file from the standard library
lines = src.splitlines(keepends=True)
with_added = [len(tok.encode(l)) for l in lines]
without = [len(plain_gpt2(l)) for l in lines]
print(f"textwrap.py: {sum(with_added)} tokens with the whitespace tokens, {sum(without)} without "
      f"({1 - sum(with_added) / sum(without):.0%} fewer)")

indent = [len(l) - len(l.lstrip(" ")) for l in lines]
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.scatter(indent, [b - a for a, b in zip(with_added, without)], s=8, alpha=0.4)
ax.set_xlabel("indentation of the line (spaces)"); ax.set_ylabel("tokens saved on the line")
ax.set_title("what the 38 whitespace tokens save, line by line (textwrap.py)")
plt.show()
"""),
    md(r"""
## Going back: ids → bytes → text

Decoding maps each id to its bytes and joins them. A token may end in the middle of a multi-byte
character (the emoji's four bytes are three tokens here), so a streaming decoder must hold
incomplete bytes back until the next token completes them; `decode_bytes` gives the raw bytes.
"""),
    code(r"""
emoji_ids = tok.encode("😀")
print(emoji_ids, [tok.decode_bytes([i]) for i in emoji_ids])
print(repr(tok.decode(emoji_ids[:1])), "<- one token alone is not valid UTF-8")
assert tok.decode(ids) == text
assert tok.decode(tok.encode(src)) == src                         # lossless on any text
print("round trip ok on", len(src), "characters")
"""),
]

# ============================================================================ 02 one block by hand

ONE_BLOCK = [
    md(r"""
# 2. One CodeGen block by hand

A CodeGen block, with `x` the residual stream `[T, E]` (T tokens, E = `n_embd` channels):

```
h = ln_1(x)
q, k, v = split(h · qkv_projᵀ)            # the mp_num = 4 layout
q, k = rotary(q), rotary(k)
x = x + out_proj(attention(q, k, v)) + fc_out(gelu_new(fc_in(h)))    # parallel residual
```

We compute layer 0 step by step with plain NumPy and check every step against the library's own
intermediates (`minicodegen.forward(..., trace={})`), which are in turn checked against
transformers in the tests.
"""),
    code(setup(n_embd=128, n_layer=2, n_head=4, rotary_dim=16)),
    code(r"""
prompt = "def add(a, b):\n    return a + b"
ids = tok.encode(prompt)
words = [tok.decode([i]) for i in ids]
print(len(ids), "tokens:", words)

trace = {}
logits = minicodegen.forward(model, [ids], trace=trace)       # the library, keeping every intermediate
print([k for k in trace if not k.startswith("h.") or k.startswith("h.0.")])

from minicodegen.model import dequantize                # float32 whatever the storage (fp32, fp16, bf16, int8)
W = {k: dequantize(model.weights[k], model.weights.get(k + ".scale")) for k in expected_shapes(cfg)}   # by checkpoint name
E, H, D, R = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.rotary_dim
T = len(ids)
p = "transformer.h.0."
checks = {}
def check(name, ours, theirs):
    checks[name] = float(np.abs(ours - theirs).max())
    print(f"{name:12s} max |ours - library| = {checks[name]:.2e}")
"""),
    md(r"""
## Embedding and layer norm

The residual stream starts as rows of the embedding matrix `wte` (there is no position embedding:
position only enters through rotary). `ln_1` normalizes each token's E channels to mean 0 and
variance 1, then scales and shifts them per channel.
"""),
    code(r"""
x = W["transformer.wte.weight"][ids]                          # [T, E]
check("wte", x, trace["wte"][0])

def layer_norm(x, g, b, eps=cfg.layer_norm_epsilon):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)        # biased variance
    return (x - mean) / np.sqrt(var + eps) * g + b

h = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"])  # [T, E]
check("ln_1", h, trace["h.0.ln_1"][0])
"""),
    md(r"""
## The fused qkv projection and the mp_num = 4 split

One matrix makes queries, keys and values at once: `qkv = h · qkv_projᵀ`, 3E channels. CodeGen was
trained with the model split over **4** TPU cores, and the checkpoint keeps that layout: the 3E
channels are 4 blocks, and each block holds `[q | v | k]` (v *before* k) for a quarter of the heads.
Reading it as a plain `[q | k | v]` is the classic porting bug.
"""),
    code(r"""
qkv = h @ W[p + "attn.qkv_proj.weight"].T                     # [T, 3E]
mp = 4
colors = {"q": "#4393c3", "v": "#5aae61", "k": "#f4a582"}
fig, ax = plt.subplots(figsize=(11, 2.6))
for m in range(mp):
    for j, part in enumerate("qvk"):
        start = m * 3 * E // mp + j * E // mp
        ax.add_patch(plt.Rectangle((start, 0), E // mp, 1, color=colors[part], ec="white"))
        heads = range(m * H // mp, (m + 1) * H // mp)
        ax.text(start + E / mp / 2, 0.5, f"{part}\nhead{'s' if len(heads) > 1 else ''} {heads[0]}"
                + (f"–{heads[-1]}" if len(heads) > 1 else ""), ha="center", va="center", fontsize=8)
    ax.axvline(m * 3 * E // mp, color="black", lw=2)
ax.set_xlim(0, 3 * E); ax.set_ylim(0, 1); ax.set_yticks([])
ax.set_xticks([m * 3 * E // mp for m in range(mp + 1)])
ax.set_xlabel("channel of qkv (3E = %d)" % (3 * E))
ax.set_title("CodeGen's fused qkv: 4 blocks (one per TPU core in training), each [q | v | k] for H/4 heads")
plt.show()
"""),
    code(r"""
# the split, written as the picture reads: head hd lives in block m at slot j
q = np.zeros((T, H, D), np.float32); k = np.zeros_like(q); v = np.zeros_like(q)
for hd in range(H):
    m, j = divmod(hd, H // mp)
    base = m * 3 * E // mp + j * D
    q[:, hd] = qkv[:, base : base + D]
    v[:, hd] = qkv[:, base + E // mp : base + E // mp + D]
    k[:, hd] = qkv[:, base + 2 * E // mp : base + 2 * E // mp + D]
check("q_split", q, trace["h.0.q_split"][0])
check("k_split", k, trace["h.0.k_split"][0])
check("v", v, trace["h.0.v"][0])

# the same as one reshape: [T, mp, (q, v, k), H/mp, D]
blocks = qkv.reshape(T, mp, 3, H // mp, D)
assert np.array_equal(blocks[:, :, 0].reshape(T, H, D), q) and np.array_equal(blocks[:, :, 2].reshape(T, H, D), k)
"""),
    md(r"""
## Rotary position embedding: rotating pairs

Position enters only here. The first `rotary_dim` channels of each query and key head are taken
in pairs `(2i, 2i+1)`, each pair seen as a point in the plane, and the point at position `p` is
turned by the angle `θ(p, i) = p · 10000^(−2i/rotary_dim)`: pair 0 turns fast (1 radian per token),
the last pairs slowly. Channels past `rotary_dim` pass unchanged.
"""),
    code(r"""
inv_freq = 1.0 / 10000 ** (np.arange(0, R, 2) / R)            # [R/2]
theta = np.arange(T)[:, None] * inv_freq[None, :]            # [T, R/2]
check("sincos", np.concatenate([np.sin(theta), np.cos(theta)], 1).astype(np.float32), model.sincos[:T])

def rotary(x):                                               # [T, H, D]
    out = x.copy()
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]   # [T, 1, R/2]
    x0, x1 = x[..., 0:R:2], x[..., 1:R:2]                    # the pairs (2i, 2i+1)
    out[..., 0:R:2] = x0 * cos - x1 * sin
    out[..., 1:R:2] = x1 * cos + x0 * sin
    return out

q_rot, k_rot = rotary(q), rotary(k)
check("q (rotary)", q_rot, trace["h.0.q"][0])
check("k (rotary)", k_rot, trace["h.0.k"][0])
"""),
    code(r"""
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
vec = np.array([1.0, 0.3])
for ax, i in zip(axes[:2], [0, 1]):
    for pos in range(8):
        a = pos * inv_freq[i]
        c, s = np.cos(a), np.sin(a)
        w = np.array([vec[0] * c - vec[1] * s, vec[1] * c + vec[0] * s])
        ax.annotate("", xy=w, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=plt.cm.viridis(pos / 7)))
        ax.text(*(w * 1.12), str(pos), fontsize=8, ha="center")
    ax.set_xlim(-1.3, 1.3); ax.set_ylim(-1.3, 1.3); ax.set_aspect("equal")
    ax.set_title(f"pair {i} (channels {2*i},{2*i+1}): {inv_freq[i]:.3g} rad/token")

# q·k after rotary depends on the offset between positions, not on where they are
rng = np.random.default_rng(0)
qv, kv = rng.standard_normal(R), rng.standard_normal(R)
def rot_at(x, pos):
    a = pos * inv_freq
    out = x.copy(); out[0::2] = x[0::2] * np.cos(a) - x[1::2] * np.sin(a); out[1::2] = x[1::2] * np.cos(a) + x[0::2] * np.sin(a)
    return out
offsets = np.arange(0, 40)
for start, style in [(0, "-"), (100, "--"), (1000, ":")]:
    axes[2].plot(offsets, [rot_at(qv, start + o) @ rot_at(kv, start) for o in offsets], style, lw=2, label=f"key at {start}")
axes[2].set_xlabel("query position − key position"); axes[2].set_ylabel("q·k")
axes[2].set_title("q·k depends only on the offset (3 curves, 1 line)"); axes[2].legend()
plt.tight_layout(); plt.show()
"""),
    md(r"""
## Attention

Each head scores every earlier token: `q·k / √D`; a token may not look ahead (the causal mask), and
a softmax over the allowed keys gives the attention probabilities. The output is the
probability-weighted sum of the values, heads concatenated, then `out_proj` (no bias).
"""),
    code(r"""
qh, kh, vh = (a.transpose(1, 0, 2) for a in (q_rot, k_rot, v))     # [H, T, D]
scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(D)                  # [H, T, T]
causal = np.tril(np.ones((T, T), bool))
scores = np.where(causal, scores, -np.inf)
probs = np.exp(scores - scores.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
check("attn_probs", probs, trace["h.0.attn_probs"][0])

context = (probs @ vh).transpose(1, 0, 2).reshape(T, E)           # [T, H·D]: heads side by side
attn_out = context @ W[p + "attn.out_proj.weight"].T
check("attn_out", attn_out, trace["h.0.attn_out"][0])

fig, axes = plt.subplots(1, H, figsize=(4 * H, 4.2))
for hd, ax in enumerate(np.atleast_1d(axes)):
    ax.imshow(probs[hd], cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(T), words, rotation=90, fontsize=7); ax.set_yticks(range(T), words, fontsize=7)
    ax.set_title(f"layer 0, head {hd}")
fig.suptitle("attention probabilities: row = query token, column = key token (upper triangle masked)")
plt.tight_layout(); plt.show()
"""),
    md(r"""
## The MLP

`fc_in` widens each token to `n_inner` = 4E channels, `gelu_new` (GELU's tanh approximation, as in
GPT-2) bends them, `fc_out` brings them back to E. The MLP reads the **same** `ln_1` output as the
attention: CodeGen's residual is parallel, and there is no `ln_2`.
"""),
    code(r"""
from math import erf

def gelu_new(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))

hidden = gelu_new(h @ W[p + "mlp.fc_in.weight"].T + W[p + "mlp.fc_in.bias"])      # [T, 4E]
check("mlp_hidden", hidden, trace["h.0.mlp_hidden"][0])
mlp_out = hidden @ W[p + "mlp.fc_out.weight"].T + W[p + "mlp.fc_out.bias"]       # [T, E]
check("mlp_out", mlp_out, trace["h.0.mlp_out"][0])

z = np.linspace(-4, 3, 400)
exact = np.array([0.5 * t * (1 + erf(t / np.sqrt(2))) for t in z])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(z, gelu_new(z), label="gelu_new (tanh)"); axes[0].plot(z, np.maximum(z, 0), "--", label="relu")
axes[0].legend(); axes[0].set_title("the activation")
axes[1].plot(z, gelu_new(z) - exact); axes[1].set_title("gelu_new − exact (erf) GELU: small, but not zero")
plt.show()
"""),
    md(r"""
## The block's output

The residual stream after the block is `x + attn_out + mlp_out`. Together with `ln_f` and
`lm_head` after the last block, that is the whole model.
"""),
    code(r"""
out = x + attn_out + mlp_out
check("residual", out, trace["h.0.residual"][0])
worst = max(checks.values())
print(f"\nevery step of layer 0 matches the library within {worst:.1e}")
assert worst < 1e-4
"""),
]

# ============================================================================ 03 generation

GENERATION = [
    md(r"""
# 3. Generation: the KV cache, temperature, top-k and top-p

A language model gives, for each position, logits over the vocabulary for the **next** token.
Generating is a loop: pick a token from the last position's logits, append it, run again. This
notebook measures why the KV cache makes that loop fast, and draws what temperature, top-k and
top-p do to the distribution a token is drawn from.
"""),
    code(setup(n_embd=256, n_layer=6, n_head=8, rotary_dim=16)),
    code(r"""
import time
import importlib
G = importlib.import_module("minicodegen.generation")       # the module (minicodegen.generate is the function)

prompt = "import numpy as np\n\ndef mean(xs):\n    "
ids = tok.encode(prompt)
logits = minicodegen.forward(model, [ids])[0, -1]              # [V]: scores for the token after the prompt
best = np.argsort(logits)[::-1][:5]
print(len(ids), "prompt tokens; the most likely next tokens:", [(tok.decode([i]), round(float(logits[i]), 2)) for i in best])
"""),
    md(r"""
## Greedy decoding without and with a KV cache

Without a cache, each step runs the whole sequence again: step n costs n tokens of work. But the
keys and values of earlier tokens never change (a token only looks back), so they can be kept:
with a **KV cache** each step runs one token through the model, attending to the stored keys and
values. Both loops below produce the same tokens; the plot shows the time per step.
"""),
    code(r"""
N = 32

def greedy_no_cache(ids, n):
    seq, times = list(ids), []
    for _ in range(n):
        t0 = time.perf_counter()
        nxt = int(np.argmax(minicodegen.forward(model, [seq], last_only=True)[0, -1]))   # the whole sequence, every step
        times.append(time.perf_counter() - t0)
        seq.append(nxt)
    return seq[len(ids):], times

def greedy_cached(ids, n):
    cache = minicodegen.new_cache(cfg, 1, len(ids) + n)
    logits = minicodegen.forward(model, [ids], cache=cache, last_only=True)          # prefill: the prompt once
    out, times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        nxt = int(np.argmax(logits[0, -1]))
        out.append(nxt)
        logits = minicodegen.forward(model, [[nxt]], cache=cache, last_only=True)    # one new token
        times.append(time.perf_counter() - t0)
    return out, times, cache

long_prompt = ids * 4                                          # a longer context makes the difference plain
a, t_plain = greedy_no_cache(long_prompt, N)
b, t_cache, cache = greedy_cached(long_prompt, N)
assert a == b, "the cache must not change the result"
gen = minicodegen.generate(model, long_prompt, max_new_tokens=N)       # the library's loop (stops at EOS)
assert gen == b[: len(gen)]
print(f"{len(long_prompt)}-token prompt, {N} new tokens: no cache {sum(t_plain):.2f} s, "
      f"KV cache {sum(t_cache):.2f} s ({sum(t_plain) / sum(t_cache):.1f}x faster)")
print(f"the cache holds, per layer, k and v of shape {cache.k[0].shape} = [batch, heads, capacity, head_dim]: "
      f"{2 * cfg.n_layer * cfg.n_embd * 4} bytes per token")

fig, ax = plt.subplots(figsize=(8, 3.5))
steps = np.arange(N) + len(long_prompt)
ax.plot(steps, np.array(t_plain) * 1e3, label="no cache: the whole sequence each step")
ax.plot(steps, np.array(t_cache) * 1e3, label="KV cache: one token each step")
ax.set_xlabel("sequence length"); ax.set_ylabel("ms per step"); ax.set_ylim(0); ax.legend()
ax.set_title("time per generated token")
plt.show()
"""),
    md(r"""
## Temperature

Sampling draws the next token from `softmax(logits / temperature)`. Below 1 the distribution
sharpens toward the greedy choice (temperature → 0 *is* greedy); above 1 it flattens.
"""),
    code(r"""
top = np.argsort(logits)[::-1][:15]
labels = [repr(tok.decode([i]))[1:-1] or "∅" for i in top]

def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()

fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), sharey=True)
for ax, temp in zip(axes, [0.5, 1.0, 2.0]):
    pr = softmax(logits / temp)
    assert np.allclose(pr, G.sample_probs(logits, temperature=temp))      # the library's distribution
    ax.bar(range(len(top)), pr[top])
    ax.set_xticks(range(len(top)), labels, rotation=90, fontsize=8)
    entropy = -(pr[pr > 0] * np.log(pr[pr > 0])).sum()
    ax.set_title(f"temperature {temp}: top token {pr.max():.1%}, entropy {entropy:.1f} nats")
axes[0].set_ylabel("probability")
plt.tight_layout(); plt.show()
"""),
    md(r"""
## Top-k and top-p

Both cut the long tail of unlikely tokens before drawing, then renormalize:

- **top-k** keeps the k most likely tokens;
- **top-p** (nucleus) keeps the most likely tokens until their probabilities add up to at least p:
  few tokens when the model is sure, many when it is not.
"""),
    code(r"""
pr = softmax(logits)
order = np.argsort(pr)[::-1]

k = 5
kept_k = order[:k]                                              # by definition
assert set(np.flatnonzero(np.isfinite(G.top_k_filter(logits, k)))) == set(kept_k)

top_p = 0.9
cum = np.cumsum(pr[order])
n_keep = int(np.searchsorted(cum, top_p) + 1)                   # smallest prefix with mass >= p
kept_p = order[:n_keep]
assert set(np.flatnonzero(np.isfinite(G.top_p_filter(logits, top_p)))) == set(kept_p)

fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
show = order[:30]
for ax, kept, title in [(axes[0], kept_k, f"top-k, k={k}"), (axes[1], kept_p, f"top-p, p={top_p}: {n_keep} tokens")]:
    filtered = np.zeros_like(pr); filtered[kept] = pr[kept]; filtered /= filtered.sum()
    ax.bar(range(len(show)), pr[show], color="lightgray", label="before")
    ax.bar(range(len(show)), filtered[show], alpha=0.8, label="after (renormalized)")
    ax.set_title(title); ax.set_xlabel("tokens, most likely first"); ax.legend()
    assert np.allclose(filtered, G.sample_probs(logits, 1.0, top_k=k) if "k=" in title else G.sample_probs(logits, 1.0, top_p=top_p))
for temp in [1.0, 0.5]:                                        # a surer distribution: a smaller nucleus
    c = np.cumsum(np.sort(softmax(logits / temp))[::-1])
    n = int(np.searchsorted(c, top_p) + 1)
    line, = axes[2].plot(np.arange(1, len(c) + 1), c, label=f"temperature {temp}: {n} tokens")
    axes[2].axvline(n, color=line.get_color(), ls=":")
axes[2].axhline(top_p, color="red", ls="--")
axes[2].set_xscale("log"); axes[2].set_xlabel("number of most likely tokens"); axes[2].set_ylabel("cumulative probability")
axes[2].set_title(f"the nucleus: tokens needed to reach p = {top_p}"); axes[2].legend()
plt.tight_layout(); plt.show()
"""),
    md(r"""
## Drawing tokens

A draw with a seeded generator is reproducible. Drawing many times from the top-k distribution,
the frequencies approach the probabilities; `minicodegen.generate` does the same at every step.
"""),
    code(r"""
probs_k = G.sample_probs(logits, temperature=1.0, top_k=k)
rng = np.random.default_rng(0)
draws = rng.choice(len(probs_k), size=4000, p=probs_k)
freq = np.bincount(draws, minlength=len(probs_k))[kept_k] / len(draws)
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(np.arange(k) - 0.2, probs_k[kept_k], 0.4, label="probability")
ax.bar(np.arange(k) + 0.2, freq, 0.4, label="frequency in 4000 draws")
ax.set_xticks(range(k), [repr(tok.decode([i])) for i in kept_k]); ax.legend(); plt.show()

kwargs = dict(max_new_tokens=24, temperature=0.8, top_p=0.95, seed=1)
first = minicodegen.generate(model, prompt, **kwargs)
again = minicodegen.generate(model, prompt, **kwargs)
other = minicodegen.generate(model, prompt, **dict(kwargs, seed=2))
assert first == again
print(repr(prompt + first))
print("seed 2:", repr(other))
"""),
]

# ============================================================================ 04 porting

PORTING = [
    md(r"""
# 4. Porting CodeGen: checking a port against a golden file

minicodegen is the reference other ports (C, Rust, WebGPU, ...) check themselves against. A
**golden file** holds every intermediate of one forward pass, then a few greedy steps; a port
computes the same arrays and compares them **in order**: the first array that disagrees is where
its bug is. The file format and the tolerance are specified in `docs/golden.md`.

Here we write a golden file, write a small independent port in NumPy (from the spec, not from
minicodegen's code), check it, and then plant the usual porting bugs to see where each one shows up.
"""),
    code(setup(n_embd=128, n_layer=2, n_head=4, rotary_dim=16)),
    code(r"""
import json, math, tempfile, zipfile
from pathlib import Path
from minicodegen.golden import write_golden, read_golden, compare, tolerance

workdir = Path(tempfile.mkdtemp())
path = workdir / "golden.npz"
# the same as: python -m minicodegen golden --model M --prompt "..." -o golden.npz --steps 4
write_golden(model, "def fib(n):\n    return", path, steps=4)

golden = dict(np.load(path, allow_pickle=False))
print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, {len(golden)} arrays")
for name, a in golden.items():
    if not name.startswith("h.") or name.startswith("h.0."):
        print(f"  {name:18s} {str(a.dtype):8s} {a.shape}")
print("  ... and the same for the other layers")
print("prompt:", repr(bytes(golden["prompt"]).decode()), golden["input_ids"])
"""),
    md(r"""
## Reading the file without NumPy

A port in another language does not need a NumPy library: the `.npz` is a zip whose members are
*stored* (not compressed), and each `.npy` member is a short text header followed by raw
little-endian data. A few lines are enough:
"""),
    code(r"""
def read_member(path, name):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name + ".npy")
        assert info.compress_type == zipfile.ZIP_STORED
        raw = z.read(info)
    assert raw[:6] == b"\x93NUMPY"
    major = raw[6]
    hlen = int.from_bytes(raw[8:10] if major == 1 else raw[8:12], "little")
    start = (10 if major == 1 else 12) + hlen
    header = eval(raw[start - hlen : start].decode("latin-1"))    # {'descr': '<f4', 'fortran_order': False, 'shape': (...)}
    return np.frombuffer(raw[start:], dtype=header["descr"]).reshape(header["shape"]), header

arr, header = read_member(path, "h.0.attn_probs")
print(header)
assert np.array_equal(arr, golden["h.0.attn_probs"])
config = json.loads(bytes(golden["config"]))
print({k: config[k] for k in ("n_embd", "n_layer", "n_head", "rotary_dim", "n_inner", "vocab_size")})
"""),
    md(r"""
## The tolerance, and the file's own error bars

Two correct float32 programs never agree exactly: the order of additions changes the rounding. A
port passes when every array is within `1e-5 + 1e-5 · max|golden| + 20 · deviation` of the golden
one, where `deviation` (stored in the file, one number per array) is how far float32 rounding
moved that array: the writer recomputes everything in float64 and keeps the largest difference.
For a well-conditioned model it is tiny; a deep model with sharp attention amplifies rounding,
and the bound widens with it, layer by layer (`docs/golden.md`, "Tolerance").
"""),
    code(r"""
deviation = json.loads(bytes(golden["deviation"]))
for name in ["wte", "h.0.qkv", "h.0.attn_probs", f"h.{config['n_layer'] - 1}.residual", "logits"]:
    g = golden[name]
    print(f"{name:18s} max|golden| {np.abs(g).max():8.3f}   deviation {deviation[name]:.1e}   tolerance {tolerance(g, deviation[name]):.1e}")
"""),
    md(r"""
## A small port

The port gets the config (from the file) and the weights by their checkpoint names (a real port reads
them from the checkpoint, e.g. the `.npz` that `python -m minicodegen convert` writes). It is written
from `docs/golden.md`, "The computation", and knows nothing of minicodegen. The `bugs` argument plants
the mistakes ports typically make.
"""),
    code(r"""
def port(config, W, ids, bugs=()):
    E, H, L, R = config["n_embd"], config["n_head"], config["n_layer"], config["rotary_dim"]
    D, eps, T = E // H, config["layer_norm_epsilon"], len(ids)
    out = {"input_ids": np.array(ids), "position_ids": np.arange(T)}

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        var = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(var + eps) * g + b

    inv = 1.0 / 10000 ** (np.arange(0, R, 2) / R)
    theta = np.arange(T)[:, None] * inv                                  # [T, R/2]
    out["sincos"] = np.concatenate([np.sin(theta), np.cos(theta)], 1)
    sin, cos = np.sin(theta)[:, None], np.cos(theta)[:, None]

    def rotary(a):                                                       # [T, H, D]
        a = a.copy()
        if "rotate halves" in bugs:                                     # GPT-NeoX's layout, not GPT-J's
            x0, x1 = a[..., : R // 2].copy(), a[..., R // 2 : R].copy()
            a[..., : R // 2], a[..., R // 2 : R] = x0 * cos - x1 * sin, x1 * cos + x0 * sin
        else:
            x0, x1 = a[..., 0:R:2].copy(), a[..., 1:R:2].copy()
            a[..., 0:R:2], a[..., 1:R:2] = x0 * cos - x1 * sin, x1 * cos + x0 * sin
        return a

    x = W["transformer.wte.weight"][ids].astype(np.float32)
    out["wte"] = x
    for i in range(L):
        p, o = f"transformer.h.{i}.", f"h.{i}."
        h = ln(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"])
        qkv = h @ W[p + "attn.qkv_proj.weight"].T
        blocks = qkv.reshape(T, 4, 3, H // 4, D)                         # 4 blocks of [q | v | k]
        q, v, k = (blocks[:, :, j].reshape(T, H, D) for j in range(3))
        if "q|k|v order" in bugs:
            q, k, v = (blocks[:, :, j].reshape(T, H, D) for j in range(3))
        qr, kr = rotary(q), rotary(k)
        s = np.einsum("thd,shd->hts", qr, kr) / np.sqrt(D)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        if "no 1/sqrt(D)" in bugs:
            s = s * np.sqrt(D)
        pr = np.exp(s - s.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
        ctx = np.einsum("hts,shd->thd", pr, v).reshape(T, E)
        attn = ctx @ W[p + "attn.out_proj.weight"].T
        mlp_in = h
        if "sequential residual" in bugs:                               # GPT-2's order: the MLP after attention
            mlp_in = ln(x + attn, W[p + "ln_1.weight"], W[p + "ln_1.bias"])
        pre = mlp_in @ W[p + "mlp.fc_in.weight"].T + W[p + "mlp.fc_in.bias"]
        if "erf gelu" in bugs:                                          # exact GELU, not the tanh approximation
            hid = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / np.sqrt(2)))
        else:
            hid = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))
        mlp = hid @ W[p + "mlp.fc_out.weight"].T + W[p + "mlp.fc_out.bias"]
        x = x + attn + mlp
        out |= {o + "ln_1": h, o + "qkv": qkv, o + "q_split": q, o + "k_split": k, o + "v": v, o + "q": qr, o + "k": kr,
                o + "attn_probs": pr, o + "attn_context": ctx, o + "attn_out": attn, o + "mlp_hidden": hid,
                o + "mlp_out": mlp, o + "residual": x}
    f = ln(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"])
    head = W.get("lm_head.weight", W["transformer.wte.weight"])
    logits = f @ head.T + (0 if "no lm_head bias" in bugs else W["lm_head.bias"])
    out |= {"ln_f": f, "logits": logits}
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in out.items()}


from minicodegen.model import dequantize                # the weights as float32, by checkpoint name
W = {k: dequantize(model.weights[k], model.weights.get(k + ".scale")) for k in expected_shapes(cfg)}
ours = port(config, W, golden["input_ids"].tolist())
rows = compare(golden, ours)
for name, diff, tol, ok in rows:
    if not name.startswith("h.") or name.startswith("h.0.") or not ok:
        print(f"{name:18s} max diff {diff:9.2e}   tolerance {tol:9.2e}   {'ok' if ok else 'FAIL'}")
assert all(ok for *_, ok in rows)
print(f"all {len(rows)} arrays within tolerance (|diff| <= 1e-5 + 1e-5 · max|golden| + 20 · deviation)")
"""),
    md(r"""
## The greedy steps

`step_logits[n]` are the logits after the prompt and the file's first n `step_ids`. A port feeds
the **file's** ids (not its own argmax: on a near-tie a correct port may pick the other token), and
compares its logits. This port has no KV cache and simply reruns the whole sequence; a port with a
cache checks its cache here.
"""),
    code(r"""
ids = golden["input_ids"].tolist()
steps = golden["step_ids"].tolist()
step_logits = np.stack([port(config, W, ids + steps[:n])["logits"][-1] for n in range(len(steps))])
(name, diff, tol, ok), = compare({"step_logits": golden["step_logits"]}, {"step_logits": step_logits})
print(f"step_logits: max diff {diff:.2e} (tolerance {tol:.2e})", "ok" if ok else "FAIL")
print("greedy continuation:", repr(tok.decode(steps)), "| our argmax agrees:", step_logits.argmax(-1).tolist() == steps)
assert ok
"""),
    md(r"""
## Typical bugs and where they show up

Each bug below is a mistake real ports make. The first array outside the tolerance points at it,
and the tolerance is tight enough to catch even the subtle ones: erf GELU instead of the tanh
approximation differs by less than 0.1 %.
"""),
    code(r"""
expected = {
    "q|k|v order": "h.0.k_split",
    "rotate halves": "h.0.q",
    "no 1/sqrt(D)": "h.0.attn_probs",
    "erf gelu": "h.0.mlp_hidden",
    "sequential residual": "h.0.mlp_hidden",
    "no lm_head bias": "logits",
}
print(f"{'bug':22s} {'first failing array':20s} {'max diff':>9s} {'tolerance':>9s}")
for bug, where in expected.items():
    rows = compare(golden, port(config, W, golden["input_ids"].tolist(), bugs={bug}))
    first = next((r for r in rows if not r[3]))
    print(f"{bug:22s} {first[0]:20s} {first[1]:9.2e} {first[2]:9.2e}")
    assert first[0] == where, (bug, first)
"""),
    md(r"""
The table in `docs/golden.md` ("Where the first failure points") lists more. A port that passes
this file passes on any prompt of the same model only up to its own bugs on longer prompts, so make a
few golden files: a long prompt (positions far from 0), a prompt with deep indentation (the
whitespace tokens), and a real checkpoint (`--model Salesforce/codegen-350M-mono`).
"""),
]


NOTEBOOKS = {
    "01_tokenizer.ipynb": TOKENIZER,
    "02_one_block.ipynb": ONE_BLOCK,
    "03_generation.ipynb": GENERATION,
    "04_porting.ipynb": PORTING,
}


def build(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 300) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    p.add_argument("names", nargs="*", help="only these notebooks (default all)")
    a = p.parse_args(argv)
    for name, cells in NOTEBOOKS.items():
        if a.names and name not in a.names and name.split("_")[0] not in a.names:
            continue
        nb = build(cells)
        if a.execute:
            execute(nb)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name, "(executed)" if a.execute else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
