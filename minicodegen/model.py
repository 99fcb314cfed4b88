"""The CodeGen model: a config, a dict of weights named as in the hub checkpoints, and a forward pass.

CodeGen is GPT-J's architecture: token embedding (no position embedding: position enters only
through rotary), ``n_layer`` blocks with a *parallel* residual,

    x = x + attn(ln_1(x)) + mlp(ln_1(x))

then ``ln_f`` and an ``lm_head`` that has a bias. Weight names are those of the Hugging Face
checkpoints (``transformer.h.0.attn.qkv_proj.weight`` …), so a reader can put this file beside
``transformers/models/codegen/modeling_codegen.py``.

Weights are plain arrays. Norms and biases are float32. A matrix is stored [n_out, n_in] and may be
- float32;
- uint16, holding bfloat16 bit patterns (widened to float32 on use);
- int8, with a float32 ``<name>.scale`` [n_out] beside it: W ≈ W_int8 · scale (per output row);
- uint8, int4 codes packed two to a byte [n_out, n_in / 2], with a float16 ``<name>.scale``
  [n_out, n_in / group] beside it: W ≈ q · scale of its group (``ops.unpack_int4``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from . import kernels, ops

# Buffers some hub files carry; they hold nothing the model needs (the mask is rebuilt, the
# sinusoid table is computed).
# What int8 weights multiply: activations quantized per row to 8 bits, or float32 ones (Model.int8_activations).
INT8_ACTIVATIONS = ("int8", "float32")
# What bf16 weights multiply in a prompt: float32 activations, or ones rounded to bf16 (Model.bf16_activations).
BF16_ACTIVATIONS = ("float32", "bf16")

IGNORED_BUFFERS = ("attn.causal_mask", "attn.masked_bias", "attn.bias", "attn.embed_positions")


@dataclass(frozen=True)
class Config:
    """The fields of a Hugging Face CodeGen ``config.json`` that shape the computation."""

    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    rotary_dim: int
    n_positions: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = False
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def config_from_dict(d: dict[str, Any], source: str = "config") -> Config:
    """Reads a Hugging Face CodeGen config dict; ``source`` names the file in error messages.

    >>> config_from_dict({"vocab_size": 51200, "n_embd": 1024, "n_layer": 20, "n_head": 16,
    ...                   "rotary_dim": 32, "n_positions": 2048}).n_inner
    4096
    """
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head", "rotary_dim", "n_positions") if k not in d]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    if d.get("model_type", "codegen") != "codegen":
        raise ValueError(f"{source}: model_type is {d['model_type']!r}, expected 'codegen'")
    act = d.get("activation_function", "gelu_new")
    if act != "gelu_new":
        raise ValueError(f"{source}: activation_function {act!r} is not supported (only 'gelu_new')")
    eos = d.get("eos_token_id", 50256)
    cfg = Config(
        vocab_size=int(d["vocab_size"]),
        n_embd=int(d["n_embd"]),
        n_layer=int(d["n_layer"]),
        n_head=int(d["n_head"]),
        rotary_dim=int(d["rotary_dim"]) if d["rotary_dim"] is not None else int(d["n_embd"]) // int(d["n_head"]),
        n_positions=int(d["n_positions"]),
        n_inner=int(d["n_inner"]) if d.get("n_inner") is not None else 4 * int(d["n_embd"]),
        layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
        activation_function=act,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=int(d.get("bos_token_id") if d.get("bos_token_id") is not None else 50256),
        eos_token_id=int((eos[0] if isinstance(eos, list) else eos) if eos is not None else 50256),
    )
    if cfg.n_embd % cfg.n_head or cfg.n_head % 4:
        raise ValueError(f"{source}: n_head={cfg.n_head} must divide n_embd={cfg.n_embd} and be a multiple of 4 (mp_num)")
    if cfg.rotary_dim % 2 or cfg.rotary_dim > cfg.head_dim:
        raise ValueError(f"{source}: rotary_dim={cfg.rotary_dim} must be even and at most head_dim={cfg.head_dim}")
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as a Hugging Face ``config.json`` dict (model_type codegen)."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return {"model_type": "codegen", "architectures": ["CodeGenForCausalLM"], **d}


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every weight the model reads, with the shape the config implies (checkpoint names)."""
    E, V, F = cfg.n_embd, cfg.vocab_size, cfg.n_inner
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, E)}
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        shapes |= {
            p + "ln_1.weight": (E,), p + "ln_1.bias": (E,),
            p + "attn.qkv_proj.weight": (3 * E, E),
            p + "attn.out_proj.weight": (E, E),
            p + "mlp.fc_in.weight": (F, E), p + "mlp.fc_in.bias": (F,),
            p + "mlp.fc_out.weight": (E, F), p + "mlp.fc_out.bias": (E,),
        }  # fmt: skip
    shapes |= {"transformer.ln_f.weight": (E,), "transformer.ln_f.bias": (E,), "lm_head.bias": (V,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, E)
    return shapes


def is_ignored_buffer(name: str) -> bool:
    """True for the buffers hub files carry that the model does not read."""
    return name.endswith(IGNORED_BUFFERS)


def check_weights(cfg: Config, weights: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Asserts that every expected weight is present with its shape; drops ignored buffers.

    int8 weights must come with a float32 ``<name>.scale`` of shape [n_out]; int4 weights (uint8,
    [n_out, n_in / 2]) with a finite float16 ``<name>.scale`` [n_out, n_groups] whose group size
    n_in / n_groups is a whole even number. Raises ValueError naming the tensor, the expected
    and the found shape.
    """
    expected = expected_shapes(cfg)
    out: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        if name not in weights:
            raise ValueError(f"{source}: missing weight {name!r} (expected shape {shape})")
        w = weights[name]
        if w.dtype == np.uint8 and len(shape) == 2:  # int4: two codes a byte
            if tuple(w.shape) != (shape[0], shape[1] // 2) or shape[1] % 2:
                raise ValueError(f"{source}: int4 weight {name!r} has shape {tuple(w.shape)}, expected "
                                 f"{(shape[0], shape[1] // 2)} (two 4-bit codes a byte of {shape})")
            out[name], out[name + ".scale"] = w, _int4_scale(weights.get(name + ".scale"), name, shape, source)
            continue
        if tuple(w.shape) != shape:
            raise ValueError(f"{source}: weight {name!r} has shape {tuple(w.shape)}, expected {shape}")
        if w.dtype not in (np.float32, np.float16, np.uint16, np.int8):
            raise ValueError(f"{source}: weight {name!r} has unsupported dtype {w.dtype}")
        out[name] = w
        if w.dtype == np.int8:
            s = weights.get(name + ".scale")
            if s is None or tuple(s.shape) != shape[:1]:
                got = None if s is None else tuple(s.shape)
                raise ValueError(f"{source}: int8 weight {name!r} needs {name + '.scale'!r} of shape {shape[:1]}, found {got}")
            out[name + ".scale"] = s
    tied_copy = {"lm_head.weight"} if cfg.tie_word_embeddings else set()  # a state dict may hold both names
    unknown = [n for n in weights if n not in out and n not in tied_copy and not is_ignored_buffer(n)]
    if unknown:
        raise ValueError(f"{source}: unexpected tensor(s) {', '.join(sorted(unknown)[:5])} for a CodeGen config of {cfg.n_layer} layers")
    return out


def _int4_scale(s: np.ndarray | None, name: str, shape: tuple[int, int], source: str) -> np.ndarray:
    """The scale of int4 weight ``name`` of ``shape``, checked: float16 [n_out, n_groups], the
    group size a whole even number, every scale finite."""
    key = name + ".scale"
    if s is None or s.dtype != np.float16 or s.ndim != 2 or s.shape[0] != shape[0] or s.shape[1] == 0:
        got = None if s is None else f"{s.dtype} {tuple(s.shape)}"
        raise ValueError(f"{source}: int4 weight {name!r} needs {key!r}, float16 of shape ({shape[0]}, n_groups), found {got}")
    group = shape[1] // s.shape[1]
    if group * s.shape[1] != shape[1] or group % 2:
        raise ValueError(f"{source}: {key!r} has {s.shape[1]} groups, which do not split n_in={shape[1]} "
                         "into groups of a whole even size")
    bad = ~np.isfinite(s)
    if bad.any():
        r, g = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{source}: {key!r} holds {int(bad.sum())} non-finite scale(s), the first {s[r, g]} at [{r}, {g}]")
    return s


# ----------------------------------------------------------------------------- weights in use


def dequantize(w: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:  # [n_out, n_in] any -> float32
    """The float32 matrix a stored weight stands for (bf16 bits widened, int8 times its scale,
    int4 codes times their group's scale)."""
    if w.dtype == np.uint16:
        return (w.astype(np.uint32) << 16).view(np.float32)
    if w.dtype == np.int8:
        return w.astype(np.float32) * scale[:, None]
    if w.dtype == np.uint8:
        return ops.dequantize_int4(w, scale)
    return np.asarray(w, dtype=np.float32)


def dense(x: np.ndarray, weights: dict[str, np.ndarray], name: str, fast: bool, bias: str | None = None,
          int8_activations: bool = True, bf16_activations: bool = False) -> np.ndarray:  # [N, n_in] -> [N, n_out]
    """The linear layer ``name`` (``name.weight``, optional ``name.bias`` or ``bias``) on rows x.

    The NumPy path (fast=False) is the definition: dequantize, then x·Wᵀ + b; for int8 weights
    with ``int8_activations`` (the default), x is quantized per row too and the 8-bit products are
    summed exactly (``ops.linear_int8_rows``); int4 weights always multiply rows quantized so
    (``ops.linear_int4_rows``); bf16 weights with ``bf16_activations`` multiply x rounded to bf16
    (``ops.linear_bf16_rows``).  The fast path (``kernels.linear``) streams the
    stored weight through a Numba kernel for a few rows (decode) and multiplies panels from cache
    for many (prefill); it is tested against the definition.
    """
    w = weights[name + ".weight"]
    b = weights.get(name + ".bias") if bias is None else weights[bias]
    scale = weights.get(name + ".weight.scale")
    if not fast:
        if w.dtype == np.uint8:
            return ops.linear_int4_rows(x, w, scale, b)
        if w.dtype == np.int8 and int8_activations:
            return ops.linear_int8_rows(x, w, scale, b)
        if w.dtype == np.uint16 and bf16_activations:
            return ops.linear_bf16_rows(x, w, b)
        return ops.linear(x, dequantize(w, scale), b)
    return kernels.linear(x, w, b, scale, int8_activations, bf16_activations)


def embed(weights: dict[str, np.ndarray], input_ids: np.ndarray) -> np.ndarray:  # [B, T] -> [B, T, E]
    """Rows of the token embedding ``wte`` (dequantized if stored as bf16 or int8)."""
    w = weights["transformer.wte.weight"]
    scale = weights.get("transformer.wte.weight.scale")
    return dequantize(w[input_ids.reshape(-1)], None if scale is None else scale[input_ids.reshape(-1)]).reshape(
        *input_ids.shape, -1
    )


# ----------------------------------------------------------------------------- KV cache


@dataclass
class Cache:
    """Keys and values of the tokens seen so far, per layer, with room for ``capacity`` tokens."""

    k: list[np.ndarray]  # n_layer × [B, H, capacity, D] float32
    v: list[np.ndarray]  # n_layer × [B, H, capacity, D]
    mask: np.ndarray  # [B, capacity] int8: 1 where a real token sits, 0 for padding
    length: int = 0  # tokens filled so far (the same for every row)

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]


def new_cache(cfg: Config, batch: int, capacity: int) -> Cache:
    """An empty cache for ``batch`` rows and up to ``capacity`` tokens (at most n_positions)."""
    capacity = min(capacity, cfg.n_positions)
    shape = (batch, cfg.n_head, capacity, cfg.head_dim)
    return Cache(
        k=[np.zeros(shape, np.float32) for _ in range(cfg.n_layer)],
        v=[np.zeros(shape, np.float32) for _ in range(cfg.n_layer)],
        mask=np.zeros((batch, capacity), np.int8),
    )


def _grow(cache: Cache, cfg: Config, needed: int) -> None:
    """Makes room for ``needed`` tokens in all, doubling the capacity (up to n_positions)."""
    if needed <= cache.capacity:
        return
    capacity = min(max(needed, 2 * cache.capacity), cfg.n_positions)
    pad = capacity - cache.capacity
    cache.k = [np.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))) for a in cache.k]
    cache.v = [np.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))) for a in cache.v]
    cache.mask = np.pad(cache.mask, ((0, 0), (0, pad)))


# ----------------------------------------------------------------------------- forward pass


def check_input_ids(cfg: Config, input_ids: Any, past: int = 0) -> np.ndarray:
    """input_ids as an int64 [B, T] array, or a ValueError saying what is wrong with it."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {ids.shape}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {ids.shape}): give at least one token")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= cfg.vocab_size)
    if bad.any():
        b, t = map(int, np.argwhere(bad)[0])
        raise ValueError(f"token id {int(ids[b, t])} at [{b}, {t}] is outside the vocabulary [0, {cfg.vocab_size})")
    if past + ids.shape[1] > cfg.n_positions:
        raise ValueError(f"sequence of {past + ids.shape[1]} tokens is longer than n_positions={cfg.n_positions}")
    return ids.astype(np.int64)


def positions_from_mask(mask: np.ndarray, seen: np.ndarray) -> np.ndarray:  # [B, T], [B] -> [B, T]
    """Position of each new token: real tokens before it (``seen`` plus this chunk's), minus one.

    As transformers does for generation (``cumsum(mask) - 1``, padding set to position 1), so a
    left-padded prompt gets the positions it would get alone.
    """
    pos = seen[:, None] + np.cumsum(mask, axis=1) - 1
    return np.where(mask != 0, pos, 1).astype(np.int64)


_BLOCK_WEIGHTS = [f"{m}.{k}" for m in ("ln_1", "attn.qkv_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out")
                  for k in ("weight", "bias", "weight.scale")]  # per-layer names, without "transformer.h.{i}."


def block(
    x: np.ndarray,  # [B, T, E] residual stream
    weights: dict[str, np.ndarray],
    i: int,  # layer index
    cfg: Config,
    sincos: np.ndarray,  # [B, T, rotary_dim] table rows of the tokens' positions
    cache: Cache,  # keys/values of earlier tokens; this call appends T
    fast: bool,
    trace: dict[str, np.ndarray] | None,
    int8_activations: bool = True,  # int8 weights: quantize the rows of x too (see dense)
    bf16_activations: bool = False,  # bf16 weights, T > 1: round the rows of x to bf16 (see dense)
) -> np.ndarray:  # [B, T, E]
    """One CodeGen block: x + attn(ln_1(x)) + mlp(ln_1(x))."""
    B, T, E = x.shape
    H = cfg.n_head
    p = f"transformer.h.{i}."
    S0, S = cache.length, cache.length + T
    op = kernels if fast else ops  # the same functions; the kernels are tested against ops
    if fast and T == 1 and trace is None:  # decoding: the whole block in one fused kernel call
        layer = {n: weights[p + n] for n in _BLOCK_WEIGHTS if p + n in weights}
        out = x.reshape(B, E).copy()
        kernels.decode_block(out, layer, cfg.layer_norm_epsilon, sincos[:, 0], cfg.rotary_dim, H,
                             cache.k[i], cache.v[i], S, cache.mask[:, :S] != 0, int8_activations=int8_activations)
        return out.reshape(B, T, E)

    h = op.layer_norm(x, weights[p + "ln_1.weight"], weights[p + "ln_1.bias"], cfg.layer_norm_epsilon)
    rows = h.reshape(B * T, E)

    # attention: fused qkv projection, mp_num=4 split, rotary on q and k, attend over the cache
    acts = {"int8_activations": int8_activations, "bf16_activations": bf16_activations}
    qkv = dense(rows, weights, p + "attn.qkv_proj", fast, **acts).reshape(B, T, 3 * E)
    if fast and trace is None:  # rope_into_cache: the split, rotary and cache writes below, the same bits
        q = kernels.rope_into_cache(qkv, sincos, cfg.rotary_dim, H, cache.k[i], cache.v[i], S0)
        a = kernels.attend_cached(q, cache.k[i], cache.v[i], S, cache.mask[:, :S] != 0)
    else:
        q, k, v = ops.split_qkv(qkv, H)  # 3 × [B, T, H, D]
        if trace is not None:
            trace |= {f"h.{i}.q_split": q, f"h.{i}.k_split": k, f"h.{i}.v": v}
        q = op.apply_rotary(q, sincos, cfg.rotary_dim)
        k = op.apply_rotary(k, sincos, cfg.rotary_dim)
        cache.k[i][:, :, S0:S] = k.transpose(0, 2, 1, 3)
        cache.v[i][:, :, S0:S] = v.transpose(0, 2, 1, 3)
        q = q.transpose(0, 2, 1, 3)  # [B, H, T, D]
        mask = ops.causal_mask(cache.mask[:, :S], T)  # [B, 1, T, S]
        a, probs = ops.attention(q, cache.k[i][:, :, :S], cache.v[i][:, :, :S], mask)
        if trace is not None:
            trace |= {f"h.{i}.q": q.transpose(0, 2, 1, 3), f"h.{i}.k": k, f"h.{i}.attn_probs": probs}
    a = a.transpose(0, 2, 1, 3).reshape(B * T, E)  # merge heads: [B, T, H·D] (attend_cached's memory: no copy)
    attn_out = dense(a, weights, p + "attn.out_proj", fast, **acts)

    # MLP on the same ln_1 output (parallel residual)
    hidden = dense(rows, weights, p + "mlp.fc_in", fast, **acts)
    hidden = kernels.gelu_new(hidden, out=hidden) if fast else ops.gelu_new(hidden)
    mlp_out = dense(hidden, weights, p + "mlp.fc_out", fast, **acts)

    if fast:  # the same sums in place: x + (attn_out + mlp_out), without two fresh [B, T, E] arrays
        out = np.add(np.add(attn_out, mlp_out, out=mlp_out), x.reshape(B * T, E), out=mlp_out).reshape(B, T, E)
    else:
        out = x + (attn_out + mlp_out).reshape(B, T, E)
    if trace is not None:
        trace |= {
            f"h.{i}.ln_1": h, f"h.{i}.attn_out": attn_out.reshape(B, T, E),
            f"h.{i}.mlp_hidden": hidden.reshape(B, T, -1), f"h.{i}.mlp_out": mlp_out.reshape(B, T, E),
            f"h.{i}.residual": out,
        }  # fmt: skip
    return out


def forward(
    model: "Model",
    input_ids: Any,  # int [B, T]
    attention_mask: Any = None,  # [B, T] 1 = token, 0 = padding (left padding), for the new tokens
    position_ids: Any = None,  # int [B, T]; default from the mask and the cache
    cache: Cache | None = None,  # appended to in place; None = a fresh one for this call
    last_only: bool = False,  # logits of the last position only ([B, 1, V]): what decoding needs
    trace: dict[str, np.ndarray] | None = None,  # filled with every intermediate (golden outputs)
) -> np.ndarray:  # float32 [B, T, V]
    """The logits of the next token after each position."""
    cfg = model.config
    if model.int8_activations not in INT8_ACTIVATIONS:
        raise ValueError(f"model.int8_activations must be one of {', '.join(INT8_ACTIVATIONS)}, got {model.int8_activations!r}")
    if model.bf16_activations not in BF16_ACTIVATIONS:
        raise ValueError(f"model.bf16_activations must be one of {', '.join(BF16_ACTIVATIONS)}, got {model.bf16_activations!r}")
    q8 = model.int8_activations == "int8"
    past = cache.length if cache is not None else 0
    ids = check_input_ids(cfg, input_ids, past)
    B, T = ids.shape
    b16 = model.bf16_activations == "bf16" and T > 1  # (a prompt; decode steps keep float32 x)
    packed = model.fast and T == 1 and trace is None and B >= PACK_MIN_ROWS  # (see fast_weights)
    weights = fast_weights(model, packed)
    mask = np.ones((B, T), np.int8) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != (B, T):
        raise ValueError(f"attention_mask has shape {mask.shape}, expected {(B, T)} like input_ids")
    if cache is None:
        cache = new_cache(cfg, B, T)
    elif cache.mask.shape[0] != B:
        raise ValueError(f"cache holds {cache.mask.shape[0]} rows, input_ids has {B}")
    _grow(cache, cfg, past + T)
    seen = cache.mask[:, :past].sum(axis=1, dtype=np.int64)
    if position_ids is None:
        pos = positions_from_mask(mask, seen)
    else:
        pos = np.asarray(position_ids, dtype=np.int64).reshape(B, T)
        if pos.min() < 0 or pos.max() >= cfg.n_positions:
            raise ValueError(f"position_ids must lie in [0, {cfg.n_positions}), got {pos.min()}..{pos.max()}")
    cache.mask[:, past : past + T] = mask != 0

    x = embed(weights, ids)  # [B, T, E]
    sincos = model.sincos[pos]  # [B, T, rotary_dim]
    if trace is not None:
        trace |= {"input_ids": ids, "position_ids": pos, "wte": x}
    if model.fast and T == 1 and trace is None:  # decoding: one fused kernel call per block
        x = kernels.decode_layers(x.reshape(B, cfg.n_embd).copy(), decode_plan(model, packed), cfg.layer_norm_epsilon,
                                  sincos[:, 0], cfg.rotary_dim, cfg.n_head, cache.k, cache.v, past + 1,
                                  cache.mask[:, : past + 1] != 0).reshape(B, 1, cfg.n_embd)
    else:
        for i in range(cfg.n_layer):
            x = block(x, weights, i, cfg, sincos, cache, model.fast, trace, q8, b16)
    cache.length = past + T

    if last_only:
        x = x[:, -1:]
    x = (kernels if model.fast else ops).layer_norm(x, weights["transformer.ln_f.weight"], weights["transformer.ln_f.bias"], cfg.layer_norm_epsilon)
    head = "lm_head" if "lm_head.weight" in weights else "transformer.wte"  # tied: lm_head.weight is wte
    rows = x.reshape(-1, cfg.n_embd)
    # A decode step of many rows: float heads take kernels.STREAM_MAX_T rows at a time, the kernel
    # one row alone gets, so that a row's logits do not depend on its batch (integer sums, int8
    # activations, packed int8 (int32 panels) or int4, are exact in every kernel). The 350M head
    # for 16 rows, medians of 7: fp32 35.4 ms in one call, 59.0 ms in chunks of 8; bf16 33.9 ms,
    # 13.6 ms; packed int8 (tools/step_profile.py, head row, two runs a minute apart) 5.3 ms in one
    # call, 7.6 ms in chunks.
    w = weights[head + ".weight"]
    exact = w.dtype in (np.uint8, np.int32) or (w.dtype == np.int8 and q8)
    chunk = kernels.STREAM_MAX_T if model.fast and T == 1 and not exact else len(rows)
    parts = [dense(rows[i:i + chunk], weights, head, model.fast, bias="lm_head.bias", int8_activations=q8, bf16_activations=b16)
             for i in range(0, len(rows), chunk)]  # fmt: skip
    logits = (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(B, -1, cfg.vocab_size)
    if trace is not None:
        trace |= {"ln_f": x, "logits": logits}
    if model.fast and B * T > kernels.STREAM_MAX_T:
        kernels.release_scratch()  # the prompt's packed tokens and panels: not needed while decoding
    return logits.astype(np.float32, copy=False)


def decode_plan(model: "Model", packed: bool = False) -> list[tuple]:
    """Each block's weights (``fast_weights(model, packed)``) as kernels.decode_weights checks and
    orders them, made once per model and kind (checking them at every step cost about 25 µs a
    block) and made again if the weights have gained or lost a name or had an array replaced."""
    w = fast_weights(model, packed)
    q8 = model.int8_activations == "int8"
    cached = model._decode_plans.get(packed)
    if cached is not None and cached[1] == q8 and _same_arrays(w, cached[0]):
        return cached[2]
    layers = [[f"transformer.h.{i}.{n}" for n in _BLOCK_WEIGHTS if f"transformer.h.{i}.{n}" in w]
              for i in range(model.config.n_layer)]
    plan = [kernels.decode_weights({n.split(".", 3)[3]: w[n] for n in layer}, model.config.n_embd, q8) for layer in layers]
    model._decode_plans[packed] = (list(w.values()), q8, plan)
    return plan


# A decode step of at least this many rows takes the int8 matrices packed into panels (see
# fast_weights): the 20 blocks' matrix products of a 350M step streamed from memory, interleaved
# runs, B = 8: 15.7 -> 13.9 ms, B = 16: 28.2 -> 21.1 ms; B = 4 and B = 1 gained nothing (10.5 ms).
PACK_MIN_ROWS = 8


def fast_weights(model: "Model", packed: bool = False) -> dict[str, np.ndarray]:
    """The weights the kernels take: ``model.weights``, or with ``packed`` (decode steps of at least
    ``PACK_MIN_ROWS`` rows), where this CPU multiplies int8 weights by int8 activations through
    packed panels (``kernels.packs``: AVX512-VNNI), the same weights with every int8 matrix of the
    blocks and the head packed (``kernels.pack_int8``) under its own name; a tied head gets its
    own entry, ``lm_head.weight``, beside the embedding table that stays as it is.  The packed
    weights are made at the first such step and made again when ``model.weights`` has gained,
    lost or replaced an array or ``int8_activations`` changed (a check of some 10 µs).  They cost
    a copy of the int8 matrices in memory beside the checkpoint's (which the NumPy path, float
    activations, prompts and single streams use): for the 350M model 306 MB, made in 0.2-0.5 s."""
    w = model.weights
    if not packed:
        return w
    q8 = model.int8_activations == "int8"
    cached = model._fast_weights
    if cached is not None and cached[1] == q8 and _same_arrays(w, cached[0]):
        return cached[2]
    head = "transformer.wte.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    names = [n for n, a in w.items() if (n.startswith("transformer.h.") or n == head) and a.ndim == 2
             and not n.endswith(".scale") and kernels.packs(a)] if q8 else []
    fast = dict(w)
    for n in names:
        fast["lm_head.weight" if n == head else n] = kernels.pack_int8(w[n])
        if n == head:
            fast["lm_head.weight.scale"] = w[n + ".scale"]
    model._fast_weights = (list(w.values()), q8, fast)
    return fast


def _same_arrays(w: dict[str, np.ndarray], sources: list[np.ndarray]) -> bool:
    """Whether ``w`` holds exactly the arrays ``sources`` (the same objects, in order)."""
    return len(w) == len(sources) and all(map(operator.is_, w.values(), sources))


# ----------------------------------------------------------------------------- the model


@dataclass
class Model:
    """A loaded CodeGen model: config, weights (checkpoint names), tokenizer if the files had one."""

    config: Config
    weights: dict[str, np.ndarray]
    tokenizer: Any = None  # minicodegen.Tokenizer, or None when the checkpoint carries none
    fast: bool = True  # Numba kernels for decode; False = the NumPy definition only
    source: str = ""
    # int8 weights multiply activations quantized per row to 8 bits ("int8": integer dot
    # products, the default) or float32 ones ("float32"); see README, "int8 activations".
    int8_activations: str = "int8"
    # bf16 weights multiply a prompt's activations as float32 (the default) or rounded to bf16
    # ("bf16": bf16 dot products, AMX tiles where the CPU has them); decode steps keep float32.
    bf16_activations: str = "float32"
    sincos: np.ndarray = field(init=False, repr=False)  # [n_positions, rotary_dim]
    _decode_plans: dict = field(init=False, default_factory=dict, repr=False, compare=False)  # see decode_plan
    _fast_weights: Any = field(init=False, default=None, repr=False, compare=False)  # see fast_weights

    def __post_init__(self) -> None:
        self.weights = check_weights(self.config, self.weights, self.source or "weights")
        for name, w in self.weights.items():  # what the forward pass computes with
            allowed = (np.float32, np.uint16, np.int8, np.uint8) if w.ndim == 2 else (np.float32,)
            if name.endswith(".scale") and w.ndim == 2:  # (int4 scales, checked by check_weights)
                continue
            if w.dtype not in allowed:
                raise ValueError(f"{self.source or 'weights'}: weight {name!r} has dtype {w.dtype}; the model takes "
                                 f"{'/'.join(np.dtype(t).name for t in allowed)} (load() widens float16 and 1-D bf16)")
        if self.int8_activations not in INT8_ACTIVATIONS:
            raise ValueError(f"int8_activations must be one of {', '.join(INT8_ACTIVATIONS)}, got {self.int8_activations!r}")
        if self.bf16_activations not in BF16_ACTIVATIONS:
            raise ValueError(f"bf16_activations must be one of {', '.join(BF16_ACTIVATIONS)}, got {self.bf16_activations!r}")
        self.sincos = ops.sinusoid_table(self.config.n_positions, self.config.rotary_dim)

    def logits(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None) -> np.ndarray:
        """int [B, T] (or [T]) -> float32 [B, T, vocab]. A mask (1 token, 0 left padding) sets positions."""
        return forward(self, input_ids, attention_mask, position_ids)
