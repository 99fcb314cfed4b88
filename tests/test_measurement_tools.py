"""tools/ab_prompt.py and tools/prompt_profile.py refuse what they cannot run, naming it (the
measurements themselves are run by hand on the 350M-shape checkpoints of tools/bench.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def run(*argv: str, tool: str = "ab_prompt.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / tool), *argv], capture_output=True, text=True, timeout=120)


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


def test_the_profile_names_a_missing_checkpoint_and_bad_counts(tmp_path):
    done = run("--dtype", "bfloat16", "--workdir", str(tmp_path), tool="prompt_profile.py")
    assert done.returncode == 2 and f"no checkpoint {tmp_path / 'bfloat16.npz'}" in done.stderr
    (tmp_path / "int8.npz").write_bytes(b"")
    done = run("--workdir", str(tmp_path), "--runs", "0", tool="prompt_profile.py")
    assert done.returncode == 2 and "must be at least 1" in done.stderr


def test_the_step_profile_takes_the_block_apart_and_gets_its_values(tmp_path):
    """On the tiny model (int8, tied head): one row (the row kernels) and 8 (packed panels); the
    tool itself checks that its kernel-by-kernel block gives the fused block's values, bit for bit."""
    (tmp_path / "int8.npz").symlink_to(Path(__file__).resolve().parents[1] / "minicodegen" / "data" / "tiny.npz")
    done = run("--workdir", str(tmp_path), "--rows", "1", "8", "--cached", "5", "--runs", "1", tool="step_profile.py")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {ln.split("|")[1].strip(): ln for ln in done.stdout.splitlines() if ln.startswith("| ")}
    for part in ("ln_1", "qkv_proj + fc_in", "gelu", "attention", "out_proj + fc_out", "blocks", "head", "step",
                 "tokens/s of the step"):
        assert rows[part].count("|") == 4, done.stdout  # (a part, B = 1, B = 8)
    bad = run("--workdir", str(tmp_path), "--rows", "0", tool="step_profile.py")
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr
    bad = run("--dtype", "float32", "--workdir", str(tmp_path), tool="step_profile.py")
    assert bad.returncode == 2 and f"no checkpoint {tmp_path / 'float32.npz'}" in bad.stderr


def test_the_prompt_profile_runs_and_checks_its_activation_choice(tmp_path):
    """On the tiny model (int8): the passes run and each timed kernel gets a line; a bf16-activation
    choice is taken (it changes nothing for int8 weights, so the heading does not name it) and an
    unknown one is refused, named."""
    (tmp_path / "int8.npz").symlink_to(Path(__file__).resolve().parents[1] / "minicodegen" / "data" / "tiny.npz")
    done = run("--workdir", str(tmp_path), "--tokens", "9", "--runs", "1", "--bf16-activations", "bf16",
               tool="prompt_profile.py")
    assert done.returncode == 0, done.stdout + done.stderr
    head, *lines = done.stdout.splitlines()
    assert head.startswith("int8, 1 x 9 tokens, last logits") and "bf16 activations" not in head
    labels = {ln.split()[0] for ln in lines}
    assert {"block", "qkv_proj", "fc_in", "fc_out", "attend_cached"} <= labels, done.stdout
    bad = run("--workdir", str(tmp_path), "--bf16-activations", "fp8", tool="prompt_profile.py")
    assert bad.returncode == 2 and "--bf16-activations" in bad.stderr and "fp8" in bad.stderr
