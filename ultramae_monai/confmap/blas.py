"""Single-precision BLAS/LAPACK kernels callable from numba code, through SciPy's Cython exports.

The CPU multifrontal factorisation (:mod:`ultramae_monai.confmap.multifrontal_blas`) walks the elimination
tree in compiled code and needs blocked dense kernels for each front without going back to Python:
``sgemm`` (panel updates of the row-sum elimination, the Schur update), ``ssyrk`` (large Schur
updates) and, for SPD systems that are not random-walk Laplacians, ``spotrf``/``strsm``. SciPy exposes
Fortran BLAS/LAPACK as C function pointers in ``scipy.linalg.cython_blas`` / ``cython_lapack``; each is
bound to a named external symbol (all arguments are pointers, Fortran calling convention), so the
compiled callers stay cacheable. Call them inside :func:`single_threaded_blas`: the tree walk is
parallel itself, and with two OpenBLAS threads single fronts of order 108 and more ran 2-11x slower
here. (torch's MKL, also reachable, ran 1.4-1.9x faster on single hot fronts but no faster in the whole
factorisation, which is bound by memory traffic, so it is not used.)
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from numba import types
from numba.extending import get_cython_function_address
from threadpoolctl import ThreadpoolController

__all__ = ["gemm_nt", "partial_cholesky", "schur_lower", "single_threaded_blas"]


def _fn(module: str, name: str, nargs: int) -> types.ExternalFunction:
    """An external symbol bound to SciPy's ``name``: resolved by name at link time, so numba can cache."""
    symbol = f"ultramae_{name}"
    llvm.add_symbol(symbol, get_cython_function_address(module, name))
    return types.ExternalFunction(symbol, types.void(*([types.voidptr] * nargs)))


_spotrf = _fn("scipy.linalg.cython_lapack", "spotrf", 5)
_sgemm = _fn("scipy.linalg.cython_blas", "sgemm", 13)
_ssyrk = _fn("scipy.linalg.cython_blas", "ssyrk", 10)
_strsm = _fn("scipy.linalg.cython_blas", "strsm", 11)

GEMM_BLOCK = 64  # below SYRK_MIN, the lower-triangular Schur update is GEMMs on block columns this wide
SYRK_MIN = 384  # from this update size on, one SYRK is faster (measured: 0.8x for GEMM blocks at r = 494-605)

_controller: ThreadpoolController | None = None


def single_threaded_blas() -> AbstractContextManager:
    """Context in which every loaded BLAS runs one thread (the controller is built once)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


_L, _N, _R, _T = ord("L"), ord("N"), ord("R"), ord("T")


@nb.njit(cache=True, nogil=True)
def gemm_nt(
    mr: int, nc: int, k: int, a: np.ndarray, lda: int, b: np.ndarray, ldb: int, c: np.ndarray, ldc: int, beta: float
) -> None:
    """``C[:mr, :nc] <- beta C - A[:mr, :k] B[:nc, :k]^T`` (float32, column-major views, leading dimensions)."""
    ch = np.empty(2, np.uint8)
    ch[0], ch[1] = _N, _T
    iv = np.empty(6, np.int32)
    iv[0], iv[1], iv[2], iv[3], iv[4], iv[5] = mr, nc, k, lda, ldb, ldc
    sc = np.empty(2, np.float32)
    sc[0], sc[1] = -1.0, beta
    _sgemm(
        ch[0:].ctypes, ch[1:].ctypes, iv[0:].ctypes, iv[1:].ctypes, iv[2:].ctypes, sc[0:].ctypes, a.ctypes,
        iv[3:].ctypes, b.ctypes, iv[4:].ctypes, sc[1:].ctypes, c.ctypes, iv[5:].ctypes,
    )  # fmt: skip


@nb.njit(cache=True, nogil=True)
def schur_lower(f: np.ndarray, m: int, s: int, u: np.ndarray) -> None:
    """``u <- -L21 L21^T`` (lower triangle, ld ``r = m - s``) from ``L21 = f[s:m, :s]`` (ld ``m``).

    Measured with OpenBLAS (single thread): GEMMs on 64-wide block columns from the diagonal block down
    are 1.3-2x faster than SYRK for updates up to ~250 wide, SYRK 1.2x faster from ~500 on. The
    diagonal blocks' upper halves are never read.
    """
    r = m - s
    f21 = f[s:]
    if r >= SYRK_MIN:
        ch = np.empty(2, np.uint8)
        ch[0], ch[1] = _L, _N
        iv = np.empty(3, np.int32)
        iv[0], iv[1], iv[2] = r, s, m
        sc = np.empty(2, np.float32)
        sc[0], sc[1] = -1.0, 0.0
        _ssyrk(
            ch[0:].ctypes, ch[1:].ctypes, iv[0:].ctypes, iv[1:].ctypes, sc[0:].ctypes, f21.ctypes, iv[2:].ctypes,
            sc[1:].ctypes, u.ctypes, iv[0:].ctypes,
        )  # fmt: skip
        return
    for j0 in range(0, r, GEMM_BLOCK):
        bj = min(GEMM_BLOCK, r - j0)
        gemm_nt(r - j0, bj, s, f21[j0:], m, f21[j0:], m, u[j0 + j0 * r :], r, 0.0)


@nb.njit(cache=True, nogil=True)
def partial_cholesky(f: np.ndarray, m: int, s: int, u: np.ndarray) -> bool:
    """Eliminate the first ``s`` of ``m`` unknowns of a float32 front (column-major, lower triangles).

    ``f[: m * s]`` holds the front's first ``s`` columns (leading dimension ``m``). Afterwards ``f`` holds
    ``[L11; L21]`` (``spotrf``, then ``L21 = F21 L11^-T`` by ``strsm``) and ``u[: r * r]`` (``r = m - s``,
    leading dimension ``r``) is overwritten with ``-L21 L21^T`` (lower triangle), the update the caller
    adds to the trailing block. Returns False when the pivot block is not positive definite. This is the
    path for SPD systems that are not random-walk Laplacians; those use row-sum pivots instead.
    """
    ch = np.empty(4, np.uint8)
    ch[0], ch[1], ch[2], ch[3] = _R, _L, _T, _N
    iv = np.empty(4, np.int32)
    r = m - s
    iv[0], iv[1], iv[2], iv[3] = s, m, r, 0
    sc = np.empty(1, np.float32)
    sc[0] = 1.0
    _spotrf(ch[1:].ctypes, iv[0:].ctypes, f.ctypes, iv[1:].ctypes, iv[3:].ctypes)
    if iv[3] != 0:
        return False
    if r == 0:
        return True
    f21 = f[s:]
    _strsm(
        ch[0:].ctypes, ch[1:].ctypes, ch[2:].ctypes, ch[3:].ctypes, iv[2:].ctypes, iv[0:].ctypes, sc[0:].ctypes,
        f.ctypes, iv[1:].ctypes, f21.ctypes, iv[1:].ctypes,
    )  # fmt: skip
    schur_lower(f, m, s, u)
    return True
