"""The register-level building blocks (minicodegen.kernels.simd) on their own: _dot against the
float64 dot product and against itself row by row, _exp_f32 against np.exp, _matmul_rows against
the float64 matrix product, _transpose_add16 against NumPy's transpose."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import gamma, to_bf16, widen
from numba import njit

from minicodegen.kernels import simd


@pytest.mark.parametrize("n", [1, 15, 16, 64, 100, 1024])
def test_dot_of_a_tuple_of_rows_equals_one_dot_per_row(n):
    """_dot(x, (w_0, .., w_3)) (the matrix-vector kernels read four rows per step; two in earlier
    versions) adds in the same order as _dot(x, w_r) for each row: equal bit for bit, for each
    weight format."""

    @njit
    def tuples(x, w0, w1, w2, w3):
        u0, u1 = simd._dot(x, (w0, w1), 4096)
        v0, v1, v2, v3 = simd._dot(x, (w0, w1, w2, w3), 4096)
        return (u0, u1), (v0, v1, v2, v3), (simd._dot(x, w0, 0), simd._dot(x, w1, 4096), simd._dot(x, w2, 0), simd._dot(x, w3, 0))

    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    W = rng.standard_normal((4, n)).astype(np.float32)
    for w, w0 in ((W, W[0]), (to_bf16(W), widen(to_bf16(W[0]))), (rng.integers(-127, 128, (4, n)).astype(np.int8), None)):
        xd = simd._bf16_pair_order(x[None])[0] if w.dtype == np.uint16 else x  # (bf16 rows take x in pair order)
        two, four, one = tuples(xd, w[0], w[1], w[2], w[3])
        assert two == one[:2] and four == one
        w0 = w[0].astype(np.float64) if w0 is None else w0.astype(np.float64)
        assert abs(one[0] - x.astype(np.float64) @ w0) <= gamma(n + 2) * (np.abs(x) @ np.abs(w0)) + 1e-30


@pytest.mark.parametrize("n", [1, 15, 16, 63, 64, 65, 200, 1024])
def test_dot_of_a_tuple_of_x_equals_one_dot_per_x(n):
    """_dot((x_0, .., x_3), w) (batched decode: a row of W widened once for 4 or 2 rows of the
    batch) adds each sum in the order of _dot(x_a, w): equal bit for bit, every weight format, so
    a row of a batch decodes exactly as it would alone."""

    @njit
    def tuples(x0, x1, x2, x3, w):
        u0, u1 = simd._dot((x0, x1), w, 4096)
        v0, v1, v2, v3 = simd._dot((x0, x1, x2, x3), w, 0)
        return (u0, u1), (v0, v1, v2, v3), (simd._dot(x0, w, 0), simd._dot(x1, w, 4096), simd._dot(x2, w, 0), simd._dot(x3, w, 0))

    rng = np.random.default_rng(n)
    X = rng.standard_normal((4, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    for wr in (w, to_bf16(w[None])[0], rng.integers(-127, 128, n).astype(np.int8)):
        Xd = simd._bf16_pair_order(X) if wr.dtype == np.uint16 else X
        two, four, one = tuples(Xd[0], Xd[1], Xd[2], Xd[3], wr)
        assert two == one[:2] and four == one


def test_exp_f32_within_about_one_ulp():
    """The vectorizable exp behind gelu_new and the attention softmax."""

    @njit
    def vexp(x, y):
        for i in range(x.shape[0]):
            y[i] = simd._exp_f32(x[i])

    x = np.concatenate([np.linspace(-87.3, 88.3, 400_001), np.linspace(-1, 1, 100_001)]).astype(np.float32)
    y = np.empty_like(x)
    vexp(x, y)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - ref) / ulp) <= 1.5  # measured: 1.19
    special = np.array([0.0, -np.inf, -200.0, -87.5, np.nan, 89.0, np.inf], np.float32)
    y = np.empty_like(special)
    vexp(special, y)
    assert y[0] == 1.0 and y[1] == 0.0 and y[2] == 0.0 and y[3] == 0.0
    assert np.isnan(y[4]) and y[5] == np.inf and y[6] == np.inf


@pytest.mark.parametrize("n_inner,n_cols", [(1, 16), (5, 48), (17, 64), (33, 80), (64, 144)])
@pytest.mark.parametrize("acc_in", [False, True])
def test_matmul_rows_equals_the_matrix_product(n_inner, n_cols, acc_in):
    """C[u, :n_cols] (+)= A[u, :n_inner] @ B[:n_inner, :n_cols] for the 4 rows, in column blocks of
    64 and of 16, within the error bound of a float32 sum of n_inner (+ 1) products; the columns
    past n_cols stay as they were (the operands are wider than the product, as in the kernels)."""

    @njit
    def matmul_rows(A, B, n_inner, n_cols, C, acc_in):
        simd._matmul_rows(A, B, n_inner, n_cols, C, acc_in)

    rng = np.random.default_rng(n_inner * 1000 + n_cols)
    A = rng.standard_normal((4, n_inner + 3)).astype(np.float32)
    B = rng.standard_normal((n_inner + 2, n_cols + 16)).astype(np.float32)
    C = rng.standard_normal((4, n_cols + 16)).astype(np.float32)
    C0 = C.copy()
    matmul_rows(A, B, n_inner, n_cols, C, acc_in)
    A64, B64, C64 = A[:, :n_inner].astype(np.float64), B[:n_inner, :n_cols].astype(np.float64), C0[:, :n_cols] * acc_in
    bound = gamma(n_inner + 1) * (np.abs(A64) @ np.abs(B64) + np.abs(C64))
    assert np.all(np.abs(C[:, :n_cols] - (A64 @ B64 + C64)) <= bound + 1e-30)
    np.testing.assert_array_equal(C[:, n_cols:], C0[:, n_cols:])


def test_transpose_add16_equals_numpy():
    """dst[t0 + m, j0 + i] = src[r0 + i, c0 + m] + b[b0 + i] for one 16 x 16 block, exactly;
    nothing else of dst is written."""

    @njit
    def transpose_add16(src, r0, c0, b, b0, dst, t0, j0):
        simd._transpose_add16(src, r0, c0, b, b0, dst, t0, j0)

    rng = np.random.default_rng(16)
    src = rng.standard_normal((40, 37)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    dst = rng.standard_normal((35, 50)).astype(np.float32)
    want = dst.copy()
    want[11:27, 13:29] = src[3:19, 5:21].T + b[7:23]
    transpose_add16(src, 3, 5, b, 7, dst, 11, 13)
    np.testing.assert_array_equal(dst, want)
