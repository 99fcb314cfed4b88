"""tools/ab_prompt.py refuses what it cannot run, naming it (the comparison itself is a measurement,
run by hand: it compiles the revision's kernels)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ab_prompt.py"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, timeout=120)


def test_a_missing_checkpoint_is_named(tmp_path):
    (tmp_path / "int8.npz").write_bytes(b"")
    done = run("HEAD", "--workdir", str(tmp_path))
    assert done.returncode == 2 and f"no checkpoint {tmp_path / 'float32.npz'}" in done.stderr
    assert "int8.npz" not in done.stderr.split("no checkpoint")[1]


def test_an_unknown_revision_is_named(tmp_path):
    for dt in ("int8", "float32"):
        (tmp_path / f"{dt}.npz").write_bytes(b"")
    done = run("no-such-revision", "--workdir", str(tmp_path))
    assert done.returncode == 2 and "cannot read revision 'no-such-revision'" in done.stderr


def test_counts_below_one_are_refused(tmp_path):
    for dt in ("int8", "float32"):
        (tmp_path / f"{dt}.npz").write_bytes(b"")
    done = run("HEAD", "--workdir", str(tmp_path), "--pairs", "0")
    assert done.returncode == 2 and "--pairs must be at least 1" in done.stderr
