"""Package discovery for the one distribution: every folder below a root is a package of ``bebop``.

The import package ``bebop`` is put together from top-level folders (sglang depends on a PyPI package
named ``kernels``, and ``service`` is too generic a top-level name). Setuptools cannot find packages
under such a mapping by itself, and a hand-written list silently leaves a new subfolder out of the
wheel while the editable install still finds it; so the list is computed here from the tree.
Everything else about the distribution is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import setup

# top-level folder -> import package; `bebop` itself is a namespace assembled from these.
PACKAGE_ROOTS = {
    "kernels": "bebop.kernels",
    "model": "bebop.model",
    "service": "bebop.service",
    "training": "bebop.training",
    "bench": "bebop.bench",
    "cli": "bebop.cli",
}


def discover(roots: dict[str, str]) -> dict[str, str]:
    """Map every package (a folder with ``__init__.py``) under each root to its folder."""
    here = Path(__file__).resolve().parent
    package_dir: dict[str, str] = {}
    for folder, package in roots.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here)
            if "__pycache__" in rel.parts:
                continue
            sub = rel.relative_to(folder).parts
            package_dir[".".join((package, *sub))] = rel.as_posix()
    return package_dir


PACKAGE_DIR = discover(PACKAGE_ROOTS)
setup(package_dir=PACKAGE_DIR, packages=sorted(PACKAGE_DIR))
