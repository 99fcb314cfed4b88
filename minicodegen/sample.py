"""Sampling at scale: many completions for a file of prompts, resumable, the same however split.

    python -m minicodegen sample prompts.jsonl -o samples.jsonl --n 200 --temperature 0.8 --top-p 0.95

The input holds one JSON object per line: ``{"task_id": ..., "prompt": ...}`` (``task_id``
defaults to the line's number). The output gets one line per completed sample::

    {"task_id": "HumanEval/0", "sample": 17, "completion": "...", "finish_reason": "stop", "tokens": 41}

- **Deterministic.** Sample j of task t draws from ``default_rng([entropy(seed, t), j])``
  (``task_entropy``): it depends on the seed, the task and j only. A row decodes bit for bit as it
  would alone (``batching``), so the text is the same whatever else shares its batch, however
  the work is cut into shards, on one machine or on many.
- **Resumable.** Lines are appended whole and flushed as samples finish; a rerun with the same
  output file reads what is there and runs only the samples missing. A kill loses the samples in
  flight, and a last line cut short by it is dropped at the next start.
- **Batched.** The samples of a task share one prefill, and ``max_batch`` rows decode together
  (``batching.Engine``); on Ray, every worker runs its own engine over its shards (``run_ray``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .batching import Done, Engine, Failed, Job, Piece, Settings
from .model import Model


@dataclass(frozen=True)
class Task:
    """A prompt and the sample numbers still wanted from it."""

    task_id: str
    prompt: str
    samples: tuple[int, ...]


@dataclass(frozen=True)
class Sample:
    task_id: str
    sample: int
    completion: str
    finish_reason: str
    tokens: int

    def line(self) -> str:
        return json.dumps({"task_id": self.task_id, "sample": self.sample, "completion": self.completion,
                           "finish_reason": self.finish_reason, "tokens": self.tokens}) + "\n"  # fmt: skip


def task_entropy(seed: int, task_id: str) -> int:
    """The 128-bit entropy of a task's samples: from the seed and the task's id (not its place in
    the file), so reordering or splitting the prompts changes nothing.

    >>> task_entropy(0, "HumanEval/0") == task_entropy(0, "HumanEval/0") != task_entropy(1, "HumanEval/0")
    True
    """
    return int.from_bytes(hashlib.sha256(f"{seed}\0{task_id}".encode()).digest()[:16], "little")


# ----------------------------------------------------------------------------- files


def read_prompts(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(task_id, prompt) of every line of a JSONL file; ValueError naming the line that is wrong."""
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
                raise ValueError(f"{path}:{i}: each line must be an object with a non-empty string 'prompt'")
            task_id = str(row.get("task_id", i))
            if task_id in seen:
                raise ValueError(f"{path}:{i}: task_id {task_id!r} appears twice")
            seen.add(task_id)
            out.append((task_id, row["prompt"]))
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def read_done(path: str | os.PathLike) -> set[tuple[str, int]]:
    """(task_id, sample) of the lines already in an output file. A last line without its newline
    (the write a kill interrupted) is cut off the file."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    done = set()
    for i, line in enumerate(whole.decode("utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            done.add((str(row["task_id"]), int(row["sample"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{i}: not a sample line; is this the output of another command?") from None
    return done


def pending(prompts: list[tuple[str, str]], n: int, done: set[tuple[str, int]]) -> list[Task]:
    """The tasks with the samples 0..n-1 not yet done."""
    tasks = [Task(t, p, tuple(j for j in range(n) if (t, j) not in done)) for t, p in prompts]
    return [t for t in tasks if t.samples]


def shards(tasks: list[Task], size: int) -> Iterator[list[Task]]:
    """Cuts the work into shards of about ``size`` samples (a task's samples may span shards)."""
    shard, count = [], 0
    for t in tasks:
        for i in range(0, len(t.samples), size):
            part = Task(t.task_id, t.prompt, t.samples[i : i + size])
            shard.append(part)
            count += len(part.samples)
            if count >= size:
                yield shard
                shard, count = [], 0
    if shard:
        yield shard


# ----------------------------------------------------------------------------- generating


def generate_samples(model: Model, tasks: Iterable[Task], settings: Settings, seed: int, max_batch: int = 16,
                     on_sample: Callable[[Sample], None] = lambda s: None) -> dict[str, float]:
    """Runs every sample of ``tasks`` on one engine; ``on_sample`` gets each as it finishes.
    Returns the engine's counters (tokens, seconds of prefill and decode)."""
    eng = Engine(model, max_batch)
    texts: dict[tuple[str, int], str] = {}
    failures: list[str] = []

    def listener(task: Task) -> Callable[[Any], None]:
        def emit(ev: Any) -> None:
            if isinstance(ev, Failed):
                failures.append(f"{task.task_id}: {ev.message}")
                return
            key = (task.task_id, task.samples[ev.choice])
            if isinstance(ev, Piece):
                texts[key] = texts.get(key, "") + ev.text
            elif isinstance(ev, Done):
                on_sample(Sample(key[0], key[1], texts.pop(key, ""), ev.finish_reason, ev.completion_tokens))

        return emit

    for task in tasks:  # one job per run of consecutive sample numbers: they share a prefill
        ids, entropy = model.tokenizer.encode(task.prompt), task_entropy(seed, task.task_id)
        for run in np.split(np.array(task.samples), np.flatnonzero(np.diff(task.samples) != 1) + 1):
            part = Task(task.task_id, task.prompt, tuple(int(j) for j in run))
            eng.submit(Job([ids], len(run), settings, listener(part), entropy=entropy, first=int(run[0])))
    while eng.seqs or eng.waiting:
        eng.step()
        if failures:
            raise RuntimeError(f"sampling failed: {failures[0]}")
    return dict(eng.counts)


def run_local(model: Model, tasks: list[Task], settings: Settings, seed: int, max_batch: int,
              write: Callable[[Sample], None]) -> None:
    """One machine: the tasks in shards of a few batches each, so that progress comes steadily."""
    for shard in shards(tasks, 4 * max_batch):
        generate_samples(model, shard, settings, seed, max_batch, write)


def run_ray(address: str, model_name: str, dtype: str | None, threads: int | None, tasks: list[Task],
            settings: Settings, seed: int, max_batch: int, write: Callable[[Sample], None],
            workers: int | None = None) -> int:
    """A Ray cluster (``address`` "local": one started here): one actor per worker, each loading
    the model once, fed shards of samples; results are written as shards come back. Returns the
    number of workers."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'minicodegen[ray]'") from None
    if address == "local":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    else:
        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    try:
        n = workers or max(1, len([x for x in ray.nodes() if x.get("Alive")]))

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self) -> None:
                from . import kernels
                from .checkpoint import load_model

                if threads:
                    kernels.set_threads(threads)
                self.model = load_model(model_name, dtype=dtype)

            def run(self, shard: list[Task]) -> list[Sample]:
                out: list[Sample] = []
                generate_samples(self.model, shard, settings, seed, max_batch, out.append)
                return out

        pool = ActorPool([Worker.options(scheduling_strategy="SPREAD").remote() for _ in range(n)])
        for result in pool.map_unordered(lambda actor, shard: actor.run.remote(shard), list(shards(tasks, 2 * max_batch))):
            for s in result:
                write(s)
        return n
    finally:
        ray.shutdown()


def sample_prompts(model: Model | None, prompts: list[tuple[str, str]], out_path: str | os.PathLike, n: int,
                   settings: Settings, seed: int = 0, max_batch: int = 16, progress: bool = True,
                   ray: dict[str, Any] | None = None) -> dict[str, float]:
    """Completes ``out_path`` with n samples of every (task_id, prompt) (see the module docstring).
    ``ray``: run_ray's keyword arguments but for the work (the workers load the model; ``model``
    may then be None). Returns samples written, tokens and seconds."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    done = read_done(out_path)
    tasks = pending(prompts, n, done)
    total = sum(len(t.samples) for t in tasks)
    bar = None
    if progress:
        from tqdm import tqdm  # installed with huggingface_hub, a dependency

        bar = tqdm(total=len(prompts) * n, initial=len(prompts) * n - total, unit="sample", dynamic_ncols=True)
    stats = {"samples": 0, "tokens": 0}
    t0 = time.perf_counter()
    with open(out_path, "a", encoding="utf-8") as f:

        def write(s: Sample) -> None:
            f.write(s.line())
            f.flush()
            stats["samples"] += 1
            stats["tokens"] += s.tokens
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{stats['tokens'] / (time.perf_counter() - t0):.1f} tok/s", refresh=False)

        if ray is not None:
            run_ray(tasks=tasks, settings=settings, seed=seed, max_batch=max_batch, write=write, **ray)
        else:
            run_local(model, tasks, settings, seed, max_batch, write)
        os.fsync(f.fileno())
    if bar is not None:
        bar.close()
    return stats | {"seconds": time.perf_counter() - t0, "skipped": len(done)}
