"""`python -m minicodegen` end to end, in subprocesses, on a checkpoint built here."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicodegen

DATA = Path(minicodegen.__file__).parent / "data"
SHAPE = dict(vocab_size=50295, n_embd=64, n_head=4, rotary_dim=8, n_layer=2, n_positions=2048,
             bos_token_id=50256, eos_token_id=50256)  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(checkpoint_factory, tmp_path_factory):
    """A hub-style checkpoint directory: config.json, model.safetensors and the tokenizer files."""
    _, path = checkpoint_factory("cli", seed=5, **SHAPE)
    d = tmp_path_factory.mktemp("cli_ckpt")
    for f in path.iterdir():
        shutil.copy(f, d / f.name)
    shutil.copy(DATA / "gpt2-vocab.json", d / "vocab.json")
    shutil.copy(DATA / "gpt2-merges.txt", d / "merges.txt")
    shutil.copy(DATA / "codegen-added-tokens.json", d / "added_tokens.json")
    # Compile (or load) the kernels a short completion runs, so that the command lines below find
    # a warm cache whatever ran before them: a cold one adds a line on stderr (test_first_run.py).
    minicodegen.generate(minicodegen.load(d), "def add(a, b):", max_new_tokens=2)
    return d


def run(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicodegen", *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


def one_line_error(p: subprocess.CompletedProcess, code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicodegen: error: "), p.stderr
    return lines[0]


def test_prompt_argument_streams_the_completion(ckpt):
    p = run("def add(a, b):", "--model", str(ckpt), "--max-new-tokens", "20", "--no-truncate")
    assert p.returncode == 0, p.stderr
    model = minicodegen.load(ckpt)
    expected = minicodegen.generate(model, "def add(a, b):", max_new_tokens=20)
    assert p.stdout == "def add(a, b):" + expected + "\n"
    assert p.stderr == ""


def test_in_memory_model_gives_the_same_completion(ckpt, tmp_path):
    from minicodegen.npz import convert

    npz = convert(ckpt, tmp_path / "m.npz", dtype="int8")
    args = ("def add(a, b):", "--model", str(npz), "--max-new-tokens", "12", "--no-truncate")
    a, b = run(*args), run(*args, "--in-memory")
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and a.stdout.startswith("def add(a, b):")


def test_prompt_on_stdin(ckpt):
    a = run("--model", str(ckpt), "--max-new-tokens", "8", stdin="import os\n")
    b = run("-", "--model", str(ckpt), "--max-new-tokens", "8", stdin="import os\n")
    c = run("import os\n", "--model", str(ckpt), "--max-new-tokens", "8")
    assert a.returncode == b.returncode == c.returncode == 0, (a.stderr, b.stderr, c.stderr)
    assert a.stdout == b.stdout == c.stdout and a.stdout.startswith("import os\n")


def test_stats_go_to_stderr(ckpt):
    p = run("x = ", "--model", str(ckpt), "--max-new-tokens", "12", "--stats", "--no-truncate", "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"prompt tokens: 3, prefill: \d+ ms, decode: \d+ tokens in [\d.]+ s \(([\d.]+ tokens/s|n/a)\)\n", p.stderr), p.stderr


def test_sampling_options_and_seed(ckpt):
    args = ("def f():", "--model", str(ckpt), "--max-new-tokens", "16", "--temperature", "0.8", "--top-p", "0.9",
            "--top-k", "40", "--repetition-penalty", "1.1", "--no-truncate")  # fmt: skip
    a, b = run(*args, "--seed", "1"), run(*args, "--seed", "1")
    assert a.returncode == 0 and a.stdout == b.stdout
    assert run(*args, "--seed", "1", "--greedy").stdout == run("def f():", "--model", str(ckpt), "--max-new-tokens",
                                                              "16", "--repetition-penalty", "1.1", "--no-truncate").stdout  # fmt: skip


def test_score_subcommand(ckpt, tmp_path):
    f = tmp_path / "code.py"
    f.write_text("def add(a, b):\n    return a + b\n")
    p = run("score", str(f), "--model", str(ckpt))
    assert p.returncode == 0, p.stderr
    s = minicodegen.score(minicodegen.load(ckpt), f.read_text())
    assert p.stdout == f"tokens: {len(s.tokens)}, scored: {len(s.tokens) - 1}, mean NLL: {s.nll:.4f} nats/token, perplexity: {np.exp(s.nll):.3f}\n"
    assert run("score", "-", "--model", str(ckpt), stdin=f.read_text()).stdout == p.stdout
    assert "cannot read" in one_line_error(run("score", str(tmp_path / "nope.py"), "--model", str(ckpt)), 1)


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
    (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
    (["--top-k", "-3"], "--top-k must be >= 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--temperature", "hot"], "invalid float value"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--stop", ""], "--stop must not be empty"),
    (["--bf16-activations", "half"], r"--bf16-activations: invalid choice: 'half' \(choose from '?float32'?, '?bf16'?\)"),
])  # fmt: skip
def test_usage_errors_exit_2_with_one_line(args, message):
    line = one_line_error(run("def f():", *args), 2)
    assert re.search(message, line), line


def test_usage_error_of_subcommand():
    assert "the following arguments are required: file" in one_line_error(run("score"), 2)


def test_missing_model_exits_1(tmp_path):
    line = one_line_error(run("def f():", "--model", str(tmp_path / "no_such_dir")), 1)
    assert "no_such_dir" in line


def test_unreachable_hub_says_how_to_pass_a_model(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "MINICODEGEN_CACHE": str(tmp_path / "mc"),
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}  # fmt: skip
    line = one_line_error(run("def f():", env=env), 1)
    assert "--model" in line and "tiny" in line, line


def test_ctrl_c_stops_cleanly(ckpt):
    # SIGINT as a terminal delivers it, even when this test runs under a shell that started it in the
    # background (which makes the children ignore SIGINT, and Python then keeps ignoring it)
    proc = subprocess.Popen([sys.executable, "-m", "minicodegen", "def f():", "--model", str(ckpt), "--max-new-tokens",
                             "2000", "--no-truncate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proc.stdout.read(8) == "def f():"  # the model is loaded and generating
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "minicodegen: interrupted"
