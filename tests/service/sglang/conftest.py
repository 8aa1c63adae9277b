"""The real SGLang 0.5.23 for the plugin tests: its venv (``make sglang-venv``, cached outside the
clone) and Bebop laid out for it as pip would install it (setup.py's package roots, and the entry
points read from pyproject.toml), so SGLang's own plugin loader finds ``bebop`` by its entry point.

The probe (sglang_probe.py) imports SGLang once per test session, about a minute on 2 cores;
pytest-xdist workers share its result through a file lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from tests.layout import package_roots

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[3]
SGLANG_VERSION = "0.5.23"
DEFAULT_SGLANG_PYTHON = Path.home() / ".cache" / "bebop" / f"sglang-{SGLANG_VERSION}-venv" / "bin" / "python"
PROBE = Path(__file__).with_name("sglang_probe.py")
PROBE_TIMEOUT_S = 900


def sglang_python_path() -> Path | None:
    """The SGLang venv's python: $BEBOP_SGLANG_PYTHON (set by make test) or the default cache."""
    path = Path(os.environ.get("BEBOP_SGLANG_PYTHON") or DEFAULT_SGLANG_PYTHON)
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def sglang_python() -> Path:
    path = sglang_python_path()
    if path is None:
        pytest.skip(
            f"SGLang {SGLANG_VERSION} is not installed: `make sglang-venv` installs it (make test does), "
            "or set BEBOP_SGLANG_PYTHON to a python that has it"
        )
    return path


def build_plugin_site(site: Path) -> Path:
    """Bebop as an installed distribution for another interpreter: the ``bebop`` tree from setup.py's
    package roots (symlinks into this checkout) and a dist-info with pyproject's entry points."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for folder, package in package_roots().items():
        target = site.joinpath(*package.split("."))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(REPO_ROOT / folder, target_is_directory=True)
    name, version = project["project"]["name"], project["project"]["version"]
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, points in project["project"].get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


# Flags that `bebop sglang-server` accepts; the probe parses them with SGLang's own parser.
GOOD_FLAGS = [
    "--model-path", "MODEL",
    "--speculative-algorithm", "NEXTN",
    "--speculative-draft-model-path", "MODEL",
    "--speculative-num-steps", "3",
    "--speculative-eagle-topk", "1",
    "--speculative-num-draft-tokens", "4",
    "--speculative-use-rejection-sampling",
]  # fmt: skip


def sglang_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(site), TRITON_INTERPRET="1", SGLANG_PLUGINS="bebop", CUDA_VISIBLE_DEVICES="")
    env["BEBOP_PROBE_FLAGS"] = json.dumps(GOOD_FLAGS)
    return env


@pytest.fixture(scope="session")
def probe_result(sglang_python: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict:
    """The probe's JSON, computed once per session whatever the number of xdist workers."""
    shared = (
        tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    )
    cache = shared / "sglang_probe.json"
    with FileLock(str(cache) + ".lock"):
        if not cache.exists():
            site = shared / "sglang_site"
            if not site.exists():
                build_plugin_site(site)
            proc = subprocess.run(
                [str(sglang_python), str(PROBE)],
                env=sglang_env(site),
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                cwd=shared,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-20000:])
                raise RuntimeError(f"the SGLang probe failed (rc {proc.returncode}): {proc.stderr[-3000:]}")
            cache.write_text(lines[-1][len("RESULT ") :])
    return json.loads(cache.read_text())
