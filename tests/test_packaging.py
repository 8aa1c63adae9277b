"""The wheel holds the whole package: built offline, installed into a fresh venv, every module imported.

The editable install finds any file in the checkout, so a subfolder that setup.py's discovery leaves
out (or package data that ``pyproject.toml`` forgets) only shows in an installed wheel. The fresh
venv sees the test environment's dependencies through a path line in a ``.pth`` file; a path line
does not run the ``.pth`` files of that directory, so the editable finder stays off and ``bebop`` can
only come from the wheel (checked, not assumed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.layout import PACKAGE, ROOT, package_roots
from tests.test_layering import module_name

# pyproject.toml's package data for bebop.model, as paths in the wheel.
DEMO_MODEL = "bebop/model/demo_model"
DEMO_DATA_PATTERNS = ("*.json", "*.safetensors", "heads/*.safetensors")

# Only what the build reads is copied: pip builds in the source tree, and a `build/` left in the
# checkout keeps deleted modules, which a later wheel would carry.
BUILD_FILES = ("setup.py", "pyproject.toml", "README.md")

# Run inside the fresh venv: import every module given on stdin, say where each came from.
IMPORT_ALL = """
import importlib, json, sys, traceback
import bebop
report = {"bebop_path": list(bebop.__path__), "files": {}, "failed": {}, "missing_dependency": {}}
for name in json.load(sys.stdin):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] != "bebop":
            report["missing_dependency"][name] = err.name
        else:
            report["failed"][name] = traceback.format_exc()
    except Exception:
        report["failed"][name] = traceback.format_exc()
    else:
        report["files"][name] = module.__file__
from bebop.model.demo_path import demo_model_dir
report["demo_model_dir"] = str(demo_model_dir())
print(json.dumps(report))
"""


def run(*cmd: str | Path, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, input=stdin, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def source_modules() -> dict[str, str]:
    """Every module of the checkout -> its path in a wheel (``bebop/service/engine/runner.py``)."""
    modules = {}
    for folder in package_roots():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[module_name(path)[0]] = f"{PACKAGE}/{path.relative_to(ROOT).as_posix()}"
    return modules


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, src / name)
    for folder in package_roots():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        out,
        src,
        cwd=work,
    )
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> dict:
    """Install the wheel into a fresh venv and import every module there; the child's report."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / "bin" / "python"
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=work
    )
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work).strip()
    )
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (site / "test-env-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    # cwd outside the checkout and no PYTHONPATH: nothing but the venv and the dependencies is on the path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    out = run(python, "-c", IMPORT_ALL, cwd=work, stdin=json.dumps(sorted(source_modules())), env=env)
    return {"venv": venv.resolve(), **json.loads(out.splitlines()[-1])}


def test_the_wheel_holds_every_module_of_the_checkout(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(path for path in source_modules().values() if path not in names)
    assert not missing, f"not in the wheel (a folder without __init__.py?): {missing}"


def test_the_wheel_holds_the_demo_model(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / "model" / "demo_model"
    for pattern in DEMO_DATA_PATTERNS:
        expected = sorted(f"{DEMO_MODEL}/{p.relative_to(source).as_posix()}" for p in source.glob(pattern))
        assert expected, f"the checkout has no demo model files matching {pattern}"
        assert not [name for name in expected if name not in names], f"demo model {pattern} not in the wheel"


def test_every_module_imports_from_the_installed_wheel(installed: dict):
    venv: Path = installed["venv"]
    assert installed["bebop_path"], "bebop has no path"
    for entry in installed["bebop_path"]:
        assert Path(entry).resolve().is_relative_to(venv), f"bebop found outside the venv: {entry}"
    assert not installed["failed"], "modules that do not import from the wheel:\n" + "\n".join(
        f"{name}:\n{trace}" for name, trace in installed["failed"].items()
    )
    # A module may need an optional dependency, but only one this environment lacks as well.
    present = {dep for dep in installed["missing_dependency"].values() if find_spec(dep.split(".")[0])}
    assert not present, f"installed here but not found from the wheel's venv: {present}"
    outside = {
        name: file
        for name, file in installed["files"].items()
        if not Path(file).resolve().is_relative_to(venv)
    }
    assert not outside, f"modules imported from outside the venv: {outside}"
    assert set(installed["files"]) | set(installed["missing_dependency"]) == set(source_modules())


def test_the_demo_model_is_found_inside_the_installed_package(installed: dict):
    demo = Path(installed["demo_model_dir"])
    assert demo.is_relative_to(installed["venv"])
    assert (demo / "config.json").is_file() and list((demo / "heads").glob("*.safetensors"))
