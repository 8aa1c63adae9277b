"""The dependency direction between the package's top-level folders, read from the source with ``ast``.

    kernels  <-  model  <-  service, training  <-  bench  <-  cli

``kernels`` needs no other part; ``model`` only kernels; ``service`` and ``training`` only kernels and
model (not each other); ``bench`` everything but cli; ``cli`` anything; nothing imports ``cli``.
Every import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import is still a
dependency, it only fails later. Relative imports are resolved against the file's place in the
package, and ``importlib.import_module("bebop....")`` with a literal name is read as well.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.layout import PACKAGE, ROOT, package_roots

# part -> the other parts it may import (importing itself is always allowed)
ALLOWED: dict[str, frozenset[str]] = {
    "kernels": frozenset(),
    "model": frozenset({"kernels"}),
    "service": frozenset({"kernels", "model"}),
    "training": frozenset({"kernels", "model"}),
    "bench": frozenset({"kernels", "model", "service", "training"}),
    "cli": frozenset({"kernels", "model", "service", "training", "bench"}),
}


@dataclass(frozen=True)
class Edge:
    """One import of another part: where it is, and what it names."""

    line: int
    part: str  # the top-level part imported ("model"), or "" for an import above the package
    target: str  # the resolved module, for the report


def module_name(path: Path) -> tuple[str, bool]:
    """(dotted module name, is a package) of a source file under ROOT, e.g. service/engine/runner.py."""
    rel = path.relative_to(ROOT).with_suffix("")
    is_package = rel.name == "__init__"
    parts = rel.parts[:-1] if is_package else rel.parts
    return ".".join((PACKAGE, *parts)), is_package


def part_of(module: str) -> str | None:
    """The top-level part a ``bebop.`` module belongs to; None for modules outside the package."""
    pieces = module.split(".")
    if pieces[0] != PACKAGE:
        return None
    return pieces[1] if len(pieces) > 1 else PACKAGE


def resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    """What ``from <level dots><name> import ...`` in ``module`` names; None if it climbs above the top."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(package):
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str | None]]:
    """(line, resolved module) for every import in ``source``; the module is None above the top."""
    found: list[tuple[int, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                node.module
                if node.level == 0
                else resolve_relative(module, is_package, node.level, node.module)
            )
            if base is None:
                found.append((node.lineno, None))
            elif base == PACKAGE:
                # `from bebop import service` / `from .. import service` at the top: the names are parts
                found += [(node.lineno, f"{PACKAGE}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def edges(source: str, module: str, is_package: bool) -> list[Edge]:
    """The imports of ``source`` that reach another top-level part of the package (or above it)."""
    own = part_of(module)
    out = []
    for line, target in imported_modules(source, module, is_package):
        if target is None:
            out.append(Edge(line, "", "(relative import above the package)"))
            continue
        part = part_of(target)
        if part is not None and part != own:
            out.append(Edge(line, part, target))
    return out


def violations() -> list[str]:
    found = []
    for folder in package_roots():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            module, is_package = module_name(path)
            for edge in edges(path.read_text(), module, is_package):
                if edge.part not in ALLOWED[folder]:
                    where = f"{path.relative_to(ROOT)}:{edge.line}"
                    found.append(f"{where}: {folder} imports {edge.part or '?'} ({edge.target})")
    return found


def test_every_top_level_folder_has_a_rule():
    roots = package_roots()
    assert roots == {folder: f"{PACKAGE}.{folder}" for folder in ALLOWED}, (
        "setup.py's PACKAGE_ROOTS and ALLOWED disagree: give the new part its place in the layering"
    )


def test_nothing_imports_cli():
    assert all("cli" not in allowed for allowed in ALLOWED.values())


def test_imports_follow_the_layering():
    found = violations()
    assert not found, "imports against the layering:\n" + "\n".join(found)


# --- the reader itself, on sources written to break each rule ------------------------------------


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from ..service.engine import runner\n", "bebop.model.decoder", False, [(1, "service")]),
        ("from ...service import x\n", "bebop.model.sub.mod", False, [(1, "service")]),
        ("from .. import training\n", "bebop.service.app", False, [(1, "training")]),
        ("from ... import training\n", "bebop.service.engine", True, [(1, "training")]),
        ("from ..engine import runner\n", "bebop.service.gateway.app", False, []),  # inside service
        ("from . import decoder\n", "bebop.model", True, []),
        ("import bebop.cli.main\n", "bebop.service.x", False, [(1, "cli")]),
        ("from bebop import bench, model\n", "bebop.kernels.rng", False, [(1, "bench"), (1, "model")]),
        ("def f():\n    from ..cli import main\n", "bebop.training.demo", False, [(2, "cli")]),
        (
            "import importlib\nimportlib.import_module('bebop.service.client')\n",
            "bebop.training.demo",
            False,
            [(2, "service")],
        ),
        ("from .... import x\n", "bebop.model.decoder", False, [(1, "")]),
        ("import torch\nfrom kernels import x\n", "bebop.model.decoder", False, []),  # not ours
    ],
    ids=[
        "relative-up",
        "relative-two-up",
        "from-dots-import-part",
        "from-dots-import-part-in-init",
        "same-part",
        "package-init",
        "absolute",
        "from-bebop-import-parts",
        "lazy-in-function",
        "import-module-string",
        "above-the-package",
        "third-party",
    ],
)
def test_the_reader_resolves_imports(source, module, is_package, expected):
    assert [(e.line, e.part) for e in edges(source, module, is_package)] == expected


def test_module_names_follow_the_folders():
    assert module_name(ROOT / "service" / "engine" / "runner.py") == ("bebop.service.engine.runner", False)
    assert module_name(ROOT / "model" / "__init__.py") == ("bebop.model", True)
