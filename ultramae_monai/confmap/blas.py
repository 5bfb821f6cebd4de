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
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic
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


_L, _N, _R, _T = np.uint8(ord("L")), np.uint8(ord("N")), np.uint8(ord("R")), np.uint8(ord("T"))


@intrinsic
def _ref(typingctx, value):
    """A pointer to a copy of ``value`` on the stack: Fortran BLAS takes every scalar by reference.

    Small ``np.empty`` arrays for those arguments cost three heap allocations per call, which showed in
    the thousands of small fronts of a factorisation.
    """

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once_value(builder, args[0])
        return builder.bitcast(slot, cgutils.voidptr_t)

    return types.voidptr(value), codegen


@nb.njit(cache=True, nogil=True)
def gemm_nt(
    mr: int, nc: int, k: int, a: np.ndarray, lda: int, b: np.ndarray, ldb: int, c: np.ndarray, ldc: int, beta: float
) -> None:
    """``C[:mr, :nc] <- beta C - A[:mr, :k] B[:nc, :k]^T`` (float32, column-major views, leading dimensions)."""
    i32, f32 = np.int32, np.float32
    _sgemm(
        _ref(_N), _ref(_T), _ref(i32(mr)), _ref(i32(nc)), _ref(i32(k)), _ref(f32(-1.0)), a.ctypes, _ref(i32(lda)),
        b.ctypes, _ref(i32(ldb)), _ref(f32(beta)), c.ctypes, _ref(i32(ldc)),
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
        i32, f32 = np.int32, np.float32
        _ssyrk(
            _ref(_L), _ref(_N), _ref(i32(r)), _ref(i32(s)), _ref(f32(-1.0)), f21.ctypes, _ref(i32(m)),
            _ref(f32(0.0)), u.ctypes, _ref(i32(r)),
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
    i32 = np.int32
    r = m - s
    info = np.zeros(1, np.int32)  # an output: read back below
    _spotrf(_ref(_L), _ref(i32(s)), f.ctypes, _ref(i32(m)), info.ctypes)
    if info[0] != 0:
        return False
    if r == 0:
        return True
    f21 = f[s:]
    _strsm(
        _ref(_R), _ref(_L), _ref(_T), _ref(_N), _ref(i32(r)), _ref(i32(s)), _ref(np.float32(1.0)), f.ctypes,
        _ref(i32(m)), f21.ctypes, _ref(i32(m)),
    )  # fmt: skip
    schur_lower(f, m, s, u)
    return True
