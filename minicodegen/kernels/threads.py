"""The kernels' thread pool: started at import with OpenMP workers that spin briefly, then
sleep (``_start_thread_pool``); ``set_threads`` / ``get_threads`` say how many threads the
parallel kernels use.

No kernel here.  That results do not depend on the thread count (bit for bit, one thread
against all) is tested in tests/test_kernels_threads.py.
"""

from __future__ import annotations

import os

import numba

# How long an idle OpenMP worker spins before it sleeps (GNU OpenMP's
# GOMP_SPINCOUNT, in iterations of a pause loop: 10,000 is some tens of
# microseconds here).  Measured on this 2-core machine, int8 decode of the 350M
# shape: 31 tok/s with sleeping workers (PASSIVE: every kernel launch pays a
# futex wake-up), 46 with 10,000, the same with 100,000 or spinning for ever.
_SPIN_COUNT = "10000"


def _start_thread_pool() -> None:
    """Start Numba's thread pool with OpenMP workers that spin briefly, then sleep.

    A decode step launches a few hundred small parallel loops, microseconds
    apart.  Workers that go to sleep after each loop (OMP_WAIT_POLICY=PASSIVE)
    make every launch pay a wake-up; GNU OpenMP's default spins for
    milliseconds, which on a shared 2-core machine steals the cores that BLAS
    threads (during prefill) or other processes need.  A short spin
    (GOMP_SPINCOUNT, see _SPIN_COUNT) keeps the workers awake across one decode
    step and lets them sleep soon after.  The setting is applied only while the
    pool starts (other OpenMP runtimes loaded later, e.g. torch's, keep their
    defaults); OMP_WAIT_POLICY, GOMP_SPINCOUNT or NUMBA_THREADING_LAYER set in
    the environment win.
    """
    own = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if own:
        os.environ["GOMP_SPINCOUNT"] = _SPIN_COUNT
    try:
        from numba.np.ufunc.parallel import _launch_threads

        _launch_threads()
    finally:
        if own:
            os.environ.pop("GOMP_SPINCOUNT", None)


_start_thread_pool()


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads in the kernels (default: NUMBA_NUM_THREADS if set,
    else all cores).  Returns the number in use.  Cannot exceed the thread pool
    size fixed at start-up by NUMBA_NUM_THREADS."""
    if n is None:
        env = os.environ.get("NUMBA_NUM_THREADS")
        n = int(env) if env else numba.config.NUMBA_NUM_THREADS
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def get_threads() -> int:
    """Number of threads the kernels use."""
    return numba.get_num_threads()
