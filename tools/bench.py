"""End-to-end speed of minicodegen against transformers and CTranslate2 on the same CPU.

Builds a random-weight CodeGen checkpoint with the real 350M shape (``--2b``: the
2B shape) with transformers, converts it to fp32 / bf16 / int8 ``.npz`` files and,
if ``ctranslate2`` is installed (``pip install .[bench]``), to CTranslate2 models
(``ctranslate2.converters.TransformersConverter``, ``quantization`` float32 and int8),
then measures with the same number of threads (``--threads``, default 2):

* prefill: seconds to read a 512-token prompt into an empty KV cache, logits of
  the last position only (what ``generate`` does on both sides: transformers
  5.x ``generate`` passes ``logits_to_keep=1`` to models whose ``forward``
  takes it, which CodeGen's does);
* decode: tokens/s of 128 single-token forward steps (+ greedy argmax) after a
  32-token prompt, KV cache reused, i.e. the per-token cost of generation
  without the prompt (transformers: ``past_key_values`` under
  ``torch.inference_mode()``; minicodegen: ``forward(..., cache=, last_only=True)``);
* peak RSS while decoding: ``VmHWM`` of a process that only imports, loads the
  weights, runs the decode runs (prompt included) and nothing else;
  each configuration runs in its own subprocess so that the peak is its own;
* the memory-read rate (Numba parallel row sums over a 1 GB array, the access
  pattern of the decode kernels) and the tokens/s it allows for the bytes of
  weights each token reads (the bandwidth bound);
* agreement of bf16 / int8 with fp32: greedy identical-prefix length over 128
  tokens, teacher-forced argmax agreement (fed the fp32 tokens), max |logits
  difference| on the prompt; fp32 against the NumPy definition and transformers;
* batch: new tokens/s of one greedy generation of B = 8 and B = 32 prompts of 32 tokens,
  64 new tokens each, end to end (prompt included; minicodegen: ``minicodegen.generate(model,
  [B id lists], max_new_tokens=64)``; transformers, B = 8 only: ``generate`` on the left-padded
  batch with ``min_new_tokens=64``; CTranslate2: ``generate_batch`` with ``min_length=64``);
* decode steps of B rows (minicodegen, B = 1, 2, 4, 8, 16, 32): tokens/s of 15 steps of a batch
  of B after B prompts of 32 tokens, the steps only;
* the first-run compile time of the kernels (``kernels.warmup()`` with an empty
  ``NUMBA_CACHE_DIR``) and the time to load them from the on-disk cache.

CTranslate2 (``Generator(dir, compute_type=float32 | int8, intra_threads=--threads,
inter_threads=1)``; its tokens are strings: the converted vocabulary is the ids written in
decimal, so prompts go in as ``str(id)`` and results come back as ``sequences_ids``):
decode is the time from the callback of the first new token of ``generate_batch`` to that of
the 129th (128 steps after a 32-token prompt, as the others); prefill is ``generate_batch``
with ``max_length=1, include_prompt_in_result=False`` (the time to the first new token; see
``w_ct2``).  A second table puts every engine's decode, prefill and batch figures side by side
with ratios against CTranslate2 int8.

Every timing is the median of ``--reps`` (default 5) runs after an untimed warm-up.

Configurations: transformers fp32 twice, with torch's default OpenMP environment (workers
spin while idle; ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` removed from that worker's
environment) and with ``OMP_WAIT_POLICY=PASSIVE`` (workers sleep at once): on a quiet machine
the default decodes faster, on a busy one PASSIVE is steadier.  Every ratio is taken against
the better of the two, per figure (higher decode tok/s, lower prefill time; best run against
the better best run).  minicodegen fp32 / bf16 / int8 six times: the ``.npz`` read into memory
(``minicodegen.load(path, mapped=False)``: slower load, faster decode, NumPy backs large arrays
with huge pages) and memory-mapped (``mapped=True``: instant load).

Threads: both sides get ``--threads`` (torch.set_num_threads, Numba set_threads,
OPENBLAS/OMP/MKL_NUM_THREADS).  minicodegen's Numba workers spin briefly, then sleep
(``GOMP_SPINCOUNT=10000``, set by minicodegen.kernels); its OpenBLAS workers sleep at once
(``OPENBLAS_THREAD_TIMEOUT=4``, set by ``import minicodegen`` before NumPy is imported).
Ratios compare figures of the same run (the machine may be shared).
Prints a markdown table for README.md at the end.

    python tools/bench.py [--threads 2] [--reps 5] [--2b] [--no-torch] [--no-ct2] [--workdir DIR]
    python tools/bench.py --smoke        # tiny shape, seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    "350M": dict(n_embd=1024, n_layer=20, n_head=16, rotary_dim=32, vocab_size=51200),
    "2B": dict(n_embd=2560, n_layer=32, n_head=32, rotary_dim=64, vocab_size=51200),
    "smoke": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=1024),
}
DTYPES = ("float32", "bfloat16", "int8", "int4")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8", "int4": "int4"}
# the configurations measured, in the order of a round (reversed every other round):
# transformers fp32 with torch's default OpenMP environment ("torch") and with sleeping workers
# ("torch-passive"); minicodegen per dtype with the .npz read into memory ("float32", ...) and
# memory-mapped ("float32-mapped", ...).
TORCH_CONFIGS = {
    "torch": {"label": "transformers fp32 (default OpenMP)", "omp": None},
    "torch-passive": {"label": "transformers fp32 (OMP_WAIT_POLICY=PASSIVE)", "omp": "PASSIVE"},
}
MCG_CONFIGS = {
    **{dt: {"label": f"minicodegen {SHORT[dt]}", "dtype": dt, "mapped": False} for dt in DTYPES},
    **{f"{dt}-mapped": {"label": f"minicodegen {SHORT[dt]} (mapped)", "dtype": dt, "mapped": True} for dt in DTYPES},
    # int8 weights times float32 activations (Model.int8_activations = "float32"), the path before integer kernels
    "int8-float": {"label": "minicodegen int8, float32 activations", "dtype": "int8", "mapped": False,
                   "int8_activations": "float32"},
    # bf16 weights times prompt activations rounded to bf16 (Model.bf16_activations = "bf16"): AMX tiles or
    # vdpbf16ps where the CPU has them; decode steps are bf16's (no batch or scan runs)
    "bf16-bf16": {"label": "minicodegen bf16, bf16 activations", "dtype": "bfloat16", "mapped": False,
                  "bf16_activations": "bf16"},
}
EXTRA = ("int8-float", "bf16-bf16")  # the configurations beside one per dtype, in the agreement and scan lists
SCAN = (1, 2, 4, 8, 16, 32)  # batch sizes of the decode-steps figure (minicodegen, weights in memory)
# CTranslate2: one converted model per quantization (written to <workdir>/ct2-<dtype>), loaded with
# the same compute_type; "dtype" also names the minicodegen weights whose bytes per token it reads.
CT2_CONFIGS = {
    f"ct2-{dt}": {"label": f"CTranslate2 {SHORT[dt]}", "dtype": dt, "compute_type": dt} for dt in ("float32", "int8")
}
CT2_REF = "ct2-int8"  # the reference of the engines table
# targets against transformers (350M, 2 threads): decode speed-up over transformers fp32, per weight dtype
DECODE_TARGET = {"float32": 1.4, "bfloat16": 2.5, "int8": 4.0, "int4": 6.4}  # (int4: 1.6x int8's)
INT4_TARGET = 1.6  # int4 decode tok/s / int8 decode tok/s, at least
PREFILL_TARGET = 1.0  # minicodegen prefill time / transformers prefill time, at most
RSS_TARGET = 1.3  # peak RSS while decoding / bytes of the weights in use, at most


# ----------------------------------------------------------------------------- helpers (no numpy)


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in bytes (Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def hf_config(shape: str) -> dict:
    s = SHAPES[shape]
    eos = min(50256, s["vocab_size"] - 1)
    return dict(
        vocab_size=s["vocab_size"], n_positions=2048, n_ctx=2048, n_embd=s["n_embd"], n_layer=s["n_layer"],
        n_head=s["n_head"], rotary_dim=s["rotary_dim"], n_inner=None, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02,
        bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False,
    )  # fmt: skip


def token_ids(n: int, vocab: int, seed: int) -> list[int]:
    """A fixed pseudo-random prompt (the same on both sides)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab - 1, n).tolist()


def batch_prompts(a: dict, vocab: int, B: int) -> list[list[int]]:
    """The prompts of a batch figure: ``B`` different prompts of ``prompt_T`` tokens (the same on
    every side; equal lengths, so no engine spends steps on padding)."""
    return [token_ids(a["prompt_T"], vocab, 100 + b) for b in range(B)]


def progress(msg: str) -> None:
    """A line on stderr (passed through by the parent) so that a long run shows where it is."""
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def decode_runs(decode, a: dict) -> tuple[list, dict[str, int]]:
    """One untimed decode of 16 tokens (every weight page mapped, allocator warm), then a["reps"]
    timed ones: [(seconds, tokens), ...] and the process status right after them (peak RSS)."""
    decode(16)
    runs = []
    for i in range(a["reps"]):
        runs.append(decode())
        progress(f"  decode run {i + 1}/{a['reps']}: {a['new_T'] / runs[-1][0]:.2f} tok/s")
    return runs, proc_status()


def result(obj: dict) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def _batch_runs(run_batch, a: dict) -> dict:
    """The batch figures, for each B of ``batch_Bs``: one short untimed run (the batched shapes
    warm), then ``reps`` timed runs of ``batch_new_T`` new tokens per prompt; ``run_batch(B, n)``
    returns (seconds, new tokens made)."""
    out = {}
    for B in a["batch_Bs"]:
        run_batch(B, 2)
        runs = [run_batch(B, a["batch_new_T"]) for _ in range(a["reps"])]
        tokens = min(r[1] for r in runs)
        progress(f"  batch of {B} x {a['batch_new_T']}: {tokens / median([r[0] for r in runs]):.2f} new tok/s")
        out |= {f"batch_runs_s_{B}": [r[0] for r in runs], f"batch_tokens_{B}": tokens}
    return out


# ----------------------------------------------------------------------------- workers (subprocesses)


def w_build(a: dict) -> None:
    """Random-weight checkpoint with transformers, then the .npz conversions (one per DTYPES)."""
    import torch
    from transformers import CodeGenConfig, CodeGenForCausalLM

    from minicodegen.npz import convert

    work = Path(a["work"])
    hf_dir = work / "hf"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = CodeGenConfig(**hf_config(a["shape"]))
    model = CodeGenForCausalLM(cfg).eval()
    model.save_pretrained(hf_dir)
    del model
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for dt in DTYPES:
        convert(hf_dir, work / f"{dt}.npz", dtype=dt, force=True)
    result({"build_s": t_build, "convert_s": time.perf_counter() - t0})


def w_convert(a: dict) -> None:
    """One more .npz conversion of the float32 one."""
    from minicodegen.npz import convert

    work = Path(a["work"])
    convert(work / "float32.npz", work / f"{a['dtype']}.npz", dtype=a["dtype"], force=True)
    result({})


def w_compile(a: dict) -> None:
    """kernels.warmup() seconds (compiles into, or loads from, NUMBA_CACHE_DIR)."""
    t0 = time.perf_counter()
    from minicodegen import kernels as K

    t_import = time.perf_counter() - t0
    K.set_threads(a["threads"])
    t0 = time.perf_counter()
    K.warmup()  # every kernel, for every weight dtype
    result({"warmup_s": time.perf_counter() - t0, "import_s": t_import})


def w_memrate(a: dict) -> None:
    """GB/s of a Numba parallel read of a large array, as the decode kernels read W."""
    import numpy as np
    from numba import njit, prange

    from minicodegen import kernels as K
    from minicodegen.kernels.gemv import _prefetch_ahead

    @njit(parallel=True, fastmath={"reassoc", "contract"})
    def row_sums(x, out):  # same loop shape as the linear kernels: rows in parallel, prefetch ahead
        n = x.shape[1]
        for r in prange(x.shape[0]):
            _prefetch_ahead(x, r, n, 512, 16)
            row = x[r]
            s = np.float32(0.0)
            for i in range(n):
                s += row[i]
            out[r] = s

    K.set_threads(a["threads"])
    x = np.ones((int(a["bytes"]) // 4096, 1024), np.float32)
    out = np.empty(x.shape[0], np.float32)
    row_sums(x, out)
    ts = []
    for _ in range(max(5, a["reps"])):
        t0 = time.perf_counter()
        row_sums(x, out)
        ts.append(time.perf_counter() - t0)
    huge = 0  # bytes of this process's anonymous memory on huge pages: the probe array's share
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                huge = int(line.split()[1]) * 1024
    except OSError:
        pass
    result({"gbps": x.nbytes / median(ts) / 1e9, "gbps_best": x.nbytes / min(ts) / 1e9, "bytes": x.nbytes,
            "huge_fraction": min(1.0, huge / x.nbytes)})


def _weights_read_per_token(weights: dict) -> int:
    """Bytes of weights one decode step reads: all of them, except that the token
    embedding contributes one row (unless it is also the output head)."""
    total = 0
    for name, w in weights.items():
        if name.startswith("transformer.wte.weight"):
            total += w.nbytes // w.shape[0]  # one row (or one scale)
        else:
            total += w.nbytes
    return total


def w_mcg(a: dict) -> None:
    """minicodegen: decode runs (peak RSS read right after them), then prefill runs.

    ``a["mapped"]``: memory-map the .npz (True) or read it into memory (False)."""
    import minicodegen  # noqa: I001 - before numpy: sets OPENBLAS_THREAD_TIMEOUT, read when numpy loads OpenBLAS

    import numpy as np
    from minicodegen import kernels as K
    from minicodegen.model import forward, new_cache

    st0 = proc_status()
    n = K.set_threads(a["threads"])
    # No K.warmup() here: like `python -m minicodegen`, this process loads from the on-disk cache
    # (filled by the compile step of main) only the kernels it calls, in the untimed first runs.
    st_base = proc_status()  # interpreter + numpy + numba, no weights, no kernel loaded yet
    t0 = time.perf_counter()
    model = minicodegen.load(a["npz"], mapped=bool(a["mapped"]))
    model.int8_activations = a.get("int8_activations", "int8")
    model.bf16_activations = a.get("bf16_activations", "float32")
    t_load = time.perf_counter() - t0
    cfg = model.config
    wbytes = sum(w.nbytes for w in model.weights.values())
    prompt = np.array(token_ids(a["prompt_T"], cfg.vocab_size, 1), np.int64)

    def decode(steps: int = a["new_T"]) -> tuple[float, list[int]]:
        cache = new_cache(cfg, 1, a["prompt_T"] + steps + 1)
        tok = int(np.argmax(forward(model, prompt[None], cache=cache, last_only=True)[0, -1]))
        toks = [tok]
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = int(np.argmax(forward(model, [[tok]], cache=cache, last_only=True)[0, -1]))
            toks.append(tok)
        return time.perf_counter() - t0, toks

    progress(f"minicodegen {Path(a['npz']).stem}{' (mapped)' if a['mapped'] else ''}: loaded in {t_load:.2f} s, decoding")
    runs, st_dec = decode_runs(decode, a)
    dec_s = [r[0] for r in runs]

    long = np.array(token_ids(a["prefill_T"], cfg.vocab_size, 2), np.int64)

    def prefill() -> float:
        cache = new_cache(cfg, 1, a["prefill_T"] + 1)
        t0 = time.perf_counter()
        forward(model, long[None], cache=cache, last_only=True)
        return time.perf_counter() - t0

    prefill()
    pre_s = [prefill() for _ in range(a["reps"])]
    progress(f"  prefill {a['prefill_T']} tokens: {median(pre_s):.3f} s")
    extra = {}
    if a.get("generate", True):  # cross-check of the loop: minicodegen.generate end to end, minus a prefill of the prompt
        t0 = time.perf_counter()
        minicodegen.generate(model, prompt.tolist(), max_new_tokens=a["new_T"] + 1)
        t1 = time.perf_counter()
        forward(model, prompt[None], cache=new_cache(cfg, 1, a["prompt_T"] + 1), last_only=True)
        extra["generate_tps"] = a["new_T"] / ((t1 - t0) - (time.perf_counter() - t1))
    if a.get("batch", True):
        def run_batch(B: int, n: int) -> tuple[float, int]:  # a batch of id lists: left-padded, run together
            batch = batch_prompts(a, cfg.vocab_size, B)
            t0 = time.perf_counter()
            out = minicodegen.generate(model, batch, max_new_tokens=n)
            return time.perf_counter() - t0, sum(len(r) for r in out)  # a row ends early at EOS

        extra |= _batch_runs(run_batch, a)
    if a.get("scan"):  # decode steps only, B rows at once: what a batch of B costs per step
        for B in a["scan"]:
            cache = new_cache(cfg, B, a["prompt_T"] + 17)
            forward(model, np.array(batch_prompts(a, cfg.vocab_size, B), np.int64), cache=cache, last_only=True)
            tok = np.zeros((B, 1), np.int64)
            forward(model, tok, cache=cache, last_only=True)
            t0 = time.perf_counter()
            for _ in range(15):
                tok = forward(model, tok, cache=cache, last_only=True)[:, -1].argmax(-1)[:, None]
            extra[f"scan_{B}"] = [B * 15 / (time.perf_counter() - t0)]
        progress("  decode steps of B rows (tok/s): " + ", ".join(f"{B}: {extra[f'scan_{B}'][0]:.1f}" for B in a["scan"]))
    result({
        **extra,
        "threads": n, "mapped": bool(a["mapped"]), "load_s": t_load, "weight_bytes": wbytes,
        "read_per_token": _weights_read_per_token(model.weights),
        "decode_runs_s": dec_s, "decode_tps": a["new_T"] / median(dec_s), "tokens": runs[0][1],
        "prefill_runs_s": pre_s, "prefill_s": median(pre_s),
        "rss_start": st0.get("VmRSS", 0), "rss_base": st_base.get("VmRSS", 0),
        "peak_rss": st_dec.get("VmHWM", 0), "rss_anon": st_dec.get("RssAnon", 0), "rss_file": st_dec.get("RssFile", 0),
    })  # fmt: skip


def w_hf(a: dict) -> None:
    """transformers (torch fp32): decode runs (peak RSS read right after them), then prefill runs."""
    import torch

    st0 = proc_status()
    torch.set_num_threads(a["threads"])
    from transformers import CodeGenForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    st_base = proc_status()
    t0 = time.perf_counter()
    model = CodeGenForCausalLM.from_pretrained(a["hf_dir"], dtype=torch.float32).eval()
    t_load = time.perf_counter() - t0
    cfg = model.config
    wbytes = sum(p.nbytes for p in model.parameters())
    prompt = torch.tensor([token_ids(a["prompt_T"], cfg.vocab_size, 1)])

    @torch.inference_mode()
    def decode(steps: int = a["new_T"]) -> tuple[float, list[int]]:
        out = model(prompt, use_cache=True, logits_to_keep=1)
        pkv, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        toks = [int(tok)]
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(tok, past_key_values=pkv, use_cache=True, logits_to_keep=1)
            pkv, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            toks.append(int(tok))
        return time.perf_counter() - t0, toks

    progress(f"transformers: loaded in {t_load:.2f} s, decoding (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')})")
    runs, st_dec = decode_runs(decode, a)
    dec_s = [r[0] for r in runs]

    long = torch.tensor([token_ids(a["prefill_T"], cfg.vocab_size, 2)])

    @torch.inference_mode()
    def prefill() -> float:
        t0 = time.perf_counter()
        model(long, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0

    prefill()
    pre_s = [prefill() for _ in range(a["reps"])]
    progress(f"  prefill {a['prefill_T']} tokens: {median(pre_s):.3f} s")

    @torch.inference_mode()
    def gen() -> float:  # cross-check of the loop: generate() end to end, minus a prefill of the prompt
        t0 = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=a["new_T"] + 1,
                       min_new_tokens=a["new_T"] + 1, do_sample=False, pad_token_id=cfg.eos_token_id)
        t1 = time.perf_counter()
        model(prompt, use_cache=True, logits_to_keep=1)
        return (t1 - t0) - (time.perf_counter() - t1)

    extra = {"generate_tps": a["new_T"] / gen()} if a.get("generate", True) else {}  # one run: the model is warm
    if a.get("batch", True):
        @torch.inference_mode()
        def run_batch(B: int, n: int) -> tuple[float, int]:
            batch = batch_prompts(a, cfg.vocab_size, B)
            T = max(len(p) for p in batch)
            ids = torch.full((len(batch), T), cfg.eos_token_id, dtype=torch.long)  # left padding
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for b, p in enumerate(batch):
                ids[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=cfg.eos_token_id)
            return time.perf_counter() - t0, int(out.shape[0] * (out.shape[1] - T))

        extra |= _batch_runs(run_batch, a)
    result({
        "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "load_s": t_load, "weight_bytes": wbytes,
        "decode_runs_s": dec_s, "decode_tps": a["new_T"] / median(dec_s), "tokens": runs[0][1],
        **extra,
        "prefill_runs_s": pre_s, "prefill_s": median(pre_s),
        "rss_start": st0.get("VmRSS", 0), "rss_base": st_base.get("VmRSS", 0),
        "peak_rss": st_dec.get("VmHWM", 0), "rss_anon": st_dec.get("RssAnon", 0), "rss_file": st_dec.get("RssFile", 0),
    })  # fmt: skip


def w_ct2convert(a: dict) -> None:
    """The transformers checkpoint converted to CTranslate2 once per quantization (<work>/ct2-<dtype>).

    The checkpoint has no tokenizer files (``w_build`` writes the model only, and the smoke shape's
    1024-token vocabulary fits no real tokenizer), so the converter is given a stand-in tokenizer
    whose vocabulary is the ids written in decimal: CTranslate2's token ``str(i)`` is id ``i``."""
    from ctranslate2.converters import TransformersConverter

    work = Path(a["work"])
    hf = json.loads((work / "hf" / "config.json").read_text())
    eos = str(hf["eos_token_id"])

    class IdVocabulary:  # what CodeGen's conversion reads of a tokenizer
        bos_token = eos_token = unk_token = eos

        @staticmethod
        def get_vocab() -> dict[str, int]:
            return {str(i): i for i in range(hf["vocab_size"])}

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return IdVocabulary()

    out = {}
    for dt in a["dtypes"]:
        t0 = time.perf_counter()
        tmp, dst = work / f"ct2-{dt}.tmp", work / f"ct2-{dt}"
        Converter(str(work / "hf")).convert(str(tmp), quantization=dt, force=True)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        out[dt] = time.perf_counter() - t0
    result({"convert_s": out})


def w_ct2(a: dict) -> None:
    """CTranslate2: decode runs (peak RSS read right after them), prefill runs, batch runs.

    Tokens are strings of the converted vocabulary (``str(id)``, see ``w_ct2convert``); greedy is
    ``beam_size=1, sampling_topk=1``.  What is timed:

    * decode: ``generate_batch([prompt], max_length=N+1, min_length=N+1,
      include_prompt_in_result=False, callback=...)``; the callback runs after every new token, so
      the time from its first call to its last is that of N single-token steps with the KV cache
      (the prompt and the first token excluded), as the other engines' decode figure;
    * prefill: ``generate_batch([512 tokens], max_length=1, include_prompt_in_result=False)``, the
      time to the first new token.  With ``include_prompt_in_result=False`` CTranslate2 forwards the
      first 511 tokens at once into the KV cache (no output layer), then one decoding step on the
      last token gives the logits of the last position only, as the other engines' prefill.
      ``forward_batch([512 tokens])`` is not used: it returns the logits of all 512 positions
      (512 x vocab through the output layer, no cache); it is timed once in the first round, for
      comparison only (``forward_batch_s``);
    * batch: ``generate_batch(8 prompts, max_length=64, min_length=64,
      include_prompt_in_result=False)`` end to end (``min_length``: no row ends early at EOS).
    """
    import ctranslate2

    st0 = proc_status()
    st_base = proc_status()  # ctranslate2 imported, no model loaded
    t0 = time.perf_counter()
    gen = ctranslate2.Generator(a["model_dir"], device="cpu", compute_type=a["compute_type"],
                                intra_threads=a["threads"], inter_threads=1)
    t_load = time.perf_counter() - t0
    V = a["vocab_size"]
    prompt = [str(i) for i in token_ids(a["prompt_T"], V, 1)]
    greedy = dict(beam_size=1, sampling_topk=1, include_prompt_in_result=False)

    def decode(steps: int = a["new_T"]) -> tuple[float, list[int]]:
        stamps: list[float] = []

        def on_token(step) -> bool:  # called after each new token; False: go on
            stamps.append(time.perf_counter())
            return False

        r = gen.generate_batch([prompt], max_length=steps + 1, min_length=steps + 1, callback=on_token, **greedy)
        toks = list(r[0].sequences_ids[0])
        assert len(toks) == len(stamps) == steps + 1, (len(toks), len(stamps))
        return stamps[-1] - stamps[0], toks

    progress(f"CTranslate2 {a['compute_type']} (compute type {gen.compute_type}): loaded in {t_load:.2f} s, decoding")
    runs, st_dec = decode_runs(decode, a)
    dec_s = [r[0] for r in runs]

    long = [str(i) for i in token_ids(a["prefill_T"], V, 2)]

    def prefill() -> float:
        t0 = time.perf_counter()
        gen.generate_batch([long], max_length=1, **greedy)
        return time.perf_counter() - t0

    prefill()
    pre_s = [prefill() for _ in range(a["reps"])]
    progress(f"  prefill {a['prefill_T']} tokens: {median(pre_s):.3f} s")
    extra: dict = {}
    if a.get("generate", True):
        # cross-check of the decode figure: generate_batch end to end without a callback, minus a prefill of the prompt
        t0 = time.perf_counter()
        gen.generate_batch([prompt], max_length=a["new_T"] + 1, min_length=a["new_T"] + 1, **greedy)
        t1 = time.perf_counter()
        gen.generate_batch([prompt], max_length=1, **greedy)
        extra["generate_tps"] = a["new_T"] / ((t1 - t0) - (time.perf_counter() - t1))
        gen.forward_batch([long])
        t0 = time.perf_counter()
        gen.forward_batch([long])
        extra["forward_batch_s"] = time.perf_counter() - t0
    if a.get("batch", True):
        def run_batch(B: int, n: int) -> tuple[float, int]:
            batch = [[str(i) for i in p] for p in batch_prompts(a, V, B)]
            t0 = time.perf_counter()
            out = gen.generate_batch(batch, max_length=n, min_length=n, **greedy)
            return time.perf_counter() - t0, sum(len(r.sequences_ids[0]) for r in out)

        extra |= _batch_runs(run_batch, a)
    result({
        **extra,
        "compute_type": gen.compute_type, "load_s": t_load,
        "weight_bytes": (Path(a["model_dir"]) / "model.bin").stat().st_size,
        "decode_runs_s": dec_s, "decode_tps": a["new_T"] / median(dec_s), "tokens": runs[0][1],
        "prefill_runs_s": pre_s, "prefill_s": median(pre_s),
        "rss_start": st0.get("VmRSS", 0), "rss_base": st_base.get("VmRSS", 0),
        "peak_rss": st_dec.get("VmHWM", 0), "rss_anon": st_dec.get("RssAnon", 0), "rss_file": st_dec.get("RssFile", 0),
    })  # fmt: skip


def w_agree(a: dict) -> None:
    """Greedy agreement and logit differences of bf16 / int8 against fp32 (and fp32 against
    the NumPy definition and transformers)."""
    import numpy as np

    import minicodegen
    from minicodegen import kernels as K
    from minicodegen.model import forward, new_cache

    K.set_threads(a["threads"])
    work = Path(a["work"])
    models = {dt: minicodegen.load(work / f"{dt}.npz") for dt in DTYPES}
    models["int8-float"] = minicodegen.load(work / "int8.npz")
    models["int8-float"].int8_activations = "float32"
    models["bf16-bf16"] = minicodegen.load(work / "bfloat16.npz", bf16_activations="bf16")
    cfg = models["float32"].config
    prompt = np.array(token_ids(a["prompt_T"], cfg.vocab_size, 1), np.int64)
    P, N = len(prompt), a["new_T"]

    def greedy(m) -> list[int]:
        cache = new_cache(cfg, 1, P + N + 1)
        tok = int(np.argmax(forward(m, prompt[None], cache=cache, last_only=True)[0, -1]))
        toks = [tok]
        for _ in range(N - 1):
            tok = int(np.argmax(forward(m, [[tok]], cache=cache, last_only=True)[0, -1]))
            toks.append(tok)
        return toks

    ref = greedy(models["float32"])
    seq = np.concatenate([prompt, np.array(ref[:-1], np.int64)])  # prompt + the fp32 tokens fed back
    ref_logits = forward(models["float32"], prompt[None])[0]
    out: dict = {"ref_tokens": ref, "distinct_ref_tokens": len(set(ref)),
                 "ref_logit_absmax": float(np.abs(ref_logits).max())}
    for dt in [*DTYPES, *EXTRA]:
        m = models[dt]
        toks = ref if dt == "float32" else greedy(m)
        prefix = next((i for i, (x, y) in enumerate(zip(toks, ref)) if x != y), N)
        tf = np.argmax(forward(m, seq[None])[0, P - 1:], axis=-1)  # [N] argmax after each fed prefix
        lg = forward(m, prompt[None])[0]
        top2 = np.sort(lg, axis=-1)[:, -2:]
        out[dt] = {
            "prefix": prefix, "teacher_forced": int((tf == np.array(ref)).sum()),
            "max_dlogit": float(np.abs(lg - ref_logits).max()),
            "median_top2_margin": float(np.median(top2[:, 1] - top2[:, 0])),
        }
    slow = minicodegen.load(work / "float32.npz", fast=False)
    out["fp32_fast_vs_numpy"] = float(np.abs(forward(slow, prompt[None])[0] - ref_logits).max())
    if a.get("torch"):
        import torch
        from transformers import CodeGenForCausalLM

        torch.set_num_threads(a["threads"])
        hf = CodeGenForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).eval()
        with torch.inference_mode():
            hl = hf(torch.from_numpy(prompt)[None]).logits[0].numpy()
        out["fp32_vs_transformers"] = float(np.abs(hl - ref_logits).max())
    result(out)


WORKERS = {"build": w_build, "convert": w_convert, "compile": w_compile, "memrate": w_memrate, "mcg": w_mcg, "hf": w_hf,
           "ct2convert": w_ct2convert, "ct2": w_ct2, "agree": w_agree}


def cpu_jiffies() -> tuple[int, int]:
    """(busy, steal) clock ticks of all CPUs since boot, from /proc/stat (0, 0 if unreadable)."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)  # user nice system irq softirq steal
    return busy, (f[7] if len(f) > 7 else 0)


def run_worker(kind: str, args: dict, threads: int, extra_env: dict | None = None) -> dict:
    """Runs one worker in a fresh interpreter with every thread pool sized to ``threads``;
    ``extra_env`` values override the environment, a None value removes the variable."""
    env = dict(os.environ)
    for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[v] = str(threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for k, v in (extra_env or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(args)]
    import resource

    ru0, (busy0, steal0), t0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_jiffies(), time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)  # stderr: progress, passed through
    ru1, (busy1, steal1), wall = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_jiffies(), time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(p.stdout[-4000:])
        raise SystemExit(f"bench: worker {kind!r} failed (exit {p.returncode})")
    out = json.loads(lines[-1][len("RESULT "):])
    # what else ran meanwhile: CPU time of all processes minus the worker's, in cores on average
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    mine = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    out["other_cores"] = max(0.0, ((busy1 - busy0) / hz - mine) / wall)
    out["steal"] = (steal1 - steal0) / hz / wall / (os.cpu_count() or 1)
    return out


# ----------------------------------------------------------------------------- machine


def machine() -> dict:
    info: dict = {"cpu": platform.processor() or "?", "flags": "", "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name":
                info["cpu"] = v
            elif k == "flags" and not info["flags"]:
                fl = set(v.split())
                info["flags"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in fl)
            elif k == "cache size":
                info["cache"] = v
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_gib"] = int(mem[1]) / 2**20
    except (OSError, IndexError, ValueError):
        info["mem_gib"] = 0.0
    info["load"] = os.getloadavg()
    vers = []
    for pkg in ("numpy", "numba", "torch", "transformers", "ctranslate2"):
        try:
            vers.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = ", ".join(vers)
    info["python"] = platform.python_version()
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy: no dicts mode
        info["blas"] = "?"
    return info


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per figure (median; default 5)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="split the runs over this many rounds in alternating order (default 2)")
    ap.add_argument("--2b", dest="two_b", action="store_true", help="the 2B shape instead of 350M")
    ap.add_argument("--smoke", action="store_true", help="tiny shape and sizes: checks that everything runs")
    ap.add_argument("--no-torch", action="store_true", help="skip transformers (both OpenMP configurations)")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 (measured if ctranslate2 is installed)")
    ap.add_argument("--workdir", default=None, help="where the checkpoints go (default: $TMPDIR/minicodegen-bench-<shape>)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the checkpoints even if present")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        WORKERS[args.worker[0]](json.loads(args.worker[1]))
        return
    shape = "smoke" if args.smoke else ("2B" if args.two_b else "350M")
    sizes = (dict(prefill_T=64, prompt_T=8, new_T=16, batch_Bs=[2, 8], batch_new_T=16, scan=[1, 2, 4]) if args.smoke
             else dict(prefill_T=512, prompt_T=32, new_T=128, batch_Bs=[8, 32], batch_new_T=64, scan=list(SCAN)))
    reps = 2 if args.smoke else max(1, args.reps)
    mem_bytes = 64 << 20 if args.smoke else 1 << 30
    th = args.threads
    has_torch = not args.no_torch and all(_installed(p) for p in ("torch", "transformers"))
    has_ct2 = not args.no_ct2 and _installed("ctranslate2")
    work = Path(args.workdir or Path(tempfile.gettempdir()) / f"minicodegen-bench-{shape}")
    t_start = time.perf_counter()

    m = machine()
    n_rounds = max(1, min(args.rounds, reps))
    print(f"# minicodegen benchmark: CodeGen-{shape} shape (random weights), {th} threads, median of "
          f"{-(-reps // n_rounds) * n_rounds} runs in {n_rounds} round(s)")
    print(f"machine: {m['cpu']} ({m['flags']}), {m['cores']} cores, {m['mem_gib']:.0f} GiB, cache {m.get('cache', '?')}")
    print(f"load average at start: {m['load'][0]:.2f} {m['load'][1]:.2f} {m['load'][2]:.2f}")
    print(f"software: Python {m['python']}, {m['versions']}; numpy BLAS: {m['blas']}")
    if not has_torch:
        print("transformers / torch: not measured" + (" (--no-torch)" if args.no_torch else " (not installed)"))
    if not has_ct2:
        print("CTranslate2: not measured" + (" (--no-ct2)" if args.no_ct2 else
                                             " (ctranslate2 not installed: pip install ctranslate2, or .[bench])"))

    # 1. checkpoints -----------------------------------------------------------------
    stamp = work / "stamp.json"
    want = json.dumps(hf_config(shape), sort_keys=True)
    if args.rebuild or not stamp.exists() or stamp.read_text() != want:
        if not _installed("torch") or not _installed("transformers"):
            raise SystemExit("bench: building the checkpoint needs torch and transformers")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        r = run_worker("build", {"work": str(work), "shape": shape}, th)
        stamp.write_text(want)
        print(f"checkpoint: built in {r['build_s']:.1f} s, converted to fp32/bf16/int8 in {r['convert_s']:.1f} s ({work})")
    else:
        print(f"checkpoint: reusing {work} (--rebuild to rebuild)")
    for dt in DTYPES:  # (a dtype added since the checkpoint was built)
        if not (work / f"{dt}.npz").exists():
            run_worker("convert", {"work": str(work), "dtype": dt}, th)
            print(f"checkpoint: converted to {dt} ({work / f'{dt}.npz'})")
    sizes_on_disk = {dt: (work / f"{dt}.npz").stat().st_size for dt in DTYPES}
    if has_ct2:
        todo = [c["dtype"] for c in CT2_CONFIGS.values() if not (work / f"ct2-{c['dtype']}" / "model.bin").exists()]
        if todo and not (_installed("torch") and _installed("transformers")):
            has_ct2 = False
            print("CTranslate2: not measured (its conversion reads the checkpoint with torch and transformers)")
        elif todo:
            r = run_worker("ct2convert", {"work": str(work), "dtypes": todo}, th)
            print("CTranslate2: converted with TransformersConverter, "
                  + ", ".join(f"quantization={dt} in {t:.1f} s" for dt, t in r["convert_s"].items()))
        else:
            print(f"CTranslate2: reusing {', '.join(str(work / k) for k in CT2_CONFIGS)}")

    # 2. compile time ----------------------------------------------------------------
    if args.smoke:  # (compiling every kernel into an empty cache takes minutes: not for a smoke run)
        c1 = None
        run_worker("compile", {"threads": th}, th)
        c2 = run_worker("compile", {"threads": th}, th)
        print(f"kernels.warmup(): first run not measured (--smoke); later runs (on-disk cache) {c2['warmup_s']:.2f} s; "
              f"import minicodegen.kernels {c2['import_s']:.2f} s")
    else:
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as d:
            c1 = run_worker("compile", {"threads": th}, th, {"NUMBA_CACHE_DIR": d})
            c2 = run_worker("compile", {"threads": th}, th, {"NUMBA_CACHE_DIR": d})
        print(f"kernels.warmup(): first run (empty cache, compiles) {c1['warmup_s']:.1f} s; "
              f"later runs (on-disk cache) {c2['warmup_s']:.2f} s; import minicodegen.kernels {c2['import_s']:.2f} s")
        run_worker("compile", {"threads": th}, th)  # the default cache too: the runs below only load kernels

    # 3-4. memory read rate and speed, one subprocess per configuration, in rounds ------------
    # The machine is shared: load from other processes comes and goes.  So the runs of each
    # configuration are split over --rounds rounds run in alternating order (A B C D, D C B A, ...),
    # and the memory-read rate is measured at the start of every round; figures are medians over
    # all runs of all rounds.
    rounds = max(1, min(args.rounds, reps))
    per_round = -(-reps // rounds)
    common = {"threads": th, "reps": per_round, **sizes}
    # torch twice: its default OpenMP environment (spinning workers: faster on a quiet machine;
    # nothing inherited from this process's environment) and OMP_WAIT_POLICY=PASSIVE (sleeping
    # workers); the ratios use the better of the two per figure (see the module docstring).
    torch_env = {k: {"OMP_WAIT_POLICY": c["omp"], "GOMP_SPINCOUNT": None} for k, c in TORCH_CONFIGS.items()}
    order = (list(TORCH_CONFIGS) if has_torch else []) + (list(CT2_CONFIGS) if has_ct2 else []) + list(MCG_CONFIGS)
    # CTranslate2 with its default OpenMP environment too (nothing inherited from this process's)
    ct2_env = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    res: dict[str, dict] = {}
    rates: list[dict] = []
    for rnd in range(rounds):
        rates.append(run_worker("memrate", {"threads": th, "bytes": mem_bytes, "reps": 5}, th))
        print(f"\nround {rnd + 1}/{rounds}: memory read rate {rates[-1]['gbps']:.1f} GB/s (Numba parallel row sums "
              f"over {rates[-1]['bytes'] / 1e9:.2f} GB, {th} threads, {100 * rates[-1].get('huge_fraction', 0):.0f}% of it "
              f"on huge pages); load average {os.getloadavg()[0]:.2f}", flush=True)
        for key in order if rnd % 2 == 0 else order[::-1]:
            # the batch figures: not for the mapped rows (the same arithmetic as in memory); the decode
            # steps of B rows for minicodegen's in-memory rows; transformers batches of 8 only (time)
            # (nor for bf16 activations: they change only the prompt)
            mapped = MCG_CONFIGS.get(key, {}).get("mapped", False)
            a = {**common, "generate": rnd == 0, "batch": not mapped and key != "bf16-bf16",
                 "scan": sizes["scan"] if key in MCG_CONFIGS and not mapped and key != "bf16-bf16" else None}
            if key in TORCH_CONFIGS:
                r = run_worker("hf", {**a, "hf_dir": str(work / "hf"), "batch_Bs": sizes["batch_Bs"][:1]}, th,
                               torch_env[key])
            elif key in CT2_CONFIGS:
                c = CT2_CONFIGS[key]
                r = run_worker("ct2", {**a, "model_dir": str(work / key), "compute_type": c["compute_type"],
                                       "vocab_size": SHAPES[shape]["vocab_size"]}, th, ct2_env)
            else:
                c = MCG_CONFIGS[key]
                r = run_worker("mcg", {**a, "npz": str(work / f"{c['dtype']}.npz"), "mapped": c["mapped"],
                                       "int8_activations": c.get("int8_activations", "int8"),
                                       "bf16_activations": c.get("bf16_activations", "float32")}, th)
            res[key] = _merge(res.get(key), r, sizes)
    # Once more at the end: on a busy host the rate at a round's start can be well below what the
    # decode runs of the same round then read (a bound below the figures it bounds).
    rates.append(run_worker("memrate", {"threads": th, "bytes": mem_bytes, "reps": 5}, th))
    print(f"\nafter the last round: memory read rate {rates[-1]['gbps']:.1f} GB/s", flush=True)
    mr = {"gbps": max(r["gbps"] for r in rates), "gbps_median": median([r["gbps"] for r in rates]),
          "all": [r["gbps"] for r in rates], "bytes": rates[0]["bytes"]}
    print(f"\nmemory read rate: best {mr['gbps']:.1f} GB/s at the start of each of the {rounds} rounds and at the end "
          f"({', '.join(f'{g:.1f}' for g in mr['all'])}); the bandwidth bound below uses the best")
    for key in order:
        _print_run(label_of(key), res[key], sizes)

    # 5. agreement ---------------------------------------------------------------------
    ag = run_worker("agree", {"work": str(work), "threads": th, "torch": has_torch, **sizes}, th)
    N = sizes["new_T"]
    print(f"\nagreement with fp32 over {N} greedy tokens after a {sizes['prompt_T']}-token prompt "
          f"(fp32 greedy run: {ag['distinct_ref_tokens']} distinct tokens; max |fp32 logit| {ag['ref_logit_absmax']:.3g}):")
    for dt in [*DTYPES[1:], *EXTRA]:
        g = ag[dt]
        print(f"  {SHORT.get(dt) or label_of(dt).removeprefix('minicodegen ')}: identical prefix {g['prefix']}/{N}; teacher-forced argmax agreement "
              f"{g['teacher_forced']}/{N} ({100 * g['teacher_forced'] / N:.1f}%); max |Δlogits| on the prompt "
              f"{g['max_dlogit']:.3g} (median top-2 logit margin {g['median_top2_margin']:.3g})")
    print(f"  fp32 teacher-forced self-check {ag['float32']['teacher_forced']}/{N}; "
          f"fp32 kernels vs NumPy definition max |Δlogits| {ag['fp32_fast_vs_numpy']:.2g}"
          + (f"; fp32 vs transformers {ag['fp32_vs_transformers']:.2g}" if "fp32_vs_transformers" in ag else ""))
    if has_torch:
        a, b = res["float32"]["tokens"], res["torch"]["tokens"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"  greedy tokens, minicodegen fp32 vs transformers fp32: identical prefix {same}/{len(a)}")
    for key, other in (("ct2-float32", "float32"), ("ct2-int8", "ct2-float32"), ("ct2-int8", "int8")):
        if key in res and other in res:
            a, b = res[key]["tokens"], res[other]["tokens"]
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  greedy tokens, {label_of(key)} vs {label_of(other)}: identical prefix {same}/{len(a)}")
    for key, twin in [*((f"{dt}-mapped", dt) for dt in DTYPES), *([("torch-passive", "torch")] if has_torch else [])]:
        if res[key]["tokens"] != res[twin]["tokens"]:  # same weights, same arithmetic: must not differ
            print(f"  WARNING: {label_of(key)} greedy tokens differ from {label_of(twin)}'s")

    # 6. summary -------------------------------------------------------------------------
    _summary(m, shape, th, rounds, sizes, res, mr, c1, c2, ag, sizes_on_disk, has_torch, has_ct2)
    print(f"\n(benchmark took {time.perf_counter() - t_start:.0f} s; load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")


def label_of(key: str) -> str:
    return (TORCH_CONFIGS.get(key) or CT2_CONFIGS.get(key) or MCG_CONFIGS[key])["label"]


def torch_ref(res: dict, field: str, higher: bool) -> tuple[str, float] | None:
    """The better transformers configuration for one figure: (key, value), None without torch."""
    got = [(k, res[k][field]) for k in TORCH_CONFIGS if k in res]
    if not got:
        return None
    return (max if higher else min)(got, key=lambda kv: kv[1])


def _installed(pkg: str) -> bool:
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


def _merge(old: dict | None, new: dict, sizes: dict) -> dict:
    """Results of one configuration over rounds: runs pooled, medians recomputed, peak RSS the max."""
    if old is None:
        out = dict(new)
        out["other_cores_all"] = [new["other_cores"]]
    else:
        out = dict(old)
        out["decode_runs_s"] = old["decode_runs_s"] + new["decode_runs_s"]
        out["prefill_runs_s"] = old["prefill_runs_s"] + new["prefill_runs_s"]
        out["peak_rss"] = max(old["peak_rss"], new["peak_rss"])
        out["other_cores_all"] = old["other_cores_all"] + [new["other_cores"]]
    out["decode_tps"] = sizes["new_T"] / median(out["decode_runs_s"])
    out["decode_tps_best"] = sizes["new_T"] / min(out["decode_runs_s"])
    out["prefill_s"] = median(out["prefill_runs_s"])
    out["prefill_best"] = min(out["prefill_runs_s"])
    for B in sizes["batch_Bs"]:
        if f"batch_runs_s_{B}" in new:
            if old is not None and f"batch_runs_s_{B}" in old:
                out[f"batch_runs_s_{B}"] = old[f"batch_runs_s_{B}"] + new[f"batch_runs_s_{B}"]
                out[f"batch_tokens_{B}"] = min(old[f"batch_tokens_{B}"], new[f"batch_tokens_{B}"])
            out[f"batch_tps_{B}"] = out[f"batch_tokens_{B}"] / median(out[f"batch_runs_s_{B}"])
    for B in sizes["scan"]:
        if old is not None and f"scan_{B}" in old and f"scan_{B}" in new:
            out[f"scan_{B}"] = old[f"scan_{B}"] + new[f"scan_{B}"]
    return out


def _print_run(label: str, r: dict, sizes: dict) -> None:
    d = r["decode_runs_s"]
    print(f"\n{label}: decode {r['decode_tps']:.2f} tok/s (median of {len(d)}; best {r['decode_tps_best']:.2f}; "
          f"{sizes['new_T']} tokens in {min(d):.2f}..{max(d):.2f} s per run); prefill {sizes['prefill_T']} tokens "
          f"{r['prefill_s']:.3f} s (median of {len(r['prefill_runs_s'])}; {min(r['prefill_runs_s']):.3f}..{max(r['prefill_runs_s']):.3f})")
    print(f"  peak RSS while decoding {mib(r['peak_rss'])} MiB (anon {mib(r['rss_anon'])} + file {mib(r['rss_file'])} at end), "
          f"weights in use {mib(r['weight_bytes'])} MiB -> ratio {r['peak_rss'] / r['weight_bytes']:.2f}; "
          f"RSS before loading weights {mib(r['rss_base'])} MiB; load {r['load_s']:.2f} s")
    print(f"  other processes used {', '.join(f'{c:.2f}' for c in r['other_cores_all'])} cores on average "
          f"while this configuration ran (per round; {os.cpu_count()} cores in all)")
    if "generate_tps" in r:
        print(f"  cross-check: generate() of {sizes['new_T'] + 1} new tokens minus one prefill of the prompt: "
              f"{r['generate_tps']:.2f} tok/s" + (f"; torch OMP_WAIT_POLICY {r['omp_wait_policy']}" if "omp_wait_policy" in r else "")
              + (f"; CTranslate2 compute type {r['compute_type']}" if "compute_type" in r else ""))
    if "forward_batch_s" in r:
        print(f"  for comparison: forward_batch of the {sizes['prefill_T']}-token prompt (logits of every position, "
              f"no cache) {r['forward_batch_s']:.3f} s, once")
    for B in sizes["batch_Bs"]:
        if f"batch_tps_{B}" in r:
            b, tok = r[f"batch_runs_s_{B}"], r[f"batch_tokens_{B}"]
            full = B * sizes["batch_new_T"]
            print(f"  batch of {B} prompts x {sizes['batch_new_T']} new tokens: {r[f'batch_tps_{B}']:.2f} new tok/s "
                  f"(median of {len(b)}; {tok} new tokens in {min(b):.2f}..{max(b):.2f} s per run"
                  + (f"; rows ended at EOS: {full - tok} tokens fewer" if tok < full else "") + ")")
    if f"scan_{sizes['scan'][0]}" in r:
        print("  decode steps of B rows at once (tok/s, median over rounds): "
              + ", ".join(f"B={B} {median(r[f'scan_{B}']):.1f}" for B in sizes["scan"]))


def _summary(m, shape, th, rounds, sizes, res, mr, c1, c2, ag, disk, has_torch, has_ct2) -> None:
    N, P, L = sizes["new_T"], sizes["prompt_T"], sizes["prefill_T"]
    BS, BN = sizes["batch_Bs"], sizes["batch_new_T"]
    rate = mr["gbps"] * 1e9
    # the reference for every ratio: the better transformers configuration, per figure
    ref = {f: torch_ref(res, f, higher) for f, higher in
           (("decode_tps", True), ("decode_tps_best", True), ("prefill_s", False), ("prefill_best", False),
            (f"batch_tps_{BS[0]}", True))}
    t = ref["decode_tps"] is not None

    def ratio(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}×"

    def dec_x(key: str, best: bool = False) -> float:
        f = "decode_tps_best" if best else "decode_tps"
        return res[key][f] / ref[f][1]

    def pre_x(key: str, best: bool = False) -> float:
        f = "prefill_best" if best else "prefill_s"
        return res[key][f] / ref[f][1]

    def short_omp(key: str) -> str:
        return "default OpenMP" if TORCH_CONFIGS[key]["omp"] is None else f"OMP_WAIT_POLICY={TORCH_CONFIGS[key]['omp']}"

    print("\n## Performance\n")
    print(f"CodeGen-{shape} shape (random weights built with transformers, converted by `minicodegen.npz.convert`), "
          f"{th} threads for every engine, median of {len(res[DTYPES[0]]['decode_runs_s'])} runs in {rounds} rounds of alternating order (`python tools/bench.py{' --2b' if shape == '2B' else ''}"
          f"{' --smoke' if shape == 'smoke' else ''} --threads {th}`).\n")
    print(f"Machine: {m['cpu']} ({m['flags']}), {m['cores']} cores, {m['mem_gib']:.0f} GiB RAM; load average at start "
          f"{m['load'][0]:.2f} (shared machine: compare ratios, not absolute times). "
          f"Python {m['python']}, {m['versions']}; numpy BLAS {m['blas']}.\n")
    print(f"| weights | load (s) | prefill {L} tok (s) | vs transformers | decode (tok/s) | vs transformers | "
          f"bandwidth bound (tok/s) | of bound | peak RSS decoding (MiB) | weights (MiB) | RSS / weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = [k for k in TORCH_CONFIGS if k in res] + [k for k in CT2_CONFIGS if k in res] + list(MCG_CONFIGS)
    for key in keys:
        r = res[key]
        # torch fp32 reads what fp32 reads; CTranslate2 what minicodegen's weights of its dtype read
        dt = (MCG_CONFIGS.get(key) or CT2_CONFIGS.get(key) or {}).get("dtype", "float32")
        bound = rate / res[dt]["read_per_token"]
        print(f"| {label_of(key)} | {r['load_s']:.2f} | {r['prefill_s']:.3f} | {ratio(pre_x(key) if t else None)} | "
              f"{r['decode_tps']:.2f} | {ratio(dec_x(key) if t else None)} | "
              f"{bound:.1f} | {100 * r['decode_tps'] / bound:.0f}% | {mib(r['peak_rss'])} | {mib(r['weight_bytes'])} | "
              f"{r['peak_rss'] / r['weight_bytes']:.2f} |")
    if t:
        dec = " / ".join(f"{res[k]['decode_tps']:.2f}" for k in TORCH_CONFIGS)
        pre = " / ".join(f"{res[k]['prefill_s']:.3f}" for k in TORCH_CONFIGS)
        print(f"\nRatios are against the better transformers configuration per column: decode "
              f"{short_omp(ref['decode_tps'][0])} ({dec} tok/s with default OpenMP / PASSIVE), prefill "
              f"{short_omp(ref['prefill_s'][0])} ({pre} s).")
    ct2 = any(k in res for k in CT2_CONFIGS)
    print(f"\nPrefill: one forward pass over a {L}-token prompt into an empty KV cache, logits of the last position "
          f"only (transformers: `logits_to_keep=1`, as its `generate` passes"
          + ("; CTranslate2: `generate_batch` with `max_length=1, include_prompt_in_result=False`, the time to the "
             "first new token" if ct2 else "") + f"). Decode: {N} single-token steps with "
          f"the KV cache after a {P}-token prompt, greedy, tokens/s of the steps only. Threads: minicodegen's Numba "
          f"workers spin briefly, then sleep (`GOMP_SPINCOUNT=10000`, set by `minicodegen.kernels`); its OpenBLAS "
          f"workers sleep at once (`OPENBLAS_THREAD_TIMEOUT=4`, set by `import minicodegen` before NumPy); "
          f"transformers is measured with its default OpenMP policy (spinning workers) and with "
          f"`OMP_WAIT_POLICY=PASSIVE`" + (f"; CTranslate2 with its default OpenMP policy, `intra_threads={th}, "
                                          f"inter_threads=1`" if ct2 else "") + ". "
          f"Load: seconds of `minicodegen.load` / `from_pretrained`" + (" / `ctranslate2.Generator`" if ct2 else "")
          + "; the in-memory rows "
          f"read the `.npz` into memory (`mapped=False`: huge pages, faster decode), the mapped rows memory-map it "
          f"(`mapped=True`). Peak RSS: `VmHWM` of a process that loads the weights and decodes (each configuration "
          f"in its own process); mapped weights count as file-backed RSS.")
    print("\nBandwidth bound: a decode step reads every weight once: "
          + ", ".join(f"{SHORT[dt]} {res[dt]['read_per_token'] / 1e6:,.0f} MB" for dt in DTYPES)
          + f" per token (in memory or mapped); the measured memory-read rate is {mr['gbps']:.1f} GB/s (best of the probes at the start of each round and at the end: "
          f"{', '.join(f'{g:.1f}' for g in mr['all'])}; Numba parallel row sums over "
          f"{mr['bytes'] / 1e9:.0f} GB, {th} threads), so at most "
          + " / ".join(f"{rate / res[dt]['read_per_token']:.1f}" for dt in DTYPES)
          + " tok/s for " + " / ".join(SHORT[dt] for dt in DTYPES) + ".")
    print(f"\nAccuracy against fp32 weights (greedy, {N} tokens): "
          + "; ".join(f"{SHORT.get(dt) or label_of(dt).removeprefix('minicodegen ')} identical prefix {ag[dt]['prefix']}/{N}, "
                      f"teacher-forced argmax agreement {100 * ag[dt]['teacher_forced'] / N:.1f}%, max |Δlogits| "
                      f"{ag[dt]['max_dlogit']:.2g}" for dt in [*DTYPES[1:], *EXTRA])
          + f" (max |logit| {ag['ref_logit_absmax']:.2g}; random weights have small top-2 margins, so these "
          f"understate agreement on a trained model). fp32 with the kernels vs the NumPy definition: "
          f"{ag['fp32_fast_vs_numpy']:.1g}"
          + (f"; vs transformers: {ag['fp32_vs_transformers']:.1g}." if "fp32_vs_transformers" in ag else "."))
    first = f"compiles the kernels in {c1['warmup_s']:.0f} s (once per machine, cached on disk)" if c1 else "(not measured)"
    print(f"\nFirst run: `kernels.warmup()` {first}; later runs load them in {c2['warmup_s']:.1f} s. Checkpoint sizes: "
          + ", ".join(f"{SHORT[dt]} {mib(disk[dt])} MiB" for dt in DTYPES) + ".")
    if ct2:
        print("\nCTranslate2: the same checkpoint converted by `ctranslate2.converters.TransformersConverter` with "
              "`quantization=` " + " / ".join(CT2_CONFIGS[k]["compute_type"] for k in CT2_CONFIGS if k in res)
              + ", loaded with the same `compute_type` (CPU compute types in use: "
              + ", ".join(f"{SHORT[CT2_CONFIGS[k]['dtype']]} {res[k]['compute_type']}" for k in CT2_CONFIGS if k in res)
              + "); its weights column is the size of `model.bin`, its bandwidth bound that of minicodegen's weights "
              "of the same dtype.")

    # the engines side by side: ratios against CTranslate2 int8 ("–" without it)
    print("\n### Engines side by side\n")
    c = res.get(CT2_REF)
    print(f"| weights | engine | decode (tok/s) | vs CT2 int8 | prompt {L} tok (s) | vs CT2 int8 | "
          + " | ".join(f"batch {B} × {BN} (new tok/s) | vs CT2 int8" for B in BS) + " |")
    print("|---|---|---:|---:|---:|---:|" + "---:|---:|" * len(BS))
    rows = []
    if t:
        tr = {f: res[ref[f][0]][f] for f in ("decode_tps", "prefill_s")} | {
            f"batch_tps_{BS[0]}": res[ref[f"batch_tps_{BS[0]}"][0]][f"batch_tps_{BS[0]}"]}
        rows.append(("fp32", "transformers", tr))
    rows += [(SHORT[dt], engine, res[key]) for dt in DTYPES
             for engine, key in (("CTranslate2", f"ct2-{dt}"), ("minicodegen", dt)) if key in res]
    rows.append(("int8", "minicodegen, float32 activations", res["int8-float"]))
    rows.append(("bf16", "minicodegen, bf16 activations", res["bf16-bf16"]))

    def batch_cells(r: dict) -> str:
        cells = []
        for B in BS:
            v = r.get(f"batch_tps_{B}")
            cv = c.get(f"batch_tps_{B}") if c else None
            cells.append("–" if v is None else f"{v:.1f}")
            cells.append(ratio(v / cv if v is not None and cv else None))
        return " | ".join(cells)

    for w, engine, r in rows:
        print(f"| {w} | {engine} | {r['decode_tps']:.2f} | {ratio(r['decode_tps'] / c['decode_tps'] if c else None)} | "
              f"{r['prefill_s']:.3f} | {ratio(r['prefill_s'] / c['prefill_s'] if c else None)} | {batch_cells(r)} |")
    print(f"\nDecode and prompt as in the table above (minicodegen: the .npz in memory); batch: one greedy generation "
          f"of B prompts of {P} tokens, {BN} new tokens each, end to end, new tokens/s (minicodegen "
          f"`generate(model, [B id lists], max_new_tokens={BN})`; transformers `generate` on the left-padded batch, "
          f"`min_new_tokens={BN}`, B = {BS[0]} only; CTranslate2 `generate_batch`, `min_length={BN}`). Ratios: decode "
          f"and batch are tok/s ÷ CTranslate2 int8's (above 1: faster), prompt is seconds ÷ CTranslate2 int8's (below "
          f"1: faster). minicodegen int8 multiplies int8 activations (rows quantized on the fly, integer dot products); "
          f"the \"float32 activations\" row is the same weights through the float kernels."
          + (f" transformers: the better OpenMP configuration per column (decode {short_omp(ref['decode_tps'][0])}, "
             f"prompt {short_omp(ref['prefill_s'][0])}, batch {short_omp(ref[f'batch_tps_{BS[0]}'][0])})." if t else "")
          + ("" if c else " CTranslate2 not measured" + ("" if has_ct2 else " (not installed or --no-ct2)") + "."))

    scan = sizes["scan"]
    print(f"\n### Decode steps of a batch\n\nminicodegen, tokens/s of {15} decode steps of B rows at once after B prompts "
          f"of {P} tokens (the steps only; median over the rounds):\n")
    print("| weights | " + " | ".join(f"B = {B}" for B in scan) + " |")
    print("|---|" + "---:|" * len(scan))
    for key in [*DTYPES, *EXTRA]:
        if f"scan_{scan[0]}" in res[key]:
            print(f"| {label_of(key).removeprefix('minicodegen ')} | "
                  + " | ".join(f"{median(res[key][f'scan_{B}']):.1f}" for B in scan) + " |")

    if c and shape != "smoke":
        cf = res.get("ct2-float32")
        print("\nTargets against CTranslate2 (same run, same threads):")
        checks = [
            ("prompt int8 ≤ 1.0× CTranslate2 int8's time", res["int8"]["prefill_s"] / c["prefill_s"], 1.0, False),
            ("batch of 8, int8 ≥ 2× CTranslate2 int8's tok/s", res["int8"][f"batch_tps_{BS[0]}"] / c[f"batch_tps_{BS[0]}"], 2.0, True),
            ("decode int8 ≥ 3× CTranslate2 int8's tok/s", res["int8"]["decode_tps"] / c["decode_tps"], 3.0, True),
            ("prompt bf16 ≤ 0.7× minicodegen fp32's time", res["bfloat16"]["prefill_s"] / res["float32"]["prefill_s"], 0.7, False),
            ("prompt bf16, bf16 activations ≤ 0.7× minicodegen fp32's time",
             res["bf16-bf16"]["prefill_s"] / res["float32"]["prefill_s"], 0.7, False),
        ]
        if cf:
            checks += [("prompt fp32 ≤ 1.0× CTranslate2 fp32's time", res["float32"]["prefill_s"] / cf["prefill_s"], 1.0, False),
                       ("decode fp32 ≥ 1.0× CTranslate2 fp32's tok/s", res["float32"]["decode_tps"] / cf["decode_tps"], 1.0, True)]
        for what, x, goal, higher in checks:
            ok = x >= goal if higher else x <= goal
            miss = (1 - x / goal) if higher else (x / goal - 1)
            print(f"  {what}: {x:.2f}× {'met' if ok else f'MISSED by {100 * miss:.0f}%'}")

    x = res["int4"]["decode_tps"] / res["int8"]["decode_tps"]  # (the smoke run prints it too, to check it exists)
    print(f"\nTarget int4 decode ≥ {INT4_TARGET}× minicodegen int8's tok/s (same run): {x:.2f}× "
          f"{'met' if x >= INT4_TARGET else f'MISSED by {100 * (1 - x / INT4_TARGET):.0f}%'}")

    if t and shape != "smoke":
        print(f"\nTargets against transformers (minicodegen with the .npz in memory, mapped in parentheses; reference: "
              f"decode {short_omp(ref['decode_tps'][0])}, best decode run {short_omp(ref['decode_tps_best'][0])}, "
              f"prefill {short_omp(ref['prefill_s'][0])}, best prefill run {short_omp(ref['prefill_best'][0])}):")
        for dt in DTYPES:
            x, xm, xb = dec_x(dt), dec_x(f"{dt}-mapped"), dec_x(dt, best=True)
            print(f"  decode {SHORT[dt]} ≥ {DECODE_TARGET[dt]}× transformers: {x:.2f}× "
                  f"{'met' if x >= DECODE_TARGET[dt] else f'MISSED by {100 * (1 - x / DECODE_TARGET[dt]):.0f}%'}"
                  f" (mapped: {xm:.2f}×; best run vs best run {xb:.2f}×)")
        for dt in DTYPES:
            x, xm, xb = pre_x(dt), pre_x(f"{dt}-mapped"), pre_x(dt, best=True)
            print(f"  prefill {SHORT[dt]} ≤ {PREFILL_TARGET}× transformers time: {x:.2f}× "
                  f"{'met' if x <= PREFILL_TARGET else f'MISSED by {100 * (x / PREFILL_TARGET - 1):.0f}%'}"
                  f" (mapped: {xm:.2f}×; best vs best {xb:.2f}×)")
        for dt in DTYPES:
            r, rm = res[dt], res[f"{dt}-mapped"]
            x = r["peak_rss"] / r["weight_bytes"]
            print(f"  peak RSS {SHORT[dt]} ≤ {RSS_TARGET}× weights: {x:.2f}× "
                  f"{'met' if x <= RSS_TARGET else f'MISSED by {100 * (x / RSS_TARGET - 1):.0f}%'}"
                  f" (mapped: {rm['peak_rss'] / rm['weight_bytes']:.2f}×; the interpreter, NumPy and Numba "
                  f"take {mib(r['rss_base'])} MiB before any weight or kernel is loaded; (peak - that) / weights = "
                  f"{(r['peak_rss'] - r['rss_base']) / r['weight_bytes']:.2f}, mapped "
                  f"{(rm['peak_rss'] - rm['rss_base']) / rm['weight_bytes']:.2f})")


if __name__ == "__main__":
    main()
