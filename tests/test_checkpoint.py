"""Checkpoints: every hub layout read without torch, converted to .npz, loaded memory-mapped.

Checkpoints are built here with transformers and random weights (no hub access): written by
``save_pretrained`` (safetensors, sharded, fp16, bf16) and by ``torch.save`` (the 2022 hub
``pytorch_model.bin``: fp16 with the ``attn.causal_mask`` / ``attn.masked_bias`` buffers, plus fp32,
bf16 and a sharded variant). A local HTTP server plays the hub for ``snapshot_download``.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import http.server
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from minicodegen import __main__ as cli
from minicodegen import checkpoint as ck
from minicodegen import hubfiles, npz
from minicodegen.hub import HubError, HubUnreachableError, cache_path, is_hub_id

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 1000
IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 12))


# ----------------------------------------------------------------------------- building checkpoints


def hf_config(**kw: object) -> "transformers.CodeGenConfig":
    """A small CodeGen config with every field set (the defaults are 6B-like)."""
    fields = dict(
        vocab_size=VOCAB, n_positions=128, n_ctx=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
        n_inner=None, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.CodeGenConfig(**(fields | kw))


def random_model(seed: int = 0, **kw: object) -> "transformers.CodeGenForCausalLM":
    """Random weights; norms and biases moved off their initial 1 and 0 so that a swap shows."""
    torch.manual_seed(seed)
    model = transformers.CodeGenForCausalLM(hf_config(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("ln_1.weight") or name.endswith("ln_f.weight") else 0.0) + 0.1 * torch.randn(p.shape))
    return model


def reference_logits(model: "transformers.CodeGenForCausalLM", dtype: "torch.dtype") -> np.ndarray:
    """transformers' logits in float32 for the weights rounded to ``dtype`` (as a file stores them)."""
    m = copy.deepcopy(model).to(dtype).float()
    with torch.no_grad():
        return m(torch.from_numpy(IDS)).logits.numpy()


def byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (the byte-level BPE alphabet)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tokenizer(directory: Path) -> None:
    """A small, well-formed byte-level BPE tokenizer in the hub's three files."""
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("d", "e"), ("Ġ", "de"), ("Ġde", "f")]
    vocab = {c: i for i, c in enumerate(byte_chars())}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (directory / "added_tokens.json").write_text(json.dumps({"    ": len(vocab), "\t\t": len(vocab) + 1}))


def state_dict(model: "transformers.CodeGenForCausalLM", dtype: "torch.dtype") -> dict:
    """The state dict as the 2022 hub files hold it, buffers included."""
    n = model.config.n_positions
    sd = collections.OrderedDict((k, v.to(dtype).contiguous()) for k, v in model.state_dict().items())
    for i in range(model.config.n_layer):
        sd[f"transformer.h.{i}.attn.causal_mask"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9)
    return sd


def save_bin(model: "transformers.CodeGenForCausalLM", directory: Path, dtype: "torch.dtype", shards: int = 1) -> None:
    directory.mkdir(parents=True)
    model.config.save_pretrained(directory)
    sd = state_dict(model, dtype)
    if shards == 1:
        torch.save(sd, directory / "pytorch_model.bin")
        return
    names, weight_map = list(sd), {}
    for s in range(shards):
        shard = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = collections.OrderedDict((k, sd[k]) for k in names[s::shards])
        torch.save(part, directory / shard)
        weight_map |= {k: shard for k in part}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))


VARIANTS = {  # name: (writer, torch dtype the weights are rounded to, kwargs)
    "safetensors": ("pretrained", "float32", {}),
    "safetensors-sharded": ("pretrained", "float32", {"max_shard_size": "40KB"}),
    "safetensors-fp16": ("pretrained", "float16", {}),
    "safetensors-bf16": ("pretrained", "bfloat16", {}),
    "bin-fp32": ("bin", "float32", {}),
    "bin-fp16": ("bin", "float16", {}),
    "bin-bf16": ("bin", "bfloat16", {}),
    "bin-sharded": ("bin", "float16", {"shards": 3}),
}


@pytest.fixture(scope="module")
def model() -> "transformers.CodeGenForCausalLM":
    return random_model(0)


@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Every variant written once: name -> (directory, transformers' reference logits)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name, (writer, dtype_name, kw) in VARIANTS.items():
        dtype, d = getattr(torch, dtype_name), root / name
        if writer == "pretrained":
            copy.deepcopy(model).to(dtype).save_pretrained(d, **kw)
        else:
            save_bin(model, d, dtype, **kw)
        write_tokenizer(d)
        out[name] = (d, reference_logits(model, dtype))
    return out


def logits(path: str | Path) -> np.ndarray:
    return ck.load_model(path, fast=False).logits(IDS)


# ----------------------------------------------------------------------------- formats


def test_files_written_as_expected(checkpoints):
    names = {k: sorted(p.name for p in d.iterdir()) for k, (d, _) in checkpoints.items()}
    assert "model.safetensors" in names["safetensors"] and "pytorch_model.bin" not in names["safetensors"]
    assert "model.safetensors.index.json" in names["safetensors-sharded"]
    assert len([n for n in names["safetensors-sharded"] if n.startswith("model-")]) > 1
    assert "pytorch_model.bin.index.json" in names["bin-sharded"]
    assert {"vocab.json", "merges.txt", "added_tokens.json"} <= set(names["bin-fp16"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_direct_and_converted_logits(checkpoints, tmp_path, variant):
    """Loaded directly: transformers' logits within 1e-4. Converted: exactly the direct load's."""
    d, ref = checkpoints[variant]
    direct = logits(d)
    assert np.abs(direct - ref).max() < 1e-4
    npz.convert(d, tmp_path / "f32.npz")
    assert np.array_equal(logits(tmp_path / "f32.npz"), direct)
    native = {"float16": "float16", "bfloat16": "bfloat16"}.get(VARIANTS[variant][1])
    if native:  # stored in the source's own dtype: the same numbers, half the file
        npz.convert(d, tmp_path / "native.npz", dtype=native)
        assert np.array_equal(logits(tmp_path / "native.npz"), direct)
        assert (tmp_path / "native.npz").stat().st_size < 0.6 * (tmp_path / "f32.npz").stat().st_size


def test_bin_reader_matches_torch_load(tmp_path):
    """Strides, shared storages, offsets, scalars and every dtype, against torch.load."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict(
        transposed=base.t(), row=base[2], strided=base[:, ::2], scalar=torch.tensor(3.5), empty=torch.zeros(0, 3),
        half=torch.randn(3, 5).half(), bf16=torch.randn(7).bfloat16(), mask=torch.ones(3, 3, dtype=torch.bool).tril(),
        long=torch.arange(5), int8=torch.arange(-4, 4, dtype=torch.int8), double=torch.randn(2, 2, dtype=torch.float64),
    )  # fmt: skip
    torch.save(sd, tmp_path / "x.bin")
    got = hubfiles.read_torch_bin(tmp_path / "x.bin")
    assert list(got) == list(sd)
    for name, t in torch.load(tmp_path / "x.bin", weights_only=True).items():
        want = t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name


def test_bfloat16_rounding_matches_torch():
    x = np.concatenate([np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * 10.0 ** np.arange(-5, 5).repeat(1000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)])  # fmt: skip
    want = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(npz.to_bfloat16(x), want)
    assert npz.to_bfloat16(np.array([np.nan, -np.nan], np.float32)).tolist() == [0x7FC0, 0x7FC0]


def test_wrong_and_missing_weights_are_named(checkpoints, tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "bad"
    shutil.copytree(checkpoints["safetensors"][0], d)
    weights = {k: np.array(v) for k, v in hubfiles.read_safetensors(d / "model.safetensors").items()}
    weights["transformer.h.1.mlp.fc_in.weight"] = np.zeros((255, 64), np.float32)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.fc_in\.weight.*\(255, 64\).*\(256, 64\)"):
        npz.convert(d, tmp_path / "x.npz")
    del weights["transformer.h.1.mlp.fc_in.weight"]
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing weight 'transformer\.h\.1\.mlp\.fc_in\.weight'.*\(256, 64\)"):
        ck.load_model(d)
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- the .npz


def test_npz_layout(checkpoints, tmp_path):
    d = checkpoints["bin-fp16"][0]
    out = npz.convert(d, tmp_path / "m.npz", dtype="int8")
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    names = [i.filename for i in infos]
    assert names[:2] == ["__config__.npy", "__meta__.npy"]
    assert {"__tokenizer__/vocab.json.npy", "__tokenizer__/merges.txt.npy", "__tokenizer__/added_tokens.json.npy"} <= set(names)
    assert not any("causal_mask" in n or "masked_bias" in n for n in names)

    with np.load(out, allow_pickle=False) as z:  # a plain .npz for NumPy too
        assert json.loads(z["__meta__"].tobytes())["dtype"] == "int8"
        assert json.loads(z["__config__"].tobytes())["n_embd"] == 64
        plain = {k: z[k] for k in z.files}
    cfg, weights, tok = npz.read_npz(out)
    assert tok == {n: (d / n).read_bytes() for n in ("vocab.json", "merges.txt", "added_tokens.json")}
    for name, w in weights.items():
        assert np.array_equal(w, plain[name]), name
        assert w.__array_interface__["data"][0] % npz.ALIGN == 0, f"{name} is not {npz.ALIGN}-byte aligned"
    assert weights["transformer.h.0.attn.qkv_proj.weight"].dtype == np.int8
    assert weights["transformer.h.0.attn.qkv_proj.weight.scale"].shape == (192,)
    assert weights["transformer.wte.weight.scale"].shape == (VOCAB,)
    assert weights["transformer.h.0.ln_1.weight"].dtype == np.float32
    assert cfg.n_layer == 2 and cfg.eos_token_id == VOCAB - 1


def test_npz_bfloat16_is_uint16_with_note(checkpoints, tmp_path):
    out = npz.convert(checkpoints["safetensors"][0], tmp_path / "m.npz", dtype="bfloat16")
    _, weights, _ = npz.read_npz(out)
    with np.load(out) as z:
        meta = json.loads(z["__meta__"].tobytes())
    assert meta["dtype"] == "bfloat16" and "bfloat16 bit patterns" in meta["note"]
    assert weights["lm_head.weight"].dtype == np.uint16 and weights["lm_head.bias"].dtype == np.float32


def test_npz_refuses_object_arrays_and_foreign_files(tmp_path):
    np.savez(tmp_path / "obj.npz", __config__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz.*Python objects"):
        npz.read_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npz.*no __config__"):
        npz.read_npz(tmp_path / "plain.npz")
    np.savez_compressed(tmp_path / "zipped.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"zipped\.npz.*compressed"):
        npz.read_npz(tmp_path / "zipped.npz")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_npz_fast_path_and_tokenizer(checkpoints, tmp_path, dtype):
    """The Numba kernels take the read-only mapped arrays; the tokenizer comes back from the .npz."""
    out = npz.convert(checkpoints["bin-fp16"][0], tmp_path / "m.npz", dtype=dtype)
    fast, slow = ck.load_model(out, fast=True), ck.load_model(out, fast=False)
    assert np.abs(fast.logits(IDS) - slow.logits(IDS)).max() < 1e-4
    tok = fast.tokenizer
    if tok is not None:  # minicodegen.tokenizer is there: built from the stored files
        vocab = json.loads((checkpoints["bin-fp16"][0] / "vocab.json").read_text())
        assert tok.encode(" the def") == [vocab["Ġthe"], vocab["Ġdef"]]


def _backed_by_mmap(a: np.ndarray) -> bool:
    import mmap

    while a is not None:
        if isinstance(a, memoryview):
            return isinstance(a.obj, mmap.mmap)
        if isinstance(a, mmap.mmap):
            return True
        a = getattr(a, "base", None)
    return False


def test_npz_loads_memory_mapped(checkpoints, tmp_path):
    out = npz.convert(checkpoints["safetensors"][0], tmp_path / "m.npz")
    m = ck.load_model(out, fast=False)
    for name, w in m.weights.items():
        assert _backed_by_mmap(w), f"{name} was read into memory"
        assert not w.flags.writeable
    bf = ck.load_model(npz.convert(checkpoints["safetensors"][0], tmp_path / "bf.npz", dtype="bfloat16"), fast=False)
    assert all(_backed_by_mmap(w) for w in bf.weights.values())


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_npz_read_into_memory(checkpoints, tmp_path, dtype):
    """mapped=False: the same arrays, in memory of their own; the same logits."""
    out = npz.convert(checkpoints["safetensors"][0], tmp_path / "m.npz", dtype=dtype)
    mapped, in_mem = ck.load_model(out, fast=True), ck.load_model(out, fast=True, mapped=False)
    assert mapped.weights.keys() == in_mem.weights.keys()
    for name, w in in_mem.weights.items():
        assert not _backed_by_mmap(w), f"{name} is still mapped"
        assert not w.flags.writeable
        assert w.dtype == mapped.weights[name].dtype and np.array_equal(w, mapped.weights[name])
    assert np.array_equal(mapped.logits(IDS), in_mem.logits(IDS))


RSS_SCRIPT = """
import sys, numpy as np
from minicodegen import checkpoint as ck
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024
before = rss()
m = ck.load_model(sys.argv[1], fast=False)
loaded = rss()
total = sum(float(np.asarray(w, np.float32).sum(dtype=np.float64)) for w in m.weights.values())  # touch every page
print(loaded - before, rss() - before, sum(w.nbytes for w in m.weights.values()))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_loading_does_not_read_the_weights(tmp_path):
    """A 150 MB .npz: RSS barely moves at load, and grows by the weights once they are touched."""
    from minicodegen.model import config_from_dict, expected_shapes

    cfg = config_from_dict({"vocab_size": 32768, "n_embd": 512, "n_layer": 2, "n_head": 8, "rotary_dim": 16, "n_positions": 128})
    weights = ((n, np.full(s, 0.01, np.float32)) for n, s in expected_shapes(cfg).items())
    path = npz.write_npz(tmp_path / "big.npz", cfg, weights)
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    at_load, after_touch, size = map(int, r.stdout.split())
    assert size > 140e6
    assert at_load < 0.1 * size, f"loading grew RSS by {at_load / 1e6:.0f} MB of {size / 1e6:.0f} MB"
    assert after_touch > 0.8 * size  # the measurement does see the weights once they are read


# ----------------------------------------------------------------------------- int8


def test_int8_quantization_is_per_row_and_symmetric():
    w = np.random.default_rng(2).standard_normal((50, 40)).astype(np.float32) * np.linspace(0.1, 5, 50)[:, None]
    w[3] = 0
    q, s = npz.quantize_int8(w, chunk=16)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (50,)
    assert np.abs(q).max() == 127 and s[3] == 0 and not q[3].any()
    assert np.allclose(np.abs(w).max(axis=1), s * 127)
    assert np.abs(q * s[:, None] - w).max() <= s.max() / 2 * 1.0001


def greedy(m, prompt: np.ndarray, steps: int) -> np.ndarray:
    ids = prompt.copy()
    for _ in range(steps):
        ids = np.concatenate([ids, m.logits(ids)[:, -1:].argmax(-1)], axis=1)
    return ids[:, prompt.shape[1] :]


def test_int8_accuracy(checkpoints, tmp_path, capsys):
    """Measures int8 against float32 on a random checkpoint (random weights: logits are small)."""
    d = checkpoints["safetensors"][0]
    f32 = ck.load_model(npz.convert(d, tmp_path / "f32.npz"), fast=False)
    i8 = ck.load_model(npz.convert(d, tmp_path / "i8.npz", dtype="int8"), fast=False)
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(4, 64))
    a, b = f32.logits(ids), i8.logits(ids)
    delta = np.abs(a - b).max()
    argmax_agree = (a.argmax(-1) == b.argmax(-1)).mean()
    free = (greedy(f32, ids[:, :8], 24) == greedy(i8, ids[:, :8], 24)).mean()
    size = (tmp_path / "i8.npz").stat().st_size / (tmp_path / "f32.npz").stat().st_size
    with capsys.disabled():
        print(f"\n[int8] max|Δlogits| {delta:.4g} (logit std {a.std():.3g}), next-token argmax agreement "
              f"{argmax_agree:.1%}, free greedy agreement {free:.1%}, file {size:.0%} of float32")  # fmt: skip
    assert delta < 0.05 * np.abs(a).max()
    assert argmax_agree > 0.9


@pytest.mark.parametrize("dtype,tol", [("int8", 0.05), ("int4", 0.5)])
def test_bf16_and_fp16_checkpoints_quantize_from_their_values(checkpoints, tmp_path, dtype, tol):
    """bf16 weights are read as uint16 bit patterns: quantizing must widen them first (and fp16
    ones), chunk by chunk, not take the bits for numbers."""
    for variant in ("safetensors-bf16", "bin-fp16"):
        d, ref = checkpoints[variant]
        got = ck.load_model(npz.convert(d, tmp_path / f"{variant}-{dtype}.npz", dtype=dtype), fast=False).logits(IDS)
        assert np.abs(got - ref).max() < tol * np.abs(ref).max(), variant
        in_memory = ck.load_model(d, fast=False, dtype=dtype).logits(IDS)  # the same, converted as it loads
        np.testing.assert_array_equal(in_memory, got)


def test_zip64_records_are_read(checkpoints, tmp_path):
    """A torch .bin over 4 GiB has ZIP64 records (torch writes them past the limit): here every
    member of a small file is rewritten with them, and the weights read back the same."""
    src = checkpoints["bin-fp16"][0]
    dst = tmp_path / "zip64"
    shutil.copytree(src, dst)
    with zipfile.ZipFile(src / "pytorch_model.bin") as zin, zipfile.ZipFile(dst / "pytorch_model.bin", "w") as zout:
        for info in zin.infolist():
            with zout.open(zipfile.ZipInfo(info.filename, info.date_time), "w", force_zip64=True) as w:
                w.write(zin.read(info))
    with zipfile.ZipFile(dst / "pytorch_model.bin") as z:
        n = len(z.infolist())
    raw = (dst / "pytorch_model.bin").read_bytes()
    assert raw.count(b"\x01\x00\x10\x00") >= n  # a ZIP64 extra field (id 1, 16 bytes) in every local header
    a, b = hubfiles.read_weight_file(src / "pytorch_model.bin"), hubfiles.read_weight_file(dst / "pytorch_model.bin")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(logits(dst), logits(src))


# ----------------------------------------------------------------------------- hostile and damaged files


class Payload:
    """Unpickling this calls os.system; a torch.load(weights_only=False) would run it."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class EvalPayload(Payload):
    def __reduce__(self):
        return (eval, (f"__import__('os').system({self.cmd!r})",))


def torch_zip(path: Path, pickled: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize(
    "make, global_name",
    [
        (lambda cmd: pickle.dumps(Payload(cmd), protocol=2), r"posix\.system"),
        (lambda cmd: pickle.dumps(collections.OrderedDict(w=Payload(cmd)), protocol=4), r"posix\.system"),
        (lambda cmd: pickle.dumps({"w": EvalPayload(cmd)}, protocol=2), r"__builtin__\.eval"),
        (lambda cmd: pickle.dumps({"w": np.zeros(2)}, protocol=2), r"numpy"),
    ],
)
def test_malicious_pickle_is_refused(tmp_path, make, global_name):
    marker = tmp_path / "pwned"
    payload = make(f"touch {marker}")
    if "numpy" not in global_name:  # the payload is live: plain pickle runs it
        pickle.loads(payload)
        assert marker.exists()
        marker.unlink()
    path = torch_zip(tmp_path / "pytorch_model.bin", payload)
    with pytest.raises(ValueError, match=rf"pytorch_model\.bin.*refusing.*{global_name}"):
        hubfiles.read_torch_bin(path)
    assert not marker.exists()


def test_forged_persistent_ids_are_refused(tmp_path):
    class Forged:
        def __reduce__(self):
            return (collections.OrderedDict, ())

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "FloatStorage", "../../etc/passwd", "cpu", 10) if isinstance(obj, Forged) else None


    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": Forged()})
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*persistent id"):
        hubfiles.read_torch_bin(torch_zip(tmp_path / "pytorch_model.bin", buf.getvalue()))


def _damage(path: Path, how: str, at: float | int = 0.5) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: int(len(data) * at)]
    elif how == "empty":
        data = bytearray()
    else:
        i = int(len(data) * at) if isinstance(at, float) else at
        data[i : i + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


DAMAGE = [  # (variant, file, how, where)
    ("bin-fp16", "pytorch_model.bin", "truncate", 0.5),
    ("bin-fp16", "pytorch_model.bin", "truncate", 0.999),
    ("bin-fp16", "pytorch_model.bin", "corrupt", 0.5),  # inside a storage: caught by its CRC
    ("bin-fp16", "pytorch_model.bin", "corrupt", 100),  # inside data.pkl
    ("bin-fp16", "pytorch_model.bin", "empty", 0),
    ("bin-sharded", "pytorch_model-00002-of-00003.bin", "truncate", 0.7),
    ("bin-sharded", "pytorch_model.bin.index.json", "corrupt", 5),
    ("safetensors", "model.safetensors", "truncate", 0.5),
    ("safetensors", "model.safetensors", "truncate", 0.01),  # inside the header
    ("safetensors", "model.safetensors", "corrupt", 20),  # the JSON header
    ("safetensors", "model.safetensors", "corrupt", 0),  # the header length
    ("safetensors", "model.safetensors", "empty", 0),
    ("safetensors-sharded", "model-00002-of-*.safetensors", "truncate", 0.5),
    ("safetensors-sharded", "model.safetensors.index.json", "truncate", 0.5),
]


@pytest.mark.parametrize("variant, name, how, where", DAMAGE)
def test_damaged_checkpoint_files_are_named(checkpoints, tmp_path, variant, name, how, where):
    d = tmp_path / variant
    shutil.copytree(checkpoints[variant][0], d)
    (path,) = d.glob(name)
    name = path.name
    _damage(path, how, where)
    with pytest.raises(ValueError, match=re.escape(name)):
        npz.convert(d, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("how, where, verify", [("truncate", 0.5, False), ("truncate", 0.9999, False),
                                                ("corrupt", 0, False), ("empty", 0, False), ("corrupt", 0.5, True)])  # fmt: skip
def test_damaged_npz_is_named(checkpoints, tmp_path, how, where, verify):
    out = npz.convert(checkpoints["safetensors"][0], tmp_path / "model.npz")
    _damage(out, how, where)
    with pytest.raises(ValueError, match=r"model\.npz"):
        npz.read_npz(out, verify=verify)


# ----------------------------------------------------------------------------- atomic writes


def test_existing_output_is_kept_without_force(checkpoints, tmp_path):
    out = tmp_path / "m.npz"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="force"):
        npz.convert(checkpoints["safetensors"][0], out)
    assert out.read_bytes() == b"precious"
    npz.convert(checkpoints["safetensors"][0], out, force=True)
    assert npz.read_npz(out)[0].n_layer == 2


def test_failed_conversion_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    real, calls = npz.encode, []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(npz, "encode", failing)
    with pytest.raises(OSError, match="simulated"):
        npz.convert(checkpoints["safetensors"][0], tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


KILLED_SCRIPT = """
import sys, time
from minicodegen import npz
real = npz.encode
def slow(*a, **k):
    time.sleep(0.3)
    return real(*a, **k)
npz.encode = slow
npz.convert(sys.argv[1], sys.argv[2])
"""


def test_killed_conversion_leaves_no_output(checkpoints, tmp_path):
    out = tmp_path / "m.npz"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(checkpoints["safetensors"][0]), str(out)])
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".m.npz.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".m.npz.*.tmp")), "the conversion never started writing"
        time.sleep(0.5)  # midway: a few tensors written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()


# ----------------------------------------------------------------------------- command line


def test_convert_main(checkpoints, tmp_path, capsys):
    src = str(checkpoints["bin-fp16"][0])
    assert cli.main(["convert", src]) == 2  # -o missing
    assert cli.main(["convert", src, "-o", str(tmp_path / "a.npz"), "--dtype", "float8"]) == 2
    capsys.readouterr()
    assert cli.main(["convert", src, "-o", str(tmp_path / "a.npz"), "--dtype", "bfloat16"]) == 0
    assert re.match(r"wrote .*a\.npz \([\d.]+ MB, bfloat16\) in [\d.]+ s\n$", capsys.readouterr().out)
    assert cli.main(["convert", src, "-o", str(tmp_path / "a.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert cli.main(["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "b.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "Traceback" not in err


def test_tools_convert_script(checkpoints, tmp_path):
    out = tmp_path / "t.npz"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), str(checkpoints["safetensors"][0]),
                        "-o", str(out), "--dtype", "float16"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert np.allclose(logits(out), logits(checkpoints["safetensors"][0]), atol=1e-3)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


# ----------------------------------------------------------------------------- the hub, played locally

SHA = "0123456789abcdef0123456789abcdef01234567"


def hub_handler(repos: dict[str, dict[str, bytes]], log: list[tuple[str, str]]) -> type:
    """Answers the requests snapshot_download makes, as huggingface.co does."""

    class Hub(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self.route(body=False)

        def do_GET(self) -> None:
            self.route(body=True)

        def route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            log.append((self.command, path))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                files = self.repo(m[1], m[2])
                if files is not None:
                    tree = [{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()} for n, b in files.items()]
                    self.send(200, json.dumps(tree).encode(), body, {"Content-Type": "application/json"})
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                files = self.repo(m[1], m[2] or "main")
                if files is not None:
                    info = {"id": m[1], "modelId": m[1], "sha": SHA, "private": False,
                            "siblings": [{"rfilename": n, "size": len(b)} for n, b in files.items()]}
                    self.send(200, json.dumps(info).encode(), body, {"Content-Type": "application/json"})
            elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                files = self.repo(m[1], m[2])
                if files is not None and m[3] not in files:
                    self.send(404, b"", body, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": SHA})
                elif files is not None:
                    self.file(files[m[3]], body)
            else:
                self.send(404, b"not found", body)

        def repo(self, repo: str, revision: str) -> dict[str, bytes] | None:
            if repo not in repos:
                self.send(404, b"Repository not found", True, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            elif revision not in ("main", SHA):
                self.send(404, b"Revision not found", True, {"X-Error-Code": "RevisionNotFound"})
            else:
                return repos[repo]
            return None

        def file(self, data: bytes, body: bool) -> None:
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": SHA, "Accept-Ranges": "bytes"}
            rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if rng and body:
                start = int(rng[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self.send(206, data[start:], body, headers)
            self.send(200, data, body, headers)

        def send(self, status: int, data: bytes, body: bool, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(data)

    return Hub


@pytest.fixture
def hub(checkpoints):
    """A hub on 127.0.0.1 serving two repos: safetensors (single file) and a sharded torch checkpoint."""
    repos = {
        "test-org/codegen-tiny": {p.name: p.read_bytes() for p in checkpoints["safetensors"][0].iterdir()},
        "test-org/codegen-tiny-bin": {p.name: p.read_bytes() for p in checkpoints["bin-sharded"][0].iterdir()},
    }
    repos["test-org/codegen-tiny"]["README.md"] = b"# not fetched\n"
    log: list[tuple[str, str]] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), hub_handler(repos, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", log
    server.shutdown()
    server.server_close()


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return env | {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "MINICODEGEN_CACHE": str(tmp_path / "mc"),
                  "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip


@pytest.fixture
def isolated_hub(monkeypatch, tmp_path):
    """HF_ENDPOINT and caches in tmp_path for this process (huggingface_hub read its constants at import)."""
    import huggingface_hub.constants as hfc

    def use(endpoint: str) -> None:
        for k, v in hub_env(tmp_path, endpoint).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)

    return use


def test_hub_convert_end_to_end(hub, checkpoints, tmp_path):
    """`convert org/name` through HF_ENDPOINT in a fresh process: downloads, converts, same logits."""
    endpoint, log = hub
    out = tmp_path / "hub.npz"
    cmd = [sys.executable, str(ROOT / "tools" / "convert.py"), "test-org/codegen-tiny", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=hub_env(tmp_path, endpoint), timeout=120)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(logits(out), logits(checkpoints["safetensors"][0]))
    assert ("GET", "/api/models/test-org/codegen-tiny") in log
    fetched = {p.rsplit("/", 1)[1] for m, p in log if m == "GET" and "/resolve/" in p}
    assert fetched == {"config.json", "model.safetensors", "vocab.json", "merges.txt", "added_tokens.json"}
    snapshots = tmp_path / "hf" / "hub" / "models--test-org--codegen-tiny" / "snapshots" / SHA
    assert (snapshots / "model.safetensors").is_file()  # huggingface_hub's standard cache


def test_hub_id_loads_once_then_from_cache(hub, checkpoints, tmp_path, isolated_hub):
    endpoint, log = hub
    isolated_hub(endpoint)
    m = ck.load_model("test-org/codegen-tiny-bin", fast=False, dtype="float32")  # sharded torch files: index, then shards
    assert np.array_equal(m.logits(IDS), logits(checkpoints["bin-sharded"][0]))
    cached = tmp_path / "mc" / "test-org--codegen-tiny-bin-float32.npz"
    assert ck.resolve("test-org/codegen-tiny-bin", "float32") == cached and cached.is_file()
    assert json.loads(np.load(cached)["__meta__"].tobytes())["source"] == "test-org/codegen-tiny-bin"
    shards = {p.rsplit("/", 1)[1] for m_, p in log if m_ == "GET" and "/resolve/" in p}
    assert {"pytorch_model-00001-of-00003.bin", "pytorch_model-00003-of-00003.bin"} <= shards
    n = len(log)
    assert np.array_equal(ck.load_model("test-org/codegen-tiny-bin", fast=False, dtype="float32").logits(IDS), m.logits(IDS))
    assert len(log) == n, "a cached hub id went to the network"


def test_hub_ids_convert_once_per_dtype(hub, checkpoints, tmp_path, isolated_hub):
    """No dtype: int8 (checkpoint.HUB_DTYPE); each dtype its own cached file, from one download."""
    endpoint, log = hub
    isolated_hub(endpoint)
    m8 = ck.load_model("test-org/codegen-tiny", fast=False)
    assert m8.weights["transformer.h.0.attn.qkv_proj.weight"].dtype == np.int8
    m4 = ck.load_model("test-org/codegen-tiny", fast=False, dtype="int4")
    assert m4.weights["transformer.h.0.attn.qkv_proj.weight"].dtype == np.uint8
    for dt in ("int8", "int4"):
        meta = json.loads(np.load(tmp_path / "mc" / f"test-org--codegen-tiny-{dt}.npz")["__meta__"].tobytes())
        assert meta["dtype"] == dt and meta["source"] == "test-org/codegen-tiny"
    fetched = [p for m_, p in log if m_ == "GET" and p.endswith("/model.safetensors")]
    assert len(fetched) == 1, "the weights were downloaded twice"
    want = logits(checkpoints["safetensors"][0])
    for m, tol in ((m8, 0.05), (m4, 0.5)):  # (random weights: int8 and int4 move logits of about 1 by these)
        assert np.abs(m.logits(IDS) - want).max() < tol
    with pytest.raises(ValueError, match="dtype 'int3' is not one of"):
        ck.load_model("test-org/codegen-tiny", dtype="int3")


def test_no_disk_space_fails_before_the_download(hub, tmp_path, isolated_hub, monkeypatch):
    """One line that says how much is needed, for what and where; no weights fetched, nothing written."""
    from minicodegen import hub as hub_module

    endpoint, log = hub
    isolated_hub(endpoint)
    free = {"bytes": 10_000}
    monkeypatch.setattr(hub_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, free["bytes"]))
    with pytest.raises(hub_module.DiskSpaceError) as e:
        ck.load_model("test-org/codegen-tiny", dtype="int4")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("not enough disk space: the download of test-org/codegen-tiny (")
    assert "test-org/codegen-tiny converted to int4" in msg and "0.0 MB free" in msg and str(tmp_path / "mc") in msg
    assert not [p for m_, p in log if p.endswith("model.safetensors")]
    assert not list((tmp_path / "mc").glob("*.npz"))
    free["bytes"] = 10**12  # then it goes through
    assert ck.load_model("test-org/codegen-tiny", dtype="int4").config.n_layer > 0


def test_convert_checks_the_space_of_its_output(checkpoints, tmp_path, monkeypatch):
    from minicodegen import hub as hub_module

    monkeypatch.setattr(hub_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, 1000))
    with pytest.raises(OSError, match=r"not enough disk space: .* converted to int4 \(.*\) in " + re.escape(str(tmp_path))):
        npz.convert(checkpoints["safetensors"][0], tmp_path / "x.npz", "int4")
    assert not list(tmp_path.glob("*x.npz*"))


def test_hub_missing_repo_and_revision(hub, isolated_hub):
    endpoint, _ = hub
    isolated_hub(endpoint)
    with pytest.raises(HubError, match="test-org/nothing not found"):
        ck.load_model("test-org/nothing")
    with pytest.raises(HubError, match="revision v9 of test-org/codegen-tiny not found"):
        ck.resolve("test-org/codegen-tiny@v9")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub(tmp_path, isolated_hub):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    isolated_hub(endpoint)
    with pytest.raises(HubUnreachableError, match=r"could not reach the hub.*local model.*--model tiny"):
        ck.load_model("Salesforce/codegen-350M-mono")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), "Salesforce/codegen-350M-mono", "-o", str(tmp_path / "x.npz")],
                       capture_output=True, text=True, env=hub_env(tmp_path, endpoint), timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "could not reach the hub at " + endpoint in r.stderr and "local model" in r.stderr
    assert not (tmp_path / "x.npz").exists()


def test_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICODEGEN_CACHE", str(tmp_path / "c"))
    assert cache_path("Salesforce/codegen-350M-mono") == tmp_path / "c" / "Salesforce--codegen-350M-mono-float32.npz"
    assert cache_path("a/b", "v1.0", "int4") == tmp_path / "c" / "a--b@v1.0-int4.npz"
    assert is_hub_id("Salesforce/codegen-350M-mono") and is_hub_id("a/b@main")
    assert not is_hub_id("./x") and not is_hub_id("/abs/path") and not is_hub_id("a/b.npz")
    if ck.TINY.exists():
        assert ck.resolve("tiny") == ck.TINY
    else:
        with pytest.raises(FileNotFoundError, match="tiny"):
            ck.resolve("tiny")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ck.resolve(tmp_path / "missing.npz")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="checkpoint directory"):
        ck.resolve(tmp_path / "w.bin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)  # a local directory wins over a hub id
    assert ck.resolve("org/local") == Path("org/local")
