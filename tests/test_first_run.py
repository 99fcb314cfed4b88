"""The first run on a machine compiles the kernels and says so, once; `warmup` compiles ahead.

Each step runs the command line in a new interpreter with its own NUMBA_CACHE_DIR, as a first
run on a new install would, and reports what it printed on stderr and how many kernel
signatures it compiled (Numba's cache misses) or loaded (hits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minicodegen.__main__ import COMPILING

RUN = """
import contextlib, io, json, sys
from minicodegen import kernels
from minicodegen.__main__ import main
err, out = io.StringIO(), io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
modules = [getattr(kernels, m) for m in ("simd", "prefill", "integer", "qgemm", "gemv", "attention", "elementwise", "decode")]
dispatchers = {id(d): d for m in modules for d in vars(m).values() if hasattr(d, "stats") and hasattr(d, "overloads")}
print(json.dumps({"code": code, "stderr": err.getvalue(), "stdout": out.getvalue(),
                  "misses": sum(sum(d.stats.cache_misses.values()) for d in dispatchers.values()),
                  "hits": sum(sum(d.stats.cache_hits.values()) for d in dispatchers.values())}))
"""

SHORT = "def f():"  # 4 tokens: the prompt goes through the decode kernels
LONG = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"  # > 16 tokens


def run(cache_dir, *argv: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", RUN, *argv], env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def generate(cache_dir, prompt: str) -> dict:
    return run(cache_dir, "--model", "tiny", prompt, "--max-new-tokens", "4")


@pytest.mark.slow  # two cold compiles of the tiny model's kernels (about 20 s each alone on 2 cores)
def test_a_cold_run_says_it_compiles_and_a_warm_one_says_nothing(tmp_path):
    cold = generate(tmp_path, SHORT)
    assert cold["code"] == 0 and cold["misses"] > 0
    assert cold["stderr"].splitlines() == [COMPILING]  # one line, before the wait

    warm = generate(tmp_path, SHORT)
    assert warm["code"] == 0 and warm["stderr"] == "" and warm["stdout"] == cold["stdout"]
    assert warm["misses"] == 0 and warm["hits"] > 0  # loaded, compiled nothing

    longer = generate(tmp_path, LONG)  # a long prompt runs the prompt kernels, not yet compiled
    assert longer["misses"] > 0 and longer["stderr"].splitlines() == [COMPILING]
    again = generate(tmp_path, LONG)
    assert again["stderr"] == "" and again["misses"] == 0

    (tmp_path / "f.py").write_text(LONG)
    score = run(tmp_path, "score", str(tmp_path / "f.py"), "--model", "tiny")  # the same kernels as a long prompt
    assert score["code"] == 0 and score["stderr"] == "" and score["misses"] == 0


def test_warmup_says_it_compiles_on_a_cold_cache(monkeypatch, capsys):
    """What `warmup` prints when there is something to compile (the cold compile itself runs once,
    in the session fixture int8_compiled_cache)."""
    from minicodegen import kernels
    from minicodegen.__main__ import main

    monkeypatch.setattr(kernels, "needs_compiling", lambda dtype=None, *a: True)
    monkeypatch.setattr(kernels, "warmup", lambda dtypes=None: [("layer norm", 1.25), ("decode block int8", 30.5)])
    assert main(["warmup", "--dtype", "int8"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("minicodegen: compiling the kernels for int8 (cold cache: ")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["layer", "norm"] and lines[-1] == "compiled the kernels for int8 in 31.8 s"
    assert all(line.rstrip().endswith(" s") for line in lines[:-1])


@pytest.mark.slow  # the int8 kernels, compiled once per session by the fixture
def test_after_a_warmup_the_first_run_is_quiet(int8_compiled_cache):
    cache_dir, _ = int8_compiled_cache
    second = run(cache_dir, "warmup", "--dtype", "int8")
    assert second["misses"] == 0 and second["stdout"].splitlines()[-1].startswith("loaded the kernels for int8 in ")
    assert second["stderr"].startswith("minicodegen: loading the kernels for int8 (warm cache: ")
    lines = second["stdout"].splitlines()
    assert lines[0].split()[:2] == ["layer", "norm"] and all(line.rstrip().endswith(" s") for line in lines[:-1])

    for prompt in (SHORT, LONG):  # tiny is int8: nothing left to compile, nothing said
        quiet = generate(cache_dir, prompt)
        assert quiet["code"] == 0 and quiet["stderr"] == "" and quiet["misses"] == 0


def test_warmup_refuses_an_unknown_dtype(capsys):
    from minicodegen.__main__ import main

    assert main(["warmup", "--dtype", "float64"]) == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err
