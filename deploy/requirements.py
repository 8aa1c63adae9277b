"""Print the package's runtime requirements from pyproject.toml, one a line, less the ones named.

The images install Bebop itself with --no-deps and its requirements from this list, so that
pyproject.toml stays the one place they are written:
    python deploy/requirements.py torch numpy tqdm safetensors tokenizers   # the gateway: no model code
    python deploy/requirements.py torch                                     # beside SGLang's own torch
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(without: set[str]) -> list[str]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    name = re.compile(r"^[A-Za-z0-9._-]+")
    return [d for d in deps if name.match(d).group(0).lower() not in without]


if __name__ == "__main__":
    print("\n".join(requirements({a.lower() for a in sys.argv[1:]})))
