"""SGLang 0.5.23's own ``reject_sampling.py``, located and imported by file path.

The plugin delegates what its kernel does not do to SGLang's original; loading the file by path
keeps the REPLACE hook from ever reaching it. ``bebop.bench.sglang_peer`` runs it on Bebop's layout.
The file imports only triton, so it is loaded, never vendored.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from types import ModuleType

SGLANG_VERSION = "0.5.23"
KERNEL_RELPATH = "kernels/ops/speculative/reject_sampling.py"  # inside the sglang package
DEFAULT_EXTRACTED = Path(".cache") / f"sglang-{SGLANG_VERSION}" / "reject_sampling.py"  # by `make test`


def find_sglang_kernel(path: str | os.PathLike | None = None, repo_root: Path | None = None) -> Path:
    """Locate SGLang's ``reject_sampling.py``: explicit path, $BEBOP_SGLANG_KERNEL, installed sglang,
    then the copy ``make test`` extracts. Raises FileNotFoundError saying how to get it."""
    candidates = [path, os.environ.get("BEBOP_SGLANG_KERNEL")]
    spec = importlib.util.find_spec("sglang")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / KERNEL_RELPATH)
    candidates.append(DEFAULT_EXTRACTED)
    for candidate in candidates:
        if not candidate:
            continue
        candidate = Path(candidate)
        if not candidate.is_absolute() and repo_root is not None:
            candidate = repo_root / candidate
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"SGLang {SGLANG_VERSION}'s reject_sampling.py not found: run `make test` (it extracts the file "
        "from the sglang wheel), install sglang, or set BEBOP_SGLANG_KERNEL"
    )


@functools.lru_cache(maxsize=4)
def load_sglang_kernel(path: str) -> ModuleType:
    """Import SGLang's reject_sampling.py from ``path`` as a stand-alone module."""
    spec = importlib.util.spec_from_file_location("sglang_reject_sampling_peer", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
