"""The one place that imports Triton, so every kernel module imports (and falls back) without it.

``HAS_TRITON`` says whether Triton imported. Without it, ``triton.jit`` decorates nothing useful
and the kernels' torch twins are the only backend. ``TRITON_INTERPRET=1`` must be in the
environment before this module is first imported for the interpreter to run kernels on CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    class _NoTriton:
        """Stands in for ``triton`` so ``@triton.jit`` still decorates (and the module imports)."""

        @staticmethod
        def jit(fn: Any = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, int(n) - 1).bit_length()

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

    class _NoTl:
        """Annotations such as ``tl.constexpr`` must resolve at import time."""

        constexpr = Any

    triton = _NoTriton()  # type: ignore[assignment]
    tl = _NoTl()  # type: ignore[assignment]


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Whether the Triton backend can run on these tensors: CUDA tensors, or CPU under the interpreter."""
    if not HAS_TRITON:
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Map ``"auto" | "triton" | "torch"`` to the backend that will run.

    ``auto`` picks Triton for CUDA tensors and the torch twin everywhere else (the twin is the
    real CPU path: the interpreter is for tests, far too slow to serve).
    """
    if backend == "auto":
        return "triton" if HAS_TRITON and all(t.is_cuda for t in tensors) else "torch"
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_usable(*tensors):
            raise ValueError(
                "backend='triton' needs Triton and CUDA tensors (or CPU tensors with TRITON_INTERPRET=1)"
            )
        return "triton"
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")


__all__ = ["HAS_TRITON", "interpreting", "resolve_backend", "tl", "triton", "triton_usable"]
