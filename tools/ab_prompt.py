"""Whole prompts of a git revision against the working tree, in one process, interleaved.

The revision's ``minicodegen/`` is extracted (``git archive``) into ``$TMPDIR/minicodegen-ab-<commit>``
as the package ``mcg_base``, so that both versions load side by side (the package imports itself
only relatively). Each keeps its own kernel cache: the first comparison with a revision compiles
its kernels, later ones load them. For each dtype both
load the same checkpoint into memory, run one prompt each to warm up, then ``--pairs`` pairs of
prompts, one of each version in turn, so that the host's drift hits both alike. minicodegen is
imported before NumPy, as ``python -m minicodegen`` imports it (its ``OPENBLAS_THREAD_TIMEOUT``
then applies to both versions). Prints the medians,
the median of the per-pair ratios (new / base) and the largest difference of the last logits.

    python tools/ab_prompt.py BASE_REV [--dtypes int8,float32] [--tokens 512] [--batch 1] [--pairs 9]
                              [--workdir DIR]

The checkpoints are ``<dtype>.npz`` in ``--workdir`` (default: where tools/bench.py writes the
350M-shape ones, ``$TMPDIR/minicodegen-bench-350M``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the git revision to compare the working tree with (e.g. HEAD~3)")
    ap.add_argument("--dtypes", default="int8,float32", help="comma-separated weight dtypes (default int8,float32)")
    ap.add_argument("--tokens", type=int, default=512, help="prompt length (default 512)")
    ap.add_argument("--batch", type=int, default=1, help="prompts per forward call (default 1)")
    ap.add_argument("--pairs", type=int, default=9, help="timed pairs per dtype (default 9)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "minicodegen-bench-350M")
    a = ap.parse_args(argv)
    a.dtypes = a.dtypes.split(",")
    missing = [str(a.workdir / f"{dt}.npz") for dt in a.dtypes if not (a.workdir / f"{dt}.npz").exists()]
    if missing:
        ap.error(f"no checkpoint {', '.join(missing)} (tools/bench.py writes them; or pass --workdir)")
    if a.tokens < 1 or a.batch < 1 or a.pairs < 1:
        bad = [f"--{n}" for n in ("tokens", "batch", "pairs") if getattr(a, n) < 1]
        ap.error(f"{', '.join(bad)} must be at least 1")
    return a


def extract(rev: str) -> Path:
    """A directory holding the revision's package as ``mcg_base``: ``$TMPDIR/minicodegen-ab-<commit>``,
    kept, so that a later comparison with the same revision loads its compiled kernels.
    SystemExit(2) naming the revision if git cannot read it."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        print(f"ab_prompt.py: cannot read revision {rev!r}: not a commit of {REPO}", file=sys.stderr)
        sys.exit(2)
    into = Path(tempfile.gettempdir()) / f"minicodegen-ab-{sha.stdout.strip()}"
    if not (into / "mcg_base").is_dir():
        with tempfile.TemporaryDirectory(dir=into.parent) as tmp:
            tar = subprocess.run(["git", "-C", str(REPO), "archive", sha.stdout.strip(), "minicodegen"],
                                 capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=tar.stdout, check=True)
            (Path(tmp) / "minicodegen").rename(Path(tmp) / "mcg_base")
            into.mkdir(exist_ok=True)
            (Path(tmp) / "mcg_base").rename(into / "mcg_base")
    return into


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    sys.path.insert(0, str(extract(a.base)))
    import minicodegen  # noqa: I001 - before NumPy, as the command line: OpenBLAS's threads sleep at once
    import mcg_base
    import numpy as np

    ids = np.random.default_rng(0).integers(0, 50000, (a.batch, a.tokens))
    print(f"{a.batch} x {a.tokens}-token prompts, last logits; {a.base} (base) against the working tree (new), "
          f"{a.pairs} interleaved pairs")
    for dt in a.dtypes:
        runs = {}
        for name, pkg in (("base", mcg_base), ("new", minicodegen)):
            model = pkg.load(a.workdir / f"{dt}.npz", mapped=False)
            forward = pkg.model.forward
            runs[name] = (model, forward, forward(model, ids, last_only=True), [])
        for _ in range(a.pairs):
            for model, forward, _, times in runs.values():
                t = time.perf_counter()
                forward(model, ids, last_only=True)
                times.append(time.perf_counter() - t)
        (_, _, y0, tb), (_, _, y1, tn) = runs["base"], runs["new"]
        r = np.array(tn) / np.array(tb)
        print(f"{dt}: base {np.median(tb) * 1e3:.1f} ms, new {np.median(tn) * 1e3:.1f} ms, new / base {np.median(r):.3f} "
              f"(pairs {r.min():.2f}..{r.max():.2f}), max |Δ logits| {np.abs(y0 - y1).max():.2e}", flush=True)
        del runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
