"""Converting a hub-style fp16 ``pytorch_model.bin`` over 4 GiB: time and peak anonymous memory
per dtype.

The file is made the way the hub's CodeGen files are: ``torch.save`` of a state dict of fp16
tensors with the uint8 ``attn.causal_mask`` buffers (and ``attn.masked_bias``) of each layer, at
CodeGen-6B's layer shape (n_embd 4096, n_inner 16384, vocab 51200) with enough layers to pass 4 GiB
(so torch writes it with ZIP64 records).  Each conversion runs in a fresh process, whose resident
anonymous memory (RssAnon: not the pages of the mapped input file) is sampled every 5 ms; the peak
is what the conversion itself holds.  Needs torch.

    python tools/measure_convert.py [--workdir DIR] [--layers 9] [--dtypes float32 bfloat16 int8 int4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
from minicodegen import npz

def anon():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon:")).split()[1]) * 1024

peak = [anon()]
done = threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], anon())
threading.Thread(target=sample, daemon=True).start()
base = anon()
t0 = time.perf_counter()
npz.convert(sys.argv[1], sys.argv[2], sys.argv[3], force=True)
dt = time.perf_counter() - t0
done.set()
print(json.dumps({"seconds": dt, "peak_anon": max(peak[0], anon()), "base_anon": base}))
"""


def write_bin(directory: Path, n_layer: int) -> Path:
    import torch

    E, F, V, H = 4096, 16384, 51200, 16
    cfg = {"model_type": "codegen", "architectures": ["CodeGenForCausalLM"], "vocab_size": V, "n_positions": 2048,
           "n_ctx": 2048, "n_embd": E, "n_layer": n_layer, "n_head": H, "rotary_dim": 64, "n_inner": None,
           "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 50256,
           "tie_word_embeddings": False, "torch_dtype": "float16"}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    sd = {"transformer.wte.weight": w(V, E)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd |= {p + "ln_1.weight": torch.ones(E).half(), p + "ln_1.bias": torch.zeros(E).half(),
               p + "attn.causal_mask": torch.tril(torch.ones(2048, 2048, dtype=torch.uint8)).view(1, 1, 2048, 2048),
               p + "attn.masked_bias": torch.tensor(-1e9).half(),
               p + "attn.qkv_proj.weight": w(3 * E, E), p + "attn.out_proj.weight": w(E, E),
               p + "mlp.fc_in.weight": w(F, E), p + "mlp.fc_in.bias": torch.zeros(F).half(),
               p + "mlp.fc_out.weight": w(E, F), p + "mlp.fc_out.bias": torch.zeros(E).half()}
    sd |= {"transformer.ln_f.weight": torch.ones(E).half(), "transformer.ln_f.bias": torch.zeros(E).half(),
           "lm_head.weight": w(V, E), "lm_head.bias": torch.zeros(V).half()}
    path = directory / "pytorch_model.bin"
    torch.save(sd, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="where the files go (default: a temporary directory)")
    ap.add_argument("--layers", type=int, default=9, help="layers of the 6B shape (9: a 4.46 GB file)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8", "int4"])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        src = Path(d) / "ckpt"
        path = write_bin(src, a.layers)
        size = path.stat().st_size
        print(f"{path}: {size / 2**30:.2f} GiB ({a.layers} layers at the 6B shape, fp16, uint8 causal_mask buffers)")
        print("\n| dtype | seconds | peak anonymous memory | output |")
        print("|---|---:|---:|---:|")
        for dtype in a.dtypes:
            out = Path(d) / f"out-{dtype}.npz"
            r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), dtype], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"measure_convert: {dtype}: {r.stderr[-2000:]}")
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"| {dtype} | {m['seconds']:.1f} | {m['peak_anon'] / 2**20:,.0f} MiB | {out.stat().st_size / 2**30:.2f} GiB |",
                  flush=True)
            out.unlink()


if __name__ == "__main__":
    main()
