"""The thread count (minicodegen.kernels.threads): set and read back, and results equal bit for bit
on one thread and on all."""

from __future__ import annotations

import numpy as np
from kernel_helpers import to_bf16

from minicodegen import kernels as K


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 257)).astype(np.float32)
    W = rng.standard_normal((1001, 257)).astype(np.float32)
    W16, Wq, sc = to_bf16(W), rng.integers(-127, 128, W.shape).astype(np.int8), np.ones(1001, np.float32)
    n0 = K.get_threads()
    try:
        outs = []
        for n in (1, n0):
            assert K.set_threads(n) == n
            outs.append((K.linear_f32(x, W), K.linear_bf16(x, W16), K.linear_int8(x, Wq, sc)))
        for a, c in zip(*outs):
            np.testing.assert_array_equal(a, c)
    finally:
        K.set_threads(n0)


def test_set_threads_default_and_back():
    n = K.get_threads()
    assert K.set_threads() >= 1
    K.set_threads(n)
    assert K.get_threads() == n
