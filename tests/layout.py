"""The repository's package layout as setup.py defines it, for tests that lay the package out themselves."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bebop"


def package_roots() -> dict[str, str]:
    """setup.py's top-level folder -> package map, read without running setup.py (it calls ``setup()``)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PACKAGE_ROOTS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no PACKAGE_ROOTS literal")
