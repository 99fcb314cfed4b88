"""The completion server under load: time to first token and tokens/s with 1, 4 and 16 clients.

    python tools/bench.py --no-torch --no-ct2 --reps 1     # once: builds the 350M-shape checkpoints
    python tools/bench_serve.py                            # int8, prompts of 512 tokens, 64 new tokens

It serves the random-weight 350M-shape int8 checkpoint that tools/bench.py builds (with tiny's
tokenizer files added, since the server takes text and token ids alike) with ``python -m
minicodegen serve --max-batch 16`` in a subprocess, warms it up with one request, then for each
number of clients C runs C threads that each send ``--requests`` streamed requests one after the
other: a prompt of ``--prompt-tokens`` random token ids (different for every request), greedy,
``max_tokens`` ``--new-tokens``. It reports, per C:

* time to first token: from sending the request to the first streamed chunk (p50 and p95 over
  all requests), which includes waiting for other prompts' prefills;
* tokens/s: all completion tokens over the round's wall time (every client's), and per request;
* what the server's engine spent (from ``/health``): seconds per prefill, milliseconds per decode
  step, and rows per step.

Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicodegen import npz  # noqa: E402


def served_model(workdir: Path) -> Path:
    """<workdir>/serve-int8.npz: bench.py's int8.npz with tiny's tokenizer files (built once)."""
    out = workdir / "serve-int8.npz"
    if out.exists():
        return out
    src = workdir / "int8.npz"
    if not src.exists():
        sys.exit(f"{src} is missing: run `python tools/bench.py --no-torch --no-ct2 --reps 1` first")
    cfg, weights, _ = npz.read_npz(src)
    _, _, tok = npz.read_npz(ROOT / "minicodegen" / "data" / "tiny.npz")
    meta = json.loads(bytes(np.load(src)["__meta__"]).decode())
    npz.write_npz(out, cfg, weights, tok, meta)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_request(port: int, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first chunk, seconds in all, completion tokens) of one streamed request."""
    body = json.dumps({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    first, tokens = None, 0
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
            first = time.perf_counter() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return first if first is not None else float("nan"), time.perf_counter() - t0, tokens


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/health")
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


def run_clients(port: int, clients: int, requests: int, prompt_tokens: int, new_tokens: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    prompts = [[rng.integers(0, 50000, prompt_tokens).tolist() for _ in range(requests)] for _ in range(clients)]
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for p in prompts[c]:
            res = stream_request(port, p, new_tokens)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    h0 = health(port)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    h = {k: v - h0[k] for k, v in health(port).items() if isinstance(v, (int, float))}
    ttft = np.array([r[0] for r in results])
    tokens = sum(r[2] for r in results)
    per_request = [r[2] / (r[1] - r[0]) for r in results if r[1] > r[0]]
    return {"clients": clients, "requests": len(results), "ttft_p50": float(np.percentile(ttft, 50)),
            "ttft_p95": float(np.percentile(ttft, 95)), "tokens": tokens, "wall": wall,
            "tok_s": tokens / wall, "per_request_tok_s": float(np.median(per_request)),
            "prefill_s": h["prefill_s"] / h["admitted"], "step_ms": 1000 * h["decode_s"] / h["steps"],
            "rows_per_step": (tokens - h["admitted"]) / h["steps"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "minicodegen-bench-350M"))
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=2, help="requests each client sends, one after the other")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16)
    a = ap.parse_args()
    model = served_model(Path(a.workdir))
    port = free_port()
    env = os.environ | {"NUMBA_NUM_THREADS": str(a.threads)}
    server = subprocess.Popen([sys.executable, "-m", "minicodegen", "serve", "--model", str(model), "--port", str(port),
                               "--max-batch", str(a.max_batch)], cwd=ROOT, env=env)  # fmt: skip
    try:
        deadline = time.time() + 600
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.5)
        stream_request(port, list(range(1000, 1000 + a.prompt_tokens)), a.new_tokens)  # warm up: pages, kernels
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
        print(f"# {cpu}, {a.threads} threads, {model.name}, prompts of {a.prompt_tokens} tokens, {a.new_tokens} new "
              f"tokens, {a.requests} requests per client, --max-batch {a.max_batch}")  # fmt: skip
        print("| clients | requests | time to first token p50 (s) | p95 (s) | tokens/s, all clients | tokens/s per request "
              "| prefill (s) | decode step (ms) | rows per step |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, c in enumerate(a.clients):
            r = run_clients(port, c, a.requests, a.prompt_tokens, a.new_tokens, seed=i)
            print(f"| {c} | {r['requests']} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['tok_s']:.1f} | "
                  f"{r['per_request_tok_s']:.1f} | {r['prefill_s']:.2f} | {r['step_ms']:.1f} | {r['rows_per_step']:.1f} |",
                  flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
