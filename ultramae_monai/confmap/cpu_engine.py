"""The fast CPU factorisation engine behind one small interface, with the torch path as its fallback.

The float32 BLAS-3 multifrontal engine (:mod:`.multifrontal_blas`) calls SciPy's BLAS from numba through
LLVM symbol bindings (:mod:`.blas`), which depend on numba's internals. If that binding cannot load (a numba
or SciPy release that changes them), the package still works: :data:`ENGINE` is None, :data:`LOAD_ERROR`
says why, and callers fall back to the level-batched torch factorisation (:mod:`.multifrontal`), which is
exact and runs anywhere, only slower on a CPU.
"""

from __future__ import annotations

import logging
from types import ModuleType

__all__ = ["ENGINE", "LOAD_ERROR"]

logger = logging.getLogger(__name__)

ENGINE: ModuleType | None
LOAD_ERROR: Exception | None
try:
    from ultramae_monai.confmap import multifrontal_blas as ENGINE

    LOAD_ERROR = None
except Exception as err:  # numba/LLVM binding failures surface as many exception types
    ENGINE, LOAD_ERROR = None, err
    logger.warning("fast CPU confidence-map engine unavailable (%s); using the torch factorisation", err)
