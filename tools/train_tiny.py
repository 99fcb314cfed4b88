"""Train minicodegen's offline demo model: a small CodeGen on the Python standard library.

    python tools/train_tiny.py --out /tmp/tiny_train/ckpt2 --steps 1800 --batch-size 4 --lr 2e-3 --threads 1 --val-every 300
    python -m minicodegen convert /tmp/tiny_train/ckpt2 -o minicodegen/data/tiny.npz --dtype int8 --force

(the command that built the shipped model; the defaults are its settings but 2 threads, see
minicodegen/data/TINY.md)

The model has CodeGen's architecture (transformers' ``CodeGenForCausalLM`` is the trainer) and
CodeGen's tokenizer (GPT-2 BPE + the 38 whitespace tokens, the same ids as every CodeGen
checkpoint), so everything minicodegen does with a hub checkpoint it can do with this one, offline
and in a second. It is a demo: a few million parameters trained for an hour on 2 CPU cores writes
Python-looking code, not CodeGen-quality code.

Data
    Every ``.py`` file of the running interpreter's standard library (``sysconfig`` "stdlib"
    path), sorted by relative path, except: ``site-packages``, test code (any path component
    ``test``, ``tests`` or ``idle_test``), ``pydoc_data`` (prose, not code) and the
    machine-specific ``_sysconfigdata*`` / ``config-*`` files. A file is held out for validation
    when ``int(sha256(relative_path)[:8], 16) % 100 < val_percent`` (2 by default): the split
    depends only on the path, so it can be recomputed anywhere (``split_files``).

    Training stream: the training files in path order, each tokenized on its own and followed by
    ``<|endoftext|>``; batches are windows of ``n_positions + 1`` tokens at a random phase per
    epoch, in a shuffled order (both from ``--seed``).

Validation loss (``val_loss``)
    Computed on whole held-out files exactly as ``minicodegen.score`` does: each file's tokens
    (no BOS added) in consecutive non-overlapping windows of ``n_positions`` tokens, the first
    token of each window unscored; the figure is the mean NLL (nats/token) over all scored tokens
    of all held-out files (token-weighted).

Training
    AdamW (betas 0.9/0.95, weight decay on matrices and the embedding only), linear warmup then
    cosine decay to ``--min-lr-ratio`` of the peak, gradient clipping at 1.0, no dropout,
    ``tie_word_embeddings=True`` (``lm_head.weight`` *is* ``transformer.wte.weight``; the file
    keeps ``lm_head.bias``).

    Softmax over the ids the training files use. Most of GPT-2's 50,257 tokens never occur in
    the standard library, and on a CPU the 50k-way output layer is most of the cost. So the rows
    of ``wte`` of the ids that never occur in the training files are zero and stay zero (they
    never get a gradient), and their ``lm_head.bias`` is the constant ``--unseen-bias``: their
    logit is exactly that constant. The loss is computed over the ids that occur plus one
    column ``log(n_unseen) + unseen_bias`` standing for all the others together, which is the
    same number as the full 50,295-way softmax of the saved model, at half the cost. The saved
    model is an ordinary CodeGen checkpoint; nothing about this is needed to use it.

Determinism: same seed, same thread count, same library versions -> same weights.

Output (``--out``): ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer
files ``vocab.json``, ``merges.txt``, ``added_tokens.json``, and ``training.json``: the figures (command,
steps, tokens seen, train and validation loss, wall time, data, held-out files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCAB_DIR = ROOT / "minicodegen" / "data"  # gpt2-vocab.json, gpt2-merges.txt, codegen-added-tokens.json
EOS = 50256
EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}


# ----------------------------------------------------------------------------- data


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(stdlib: Path) -> list[str]:
    """Relative posix paths of the standard library's .py files used as data, sorted."""
    out = []
    for p in stdlib.rglob("*.py"):
        rel = p.relative_to(stdlib)
        parts = rel.parts
        if any(d in EXCLUDED_DIRS or d.startswith("config-") for d in parts[:-1]):
            continue
        if parts[-1].startswith("_sysconfigdata"):
            continue
        if not p.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


def is_held_out(rel: str, val_percent: int = 2) -> bool:
    """The split rule: a hash of the relative path, so it is the same on every machine."""
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 100 < val_percent


def split_files(stdlib: Path | None = None, val_percent: int = 2) -> tuple[list[str], list[str]]:
    """(training files, held-out files), relative paths sorted."""
    files = list_files(stdlib or stdlib_dir())
    return [f for f in files if not is_held_out(f, val_percent)], [f for f in files if is_held_out(f, val_percent)]


def read_source(path: Path) -> str:
    # Plain UTF-8 (every 3.11 stdlib file is); newline="" keeps the text byte-for-byte.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def codegen_tokenizer():
    """transformers' CodeGenTokenizer with CodeGen's vocabulary, merges and 38 added tokens."""
    from transformers import CodeGenTokenizer

    vocab = json.loads((VOCAB_DIR / "gpt2-vocab.json").read_text(encoding="utf-8"))
    lines = (VOCAB_DIR / "gpt2-merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    added = json.loads((VOCAB_DIR / "codegen-added-tokens.json").read_text(encoding="utf-8"))
    tok = CodeGenTokenizer(vocab=vocab, merges=merges)
    tok.add_tokens([t for t, _ in sorted(added.items(), key=lambda kv: kv[1])])
    assert len(tok) == 50295, len(tok)
    return tok


def save_tokenizer_files(out: Path) -> None:
    """CodeGen's hub layout: vocab.json, merges.txt, added_tokens.json (no tokenizer.json: it
    would repeat the same 2 MB inside the shipped file, and minicodegen reads these three)."""
    shutil.copyfile(VOCAB_DIR / "gpt2-vocab.json", out / "vocab.json")
    shutil.copyfile(VOCAB_DIR / "gpt2-merges.txt", out / "merges.txt")
    shutil.copyfile(VOCAB_DIR / "codegen-added-tokens.json", out / "added_tokens.json")


def windows(ids: list[int], n: int) -> list[list[int]]:
    """A file's tokens in consecutive non-overlapping windows of n (as minicodegen.score)."""
    return [ids[s : s + n] for s in range(0, len(ids), n)]


def batches(stream: np.ndarray, T: int, batch_size: int, seed: int):
    """Endless [batch_size, T + 1] int64 arrays: per epoch a random phase, shuffled windows."""
    rng = np.random.default_rng(seed)
    epoch = 0
    while True:
        phase = int(rng.integers(T))
        starts = np.arange(phase, len(stream) - (T + 1) + 1, T)
        starts = starts[rng.permutation(len(starts))]
        for i in range(0, len(starts) - batch_size + 1, batch_size):
            yield epoch, np.stack([stream[s : s + T + 1] for s in starts[i : i + batch_size]])
        epoch += 1


# ----------------------------------------------------------------------------- model


def make_config(args):
    from transformers import CodeGenConfig

    # CodeGenConfig's defaults are a 6B shape: every field is set here.
    return CodeGenConfig(
        vocab_size=50295, n_positions=args.n_positions, n_ctx=args.n_positions, n_embd=args.n_embd,
        n_layer=args.n_layer, n_head=args.n_head, rotary_dim=args.rotary_dim, n_inner=4 * args.n_embd,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, initializer_range=0.02, use_cache=True,
        bos_token_id=EOS, eos_token_id=EOS, tie_word_embeddings=True,
    )  # fmt: skip


def val_loss(model, files: list[list[int]], T: int, max_windows: int | None = None, batch: int = 8) -> tuple[float, int]:
    """Mean NLL over whole files, the minicodegen.score way (full 50,295-way softmax of the model)."""
    import torch
    import torch.nn.functional as F

    ws = [w for ids in files for w in windows(ids, T) if len(w) >= 2]
    if max_windows is not None:
        ws = ws[:max_windows]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        by_len: dict[int, list[list[int]]] = {}
        for w in ws:
            by_len.setdefault(len(w), []).append(w)
        for n, group in sorted(by_len.items()):
            for i in range(0, len(group), batch):
                x = torch.tensor(group[i : i + batch], dtype=torch.long)
                logits = model(input_ids=x, use_cache=False).logits.float()
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
                total += float(nll)
                count += x.shape[0] * (n - 1)
    model.train()
    return total / count, count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (checkpoint + training.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch-size", type=int, default=4, help="windows of n_positions tokens per step")
    ap.add_argument("--micro-batch", type=int, default=2, help="windows per forward/backward (gradient accumulation; same result)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (cosine)")
    ap.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=4, help="a multiple of 4 (CodeGen's mp_num)")
    ap.add_argument("--rotary-dim", type=int, default=16)
    ap.add_argument("--n-positions", type=int, default=512)
    ap.add_argument("--unseen-bias", type=float, default=-10.0, help="lm_head.bias of ids absent from the training files")
    ap.add_argument("--val-percent", type=int, default=2)
    ap.add_argument("--val-every", type=int, default=300, help="steps between quick validations (first --val-windows windows)")
    ap.add_argument("--val-windows", type=int, default=16)
    ap.add_argument("--stdlib", default=None, help="standard library directory (default: this interpreter's)")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm
    from transformers import CodeGenForCausalLM

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in ([os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv)))

    # -- data
    stdlib = Path(args.stdlib) if args.stdlib else stdlib_dir()
    train_files, val_files = split_files(stdlib, args.val_percent)
    tok = codegen_tokenizer()
    train_ids = [tok.encode(read_source(stdlib / f)) for f in train_files]
    val_ids = [tok.encode(read_source(stdlib / f)) for f in val_files]
    stream = np.fromiter((t for ids in train_ids for t in ids + [EOS]), dtype=np.int64)
    T = args.n_positions
    used = np.zeros(50295, bool)
    used[stream] = True
    active = torch.from_numpy(np.flatnonzero(used))
    n_unseen = int((~used).sum())
    remap = torch.full((50295,), -1, dtype=torch.long)
    remap[active] = torch.arange(len(active))
    val_unseen = sum(int((~used[np.asarray(ids)]).sum()) for ids in val_ids)
    t_data = time.time() - t_start
    print(
        f"python {platform.python_version()} stdlib {stdlib}: {len(train_files)} training files "
        f"({len(stream):,} tokens with EOS), {len(val_files)} held-out files ({sum(map(len, val_ids)):,} tokens, "
        f"{val_unseen} of ids absent from training); {len(active):,} ids used, {n_unseen:,} not; data {t_data:.0f}s",
        flush=True,
    )

    # -- model
    config = make_config(args)
    model = CodeGenForCausalLM(config)
    assert model.lm_head.weight is model.transformer.wte.weight, "lm_head is not tied to wte"
    with torch.no_grad():
        model.transformer.wte.weight[torch.from_numpy(~used)] = 0.0
        model.lm_head.bias.zero_()
        model.lm_head.bias[torch.from_numpy(~used)] = args.unseen_bias
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    unseen_col = math.log(n_unseen) + args.unseen_bias if n_unseen else -math.inf

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def train_loss(x: torch.Tensor) -> torch.Tensor:
        h = model.transformer(input_ids=x[:, :-1], use_cache=False).last_hidden_state  # [B, T, E]
        logits = F.linear(h, model.transformer.wte.weight[active], model.lm_head.bias[active])
        logits = torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), unseen_col)], dim=-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), remap[x[:, 1:]].reshape(-1))

    # -- train
    history: list[dict] = []
    losses: list[float] = []
    data = batches(stream, T, args.batch_size, args.seed)
    t_train = time.time()
    bar = tqdm(range(args.steps), desc="train", mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    ema = None
    epoch = 0
    for step in bar:
        epoch, xb = next(data)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for i in range(0, len(xb), args.micro_batch):  # small pieces: the [tokens, ids] logits stay small
            part = torch.from_numpy(xb[i : i + args.micro_batch])
            piece = train_loss(part) * (len(part) / len(xb))
            piece.backward()
            loss += float(piece.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss)
        ema = losses[-1] if ema is None else 0.98 * ema + 0.02 * losses[-1]
        tokps = (step + 1) * args.batch_size * T / (time.time() - t_train)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr_at(step):.1e}", ep=epoch, tok_s=f"{tokps:.0f}", refresh=False)
        if (step + 1) % args.val_every == 0 and step + 1 < args.steps:
            v, _ = val_loss(model, val_ids, T, args.val_windows)
            history.append({"step": step + 1, "train_loss_ema": ema, "val_loss_quick": v, "seconds": time.time() - t_start})
            print(f"\nstep {step + 1}: train {ema:.4f} val(first {args.val_windows} windows) {v:.4f} "
                  f"[{(time.time() - t_start) / 60:.1f} min]", flush=True)  # fmt: skip
    bar.close()
    t_train = time.time() - t_train

    # -- final validation and save
    model.eval()
    v, n_scored = val_loss(model, val_ids, T)
    print(f"final validation loss {v:.4f} nats/token over {n_scored:,} scored tokens of {len(val_files)} files", flush=True)
    model.save_pretrained(out)
    save_tokenizer_files(out)
    tail = losses[-100:]
    figures = {
        "command": command,
        "seed": args.seed,
        "threads": args.threads,
        "args": vars(args),
        "python": platform.python_version(),
        "stdlib": str(stdlib),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "numpy": np.__version__},
        "config": {k: getattr(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim", "n_inner", "tie_word_embeddings")},
        "parameters": n_params,
        "train_files": len(train_files),
        "train_tokens": int(len(stream)),
        "val_files": val_files,
        "val_tokens": int(sum(map(len, val_ids))),
        "val_tokens_scored": n_scored,
        "val_ids_absent_from_training": val_unseen,
        "ids_used": int(len(active)),
        "unseen_bias": args.unseen_bias,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens_seen": args.steps * args.batch_size * T,
        "epochs": args.steps * args.batch_size * T / len(stream),
        "train_loss_last100": sum(tail) / len(tail),
        "val_loss": v,
        "history": history,
        "seconds_data": t_data,
        "seconds_train": t_train,
        "seconds_total": time.time() - t_start,
    }
    (out / "training.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: figures[k] for k in ("steps", "tokens_seen", "train_loss_last100", "val_loss", "seconds_total")}), flush=True)


if __name__ == "__main__":
    main()
