"""Golden files (minicodegen/golden.py, docs/golden.md) checked two independent ways.

1. ``naive_golden``: a deliberately naive CodeGen written from docs/golden.md alone: Python loops
   over tokens, heads and keys, every sum accumulated one term at a time in float32 (what a plain
   C loop does), no KV cache (each greedy step recomputes the whole sequence). It reads the
   checkpoint's config.json and model.safetensors itself and imports nothing from minicodegen.
2. ``hf_golden``: the same arrays taken out of transformers' CodeGenForCausalLM: forward hooks
   on its modules, ``output_attentions`` for the attention probabilities, and transformers'
   public rotary functions on the hooked qkv projection (no private attribute of transformers).

Both must agree with the golden file within the tolerance docs/golden.md gives a port.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS

from minicodegen.__main__ import main
from minicodegen.golden import (
    ATOL, K, RTOL, compare, deviations, golden_arrays, golden_names, read_golden, tolerance, write_golden,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "golden.md"
VOCAB = 1000
SMALL = {name: dict(kw, vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1) for name, kw in CONFIGS.items()}
# Real vocabulary, so that a text prompt goes through CodeGen's tokenizer; otherwise tiny.
TEXT = dict(vocab_size=51200, n_embd=64, n_head=4, rotary_dim=8, n_layer=2, n_positions=64)
PROMPT = "def fib(n):\n    if n < 2:\n        return n"
F32 = np.float32


def load_minicodegen(path):
    import minicodegen

    return minicodegen.load(path, fast=False)


@pytest.fixture(scope="module")
def text_golden(checkpoint_factory, tmp_path_factory):
    """(transformers model, checkpoint dir, golden arrays) of PROMPT with 4 greedy steps."""
    hf, path = checkpoint_factory("golden-text", **TEXT)
    out = tmp_path_factory.mktemp("golden") / "text.npz"
    write_golden(load_minicodegen(path), PROMPT, out, steps=4)
    return hf, path, read_golden(out)


@pytest.fixture(scope="module", params=list(SMALL))
def ids_golden(request, checkpoint_factory, tmp_path_factory):
    """(transformers model, checkpoint dir, golden arrays) of 11 random ids with 3 greedy steps."""
    hf, path = checkpoint_factory(request.param, **SMALL[request.param])
    ids = np.random.default_rng(7).integers(0, VOCAB, 11).tolist()
    out = tmp_path_factory.mktemp("golden") / f"{request.param}.npz"
    write_golden(load_minicodegen(path), ids, out, steps=3)
    return hf, path, read_golden(out)


def assert_within_tolerance(golden: dict, ours: dict, names=None) -> None:
    rows = compare(golden, {n: ours[n] for n in (names or ours)})
    bad = [f"{n}: max diff {d:.3g} > {t:.3g}" for n, d, t, ok in rows if not ok]
    assert not bad, "\n".join(bad)
    assert len(rows) == len([n for n in (names or ours) if n in golden])


# ----------------------------------------------------------------------------- 1. naive port


def dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    """Σ a_i·b_i accumulated left to right in float32, like `for (i...) acc += a[i] * b[i]`."""
    acc = F32(0.0)
    for term in (a.astype(F32) * b.astype(F32)).tolist():
        acc = F32(acc + F32(term))
    return acc


def matvec(w: np.ndarray, x: np.ndarray) -> np.ndarray:  # [n_out, n_in], [n_in] -> [n_out]
    """W·x, each row accumulated left to right in float32 (the rows are independent: a cumulative
    sum along each row is exactly that loop, run for all rows at once)."""
    return np.cumsum(w.astype(F32) * x.astype(F32)[None, :], axis=1, dtype=F32)[:, -1]


def naive_layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:  # [E] -> [E]
    n = F32(len(x))
    mean = F32(dot(x, np.ones_like(x)) / n)
    c = (x - mean).astype(F32)
    var = F32(dot(c, c) / n)
    return (c / F32(math.sqrt(var + eps)) * g + b).astype(F32)


def naive_gelu(x: float) -> F32:
    x = F32(x)
    return F32(F32(0.5) * x * (F32(1.0) + F32(math.tanh(F32(math.sqrt(2.0 / math.pi)) * (x + F32(0.044715) * x * x * x)))))


def naive_sincos(n_positions: int, R: int, theta_in_float32: bool = True) -> np.ndarray:  # -> [n_positions, R]
    """sincos[p] = [sin θ(p,0) .. sin θ(p,R/2-1) | cos ..], θ(p,i) = p · inv_freq_i, all in float32
    as docs/golden.md says (theta_in_float32=False: θ in float64, the tempting way, for contrast)."""
    table = np.zeros((n_positions, R), F32)
    for i in range(R // 2):
        inv = F32(1.0) / F32(10000.0 ** float(F32(2 * i) / F32(R)))
        for p in range(n_positions):
            theta = float(F32(F32(p) * inv)) if theta_in_float32 else p * (1.0 / 10000.0 ** (2 * i / R))
            table[p, i], table[p, R // 2 + i] = math.sin(theta), math.cos(theta)
    return table


def naive_forward(cfg: dict, w: dict, ids: list[int], record: bool = True) -> dict:
    """The docs/golden.md model on one sequence. Returns the golden arrays it defines."""
    E, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    D, R = E // H, cfg["rotary_dim"]
    F = cfg.get("n_inner") or 4 * E
    eps = cfg["layer_norm_epsilon"]
    T = len(ids)
    out: dict = {"input_ids": np.array(ids), "position_ids": np.arange(T)}

    out["sincos"] = sincos = naive_sincos(T, R)

    x = np.stack([w["transformer.wte.weight"][t] for t in ids]).astype(F32)  # [T, E]
    out["wte"] = x.copy()
    for layer in range(L):
        p = f"transformer.h.{layer}."
        h = np.stack([naive_layer_norm(x[t], w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps) for t in range(T)])
        qkv = np.stack([matvec(w[p + "attn.qkv_proj.weight"], h[t]) for t in range(T)])  # [T, 3E]

        # the mp_num=4 split: 4 blocks of 3E/4 = [q | v | k] for H/4 heads each
        q, k, v = (np.zeros((T, H, D), F32) for _ in range(3))
        for t in range(T):
            for head in range(H):
                block, j = divmod(head, H // 4)
                base = block * (3 * E // 4) + j * D
                q[t, head] = qkv[t, base : base + D]
                v[t, head] = qkv[t, base + E // 4 : base + E // 4 + D]
                k[t, head] = qkv[t, base + E // 2 : base + E // 2 + D]
        q_split, k_split = q.copy(), k.copy()

        # rotary: pair (2i, 2i+1) of the first R channels turned by angle θ[t, i]
        for t in range(T):
            for head in range(H):
                for i in range(R // 2):
                    sin, cos = sincos[t, i], sincos[t, R // 2 + i]
                    for a in (q, k):
                        x0, x1 = a[t, head, 2 * i], a[t, head, 2 * i + 1]
                        a[t, head, 2 * i], a[t, head, 2 * i + 1] = x0 * cos - x1 * sin, x1 * cos + x0 * sin

        probs = np.zeros((H, T, T), F32)
        context = np.zeros((T, E), F32)
        for head in range(H):
            for t in range(T):
                scores = [F32(dot(q[t, head], k[s, head]) / F32(math.sqrt(D))) for s in range(t + 1)]
                m = max(scores)
                e = [F32(math.exp(sc - m)) for sc in scores]
                total = dot(np.array(e, F32), np.ones(len(e), F32))
                for s in range(t + 1):
                    probs[head, t, s] = e[s] / total
                for d in range(D):
                    context[t, head * D + d] = dot(probs[head, t, : t + 1], v[: t + 1, head, d])
        attn_out = np.stack([matvec(w[p + "attn.out_proj.weight"], context[t]) for t in range(T)])

        hidden = np.zeros((T, F), F32)
        for t in range(T):
            pre = matvec(w[p + "mlp.fc_in.weight"], h[t]) + w[p + "mlp.fc_in.bias"]
            hidden[t] = [naive_gelu(z) for z in pre]
        mlp_out = np.stack([matvec(w[p + "mlp.fc_out.weight"], hidden[t]) + w[p + "mlp.fc_out.bias"] for t in range(T)])

        x = (x + attn_out + mlp_out).astype(F32)  # parallel residual
        if record:
            out |= {f"h.{layer}.{n}": a for n, a in dict(
                ln_1=h, qkv=qkv, q_split=q_split, k_split=k_split, v=v, q=q, k=k, attn_probs=probs,
                attn_context=context, attn_out=attn_out, mlp_hidden=hidden, mlp_out=mlp_out, residual=x,
            ).items()}  # fmt: skip

    rows = range(T) if record else [T - 1]  # a greedy step needs only the last position's logits
    ln_f = np.stack([naive_layer_norm(x[t], w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps) for t in rows])
    head_w = w.get("lm_head.weight", w["transformer.wte.weight"])  # tied: lm_head is wte
    out |= {"ln_f": ln_f, "logits": np.stack([matvec(head_w, r) + w["lm_head.bias"] for r in ln_f])}
    return out


def naive_golden(path: Path, golden: dict) -> dict:
    """Everything a golden file holds, recomputed by the naive port from the checkpoint files.

    Greedy steps are recomputed from scratch (no cache) over the prompt plus the golden file's
    step ids before each step: a port compares its step logits given the same history, so that
    a near-tie in an argmax cannot derail the rest of the comparison.
    """
    from safetensors.numpy import load_file

    cfg = json.loads((Path(path) / "config.json").read_text())
    w = {k: v.astype(F32) for k, v in load_file(str(Path(path) / "model.safetensors")).items()}
    ids = golden["input_ids"].tolist()
    ours = naive_forward(cfg, w, ids)
    step_ids = golden["step_ids"].tolist()
    logits = [naive_forward(cfg, w, ids + step_ids[:n], record=False)["logits"][-1] for n in range(len(step_ids))]
    ours["step_logits"] = np.array(logits, F32).reshape(len(step_ids), cfg["vocab_size"])
    ours["step_ids"] = np.array([int(np.argmax(lg)) for lg in logits], np.int64)
    return ours


def test_naive_port_reproduces_text_golden(text_golden):
    _, path, golden = text_golden
    ours = naive_golden(path, golden)
    assert_within_tolerance(golden, ours)
    assert set(ours) == set(golden) - {"format_version", "config", "prompt", "deviation"}


@pytest.mark.parametrize("name", ["narrow", "2B-like"])  # head_dim 16, 4 layers; head_dim 80, rotary 64
def test_naive_port_reproduces_ids_golden(name, checkpoint_factory, tmp_path):
    _, path = checkpoint_factory(name, **SMALL[name])
    ids = np.random.default_rng(8).integers(0, VOCAB, 9).tolist()
    golden = write_golden(load_minicodegen(path), ids, tmp_path / "g.npz", steps=2)
    assert_within_tolerance(golden, naive_golden(path, golden))


# ----------------------------------------------------------------------------- 2. transformers


def hf_golden(path, ids: list[int], step_ids: list[int]) -> dict:
    """The golden arrays out of transformers' CodeGenForCausalLM (fp32, eval mode) for the
    checkpoint at `path`, loaded with eager attention: the only implementation that returns
    attention probabilities in every transformers release (sdpa returns none since 5.24).

    Only public behaviour: forward hooks on the modules, ``output_attentions``, the logits, and
    the module-level functions ``create_sinusoidal_positions`` and ``apply_rotary_pos_emb`` of
    ``modeling_codegen``. The q / k / v arrays, which no module outputs, are replayed from the
    hooked qkv projection; the replay must give back the attention probabilities transformers
    returned, so it cannot drift from what the model computes."""
    import torch
    from transformers import CodeGenForCausalLM
    from transformers.models.codegen.modeling_codegen import apply_rotary_pos_emb, create_sinusoidal_positions

    hf = CodeGenForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    cfg = hf.config
    E, H = cfg.n_embd, cfg.n_head
    D = E // H
    got: dict = {}
    hooks = []

    def keep(name, what="output"):
        def hook(module, args, output):
            t = args[0] if what == "input" else (output[0] if isinstance(output, tuple) else output)
            got[name] = t[0].detach().float().numpy().copy()

        return hook

    tr = hf.transformer
    hooks.append(tr.wte.register_forward_hook(keep("wte")))
    hooks.append(tr.ln_f.register_forward_hook(keep("ln_f")))
    for i, blk in enumerate(tr.h):
        p = f"h.{i}."
        for module, name, what in [
            (blk.ln_1, "ln_1", "output"), (blk.attn.qkv_proj, "qkv", "output"),
            (blk.attn.out_proj, "attn_context", "input"), (blk.attn.out_proj, "attn_out", "output"),
            (blk.mlp.act, "mlp_hidden", "output"), (blk.mlp.fc_out, "mlp_out", "output"), (blk, "residual", "output"),
        ]:  # fmt: skip
            hooks.append(module.register_forward_hook(keep(p + name, what)))
    try:
        with torch.no_grad():
            res = hf(torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    assert len(res.attentions) == cfg.n_layer
    with torch.no_grad():  # greedy steps given the golden ids: the logits at the last N positions
        full = hf(torch.tensor([ids + step_ids[:-1]]), use_cache=False).logits[0] if step_ids else None

    T, R = len(ids), cfg.rotary_dim
    sincos = create_sinusoidal_positions(cfg.n_positions, R)[torch.arange(T)][None]  # [1, T, R]: transformers' table
    got |= {"input_ids": np.array(ids), "position_ids": np.arange(T), "sincos": sincos[0].numpy()}
    got["logits"] = res.logits[0].numpy()
    got["step_logits"] = full[T - 1 :].numpy().reshape(len(step_ids), -1) if step_ids else np.zeros((0, cfg.vocab_size), F32)
    got["step_ids"] = got["step_logits"].argmax(-1)
    sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(len(tr.h)):
        p = f"h.{i}."
        got[p + "attn_probs"] = res.attentions[i][0].numpy()
        # CodeGen's qkv layout (mp_num = 4 blocks of [q | v | k]), on the hooked qkv projection
        qkv = torch.from_numpy(got[p + "qkv"])[None]  # [1, T, 3E]
        query, value, key = torch.split(qkv.reshape(1, T, 4, 3 * E // 4), E // 4, dim=-1)
        query, key, value = (t.reshape(1, T, H, D) for t in (query, key, value))
        q_rot = torch.cat([apply_rotary_pos_emb(query[..., :R], sin, cos), query[..., R:]], dim=-1)
        k_rot = torch.cat([apply_rotary_pos_emb(key[..., :R], sin, cos), key[..., R:]], dim=-1)
        got |= {p + n: t[0].numpy() for n, t in dict(q_split=query, k_split=key, v=value, q=q_rot, k=k_rot).items()}
        # the replay is faithful: softmax(q k^T / sqrt(D), causal) is what transformers returned
        scores = (q_rot.transpose(1, 2) @ k_rot.permute(0, 2, 3, 1)) / math.sqrt(D)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        assert np.abs(probs[0].numpy() - got[p + "attn_probs"]).max() <= 1e-6
    return got


def test_transformers_intermediates_match_text_golden(text_golden):
    _, path, golden = text_golden
    theirs = hf_golden(path, golden["input_ids"].tolist(), golden["step_ids"].tolist())
    assert set(theirs) == set(golden) - {"format_version", "config", "prompt", "deviation"}
    assert_within_tolerance(golden, theirs)


def test_transformers_intermediates_match_ids_golden(ids_golden):
    _, path, golden = ids_golden
    assert_within_tolerance(golden, hf_golden(path, golden["input_ids"].tolist(), golden["step_ids"].tolist()))


def test_greedy_steps_match_transformers_generate(text_golden):
    import torch

    hf, _, golden = text_golden
    ids = golden["input_ids"].tolist()
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out[0, len(ids) :].tolist() == golden["step_ids"].tolist()


def test_ill_conditioned_model_within_tolerance(tmp_path):
    """Deep, sharp attention (8 layers, qkv weights ×6) amplifies float32 rounding to ~1e-4 of the
    arrays' scale, beyond the fixed RTOL: the file's own deviation widens the bound, and both the
    naive port and transformers still pass, while layer 0 keeps a tight bound."""
    import torch
    from conftest import random_codegen

    hf = random_codegen(3, **dict(SMALL["narrow"], n_layer=8))
    with torch.no_grad():
        for blk in hf.transformer.h:
            blk.attn.qkv_proj.weight.mul_(6.0)
    hf.save_pretrained(tmp_path / "sharp")
    ids = np.random.default_rng(3).integers(0, VOCAB, 24).tolist()
    golden = write_golden(load_minicodegen(tmp_path / "sharp"), ids, tmp_path / "g.npz", steps=2)
    dev = deviations(golden)
    worst = max(dev[n] / float(np.abs(golden[n]).max()) for n in dev if golden[n].size)
    assert worst > 3 * RTOL  # the fixed part of the bound alone would not do
    assert dev["h.0.residual"] < RTOL * float(np.abs(golden["h.0.residual"]).max())  # tight where bugs first show
    assert_within_tolerance(golden, hf_golden(tmp_path / "sharp", ids, golden["step_ids"].tolist()))
    assert_within_tolerance(golden, naive_golden(tmp_path / "sharp", golden))


def test_ill_conditioned_flag():
    from minicodegen.golden import ill_conditioned

    g = {"a": np.array([1.0, 2.0], F32), "b": np.array([10.0], F32)}
    g["deviation"] = np.frombuffer(b'{"a": 1e-6, "b": 0.5}', np.uint8)
    assert ill_conditioned(g) == ("b", 0.05)
    g["deviation"] = np.frombuffer(b'{"a": 1e-6, "b": 1e-5}', np.uint8)
    assert ill_conditioned(g) is None


# ----------------------------------------------------------------------------- the file itself


def test_file_layout(text_golden):
    _, path, g = text_golden
    cfg = json.loads((Path(path) / "config.json").read_text())
    T, E, H, V = len(g["input_ids"]), cfg["n_embd"], cfg["n_head"], cfg["vocab_size"]
    assert list(g) == golden_names(cfg["n_layer"])
    assert bytes(g["prompt"]).decode() == PROMPT
    assert g["input_ids"].tolist() == [4299, 12900, 7, 77, 2599, 198, 50284, 361, 299, 1279, 362, 25, 198, 50280, 7783, 299]
    assert json.loads(bytes(g["config"]))["n_layer"] == cfg["n_layer"]
    assert g["h.1.qkv"].shape == (T, 3 * E) and g["h.1.q"].shape == (T, H, E // H)
    assert g["h.0.attn_probs"].shape == (H, T, T) and g["logits"].shape == (T, V)
    assert g["step_logits"].shape == (4, V) and g["step_ids"].dtype == np.int64
    for name, a in g.items():
        assert a.dtype in (np.float32, np.int64, np.int32, np.uint8), name
    np.testing.assert_array_equal(g["step_logits"][0], g["logits"][-1])
    np.testing.assert_array_equal(g["step_ids"], g["step_logits"].argmax(-1))
    assert np.allclose(g["h.0.attn_probs"].sum(-1), 1, atol=1e-6)
    assert (np.triu(g["h.0.attn_probs"], 1) == 0).all()  # causal


def test_every_name_is_documented():
    doc = DOCS.read_text()
    file_section = doc[doc.index("## The file") : doc.index("## The computation")]
    documented = re.findall(r"^\| `([^`]+)` \|", file_section, re.M)
    assert len(documented) == len(set(documented))
    documented = set(documented)
    names = {re.sub(r"^h\.0\.", "h.{i}.", n) for n in golden_names(n_layer=1)}
    assert names == documented
    stated = dict(re.findall(r"\b(ATOL|RTOL|K) = ([0-9.e-]+)", doc))
    assert {k: float(v) for k, v in stated.items()} == {"ATOL": ATOL, "RTOL": RTOL, "K": K}


def test_deviation_is_float32_rounding(text_golden):
    """The file's own error estimate: small, one entry per float array, and about the size of
    transformers' fp32 difference (which the tolerance allows K times over)."""
    hf, _, g = text_golden
    dev = deviations(g)
    floats = [n for n, a in g.items() if a.dtype == np.float32]
    assert sorted(dev) == sorted(floats)
    for name in floats:
        assert dev[name] <= 1e-6 * max(1.0, float(np.abs(g[name]).max())), name
    assert dev["wte"] == dev["sincos"] == 0.0  # copied, not computed


def test_tolerance_and_compare():
    g = {"a": np.array([1.0, -50.0], F32), "ids": np.array([1, 2])}
    assert tolerance(g["a"]) == pytest.approx(ATOL + RTOL * 50)
    assert tolerance(g["a"], 0.01) == pytest.approx(ATOL + RTOL * 50 + K * 0.01)
    rows = compare(g, {"a": g["a"] + np.array([0, 4e-4], F32), "ids": np.array([1, 3])})
    assert [(n, ok) for n, _, _, ok in rows] == [("a", True), ("ids", False)]
    assert not compare(g, {"a": g["a"] + F32(0.01)})[0][3]
    assert not compare(g, {"a": g["a"][:1]})[0][3]
    g["deviation"] = np.frombuffer(b'{"a": 0.001}', np.uint8)  # a file says how much float32 moved "a"
    assert compare(g, {"a": g["a"] + F32(0.01)})[0][3]


def test_sincos_recipe_at_far_positions():
    """The documented float32 recipe for the rotary table gives minicodegen's and transformers'
    tables at every position; computing θ in float64 instead is off by more than the tolerance
    far from position 0 (why docs/golden.md spells the recipe out)."""
    from transformers.models.codegen.modeling_codegen import create_sinusoidal_positions

    from minicodegen.ops import sinusoid_table

    R = 32
    ours = naive_sincos(2048, R)
    table = sinusoid_table(2048, R)
    assert np.abs(ours - table).max() <= 2.4e-7
    assert np.abs(ours - create_sinusoidal_positions(2048, R).numpy()).max() <= 2.4e-7
    in_float64 = naive_sincos(2048, R, theta_in_float32=False)
    assert np.abs(in_float64 - table).max() > tolerance(table)


def test_written_atomically(checkpoint_factory, tmp_path, monkeypatch):
    _, path = checkpoint_factory("narrow", **SMALL["narrow"])
    model = load_minicodegen(path)
    out = tmp_path / "g.npz"
    write_golden(model, [1, 2, 3], out)
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        write_golden(model, [4, 5, 6], out)
    assert out.read_bytes() == before and sorted(tmp_path.iterdir()) == [out]


def test_steps_past_n_positions_rejected(checkpoint_factory):
    _, path = checkpoint_factory("golden-text", **TEXT)
    model = load_minicodegen(path)
    assert golden_arrays(model, [5] * 60, steps=5)["step_logits"].shape == (5, 51200)  # 64 positions: fits
    with pytest.raises(ValueError, match="n_positions=64"):
        golden_arrays(model, [5] * 60, steps=6)


# ----------------------------------------------------------------------------- 3. command line


def test_cli_writes_golden(checkpoint_factory, tmp_path, capsys):
    _, path = checkpoint_factory("golden-text", **TEXT)
    out = tmp_path / "golden.npz"
    assert main(["golden", "--model", str(path), "--prompt", "def f():", "-o", str(out), "--steps", "3"]) == 0
    g = read_golden(out)
    assert g["input_ids"].tolist() == [4299, 277, 33529] and g["step_ids"].shape == (3,)
    assert "wrote" in capsys.readouterr().err
    # ids instead of text; --force to overwrite
    assert main(["golden", "--model", str(path), "--ids", "1, 2,3", "-o", str(out), "--force"]) == 0
    assert read_golden(out)["input_ids"].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--prompt", "x", "-o", "{out}"], 2, "--model"),
        (["--model", "{model}", "-o", "{out}"], 2, "--prompt"),
        (["--model", "{model}", "--prompt", "x"], 2, "--output"),
        (["--model", "{model}", "--prompt", "x", "--ids", "1", "-o", "{out}"], 2, "not allowed with"),
        (["--model", "{model}", "--prompt", "x", "-o", "{out}", "--steps", "-1"], 2, "--steps must be >= 0"),
        (["--model", "{model}", "--prompt", "x", "-o", "{out}", "--steps", "two"], 2, "invalid int value"),
        (["--model", "{model}", "--prompt", "", "-o", "{out}"], 2, "--prompt is empty"),
        (["--model", "{model}", "--ids", "1,x", "-o", "{out}"], 2, "comma-separated integers"),
        (["--model", "{model}", "--prompt", "x", "-o", "{out}", "--bogus"], 2, "unrecognized arguments"),
        (["--model", "{tmp}/nowhere", "--prompt", "x", "-o", "{out}"], 1, "nowhere"),
        (["--model", "{model}", "--ids", "99999", "-o", "{out}"], 1, "outside the model's vocabulary"),
        (["--model", "{model}", "--ids", ",".join(["1"] * 65), "-o", "{out}"], 1, "n_positions=64"),
        (["--model", "{model}", "--prompt", "x", "-o", "{tmp}/no/such/dir/g.npz"], 1, "does not exist"),
        (["--model", "{model}", "--prompt", "x", "-o", "{exists}"], 1, "--force"),
    ],
)
def test_cli_errors(args, code, message, checkpoint_factory, tmp_path, capsys):
    _, path = checkpoint_factory("golden-text", **TEXT)
    exists = tmp_path / "exists.npz"
    exists.write_bytes(b"keep me")
    subs = {"{model}": str(path), "{out}": str(tmp_path / "g.npz"), "{tmp}": str(tmp_path), "{exists}": str(exists)}
    argv = list(args)
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    assert main(["golden", *argv]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("minicodegen golden: error:")
    assert not (tmp_path / "g.npz").exists() and exists.read_bytes() == b"keep me"


def test_cli_help(capsys):
    assert main(["golden", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out
