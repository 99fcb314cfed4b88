"""Regenerate tests/constraints.txt: the exact release of every package the test suite installs.

    python tools/lock.py              # newest releases that pyproject allows -> tests/constraints.txt
    python tools/lock.py --dry-run    # print the new file instead of writing it

It makes a new virtual environment in a temporary folder, installs minicodegen there with its
test, reference and notebook extras exactly as README's set-up command does but without the
constraints, so pip picks the newest release of everything within pyproject's ranges, and
writes `pip freeze` of that environment (minicodegen itself left out). Then run the suite with
the new file; if it passes, commit the file.

The set-up command installs with `-c tests/constraints.txt`, so a new machine gets these
releases, not whatever was published since. To test against the newest releases instead,
install without `-c tests/constraints.txt`.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "tests" / "constraints.txt"
EXTRAS = "test,reference,notebooks,serve,eval,ray"


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def freeze_newest(python: str) -> list[str]:
    """Install minicodegen[EXTRAS] into a new venv made by `python`; its `pip freeze` lines."""
    with tempfile.TemporaryDirectory(prefix="minicodegen-lock-") as tmp:
        venv = Path(tmp) / "venv"
        run(python, "-m", "venv", str(venv))
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        run(*pip, "install", "--quiet", "-e", f"{ROOT}[{EXTRAS}]")
        lines = run(*pip, "freeze", "--exclude-editable").splitlines()
    return sorted((ln for ln in lines if ln and not ln.startswith(("#", "-e"))), key=str.lower)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the file instead of writing it")
    args = ap.parse_args()
    t0 = time.time()
    pins = freeze_newest(sys.executable)
    header = [
        "# The test environment: every package that README's set-up command installs, pinned.",
        f"# Written by tools/lock.py on {datetime.date.today()} with Python {platform.python_version()}"
        f" on {platform.machine()} ({len(pins)} packages); rerun it to move to newer releases.",
    ]
    text = "\n".join(header + pins) + "\n"
    if args.dry_run:
        print(text, end="")
    else:
        LOCK.write_text(text)
        print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins)} packages in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
