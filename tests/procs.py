"""Real server processes on loopback for the integration tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bebop.service import ports

BEBOP = str(Path(sys.executable).parent / "bebop")


def free_port() -> int:
    """A free loopback port outside the ephemeral range, from this xdist worker's own slice (two
    workers never draw the same port; an outgoing connection never takes it before the server binds)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return ports.free_port(lane=int(worker.removeprefix("gw") or 0), lanes=max(workers, 1))


def wait_ready(proc: subprocess.Popen, url: str, path: str = "/readyz", timeout: float = 120.0) -> None:
    """Return once ``url + path`` answers 200; RuntimeError if ``proc`` exits first, TimeoutError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{out}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.args} not ready after {timeout} s")
        time.sleep(0.2)


@contextlib.contextmanager
def running(args: list[str], port: int, ready_path: str = "/health", timeout: float = 120.0) -> Iterator[str]:
    """Start ``bebop *args`` and yield its base URL once ``ready_path`` answers 200; stop it after."""
    proc = subprocess.Popen([BEBOP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, ready_path, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
