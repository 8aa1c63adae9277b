"""``bebop serve``: the gateway, with N embedded engines as child processes unless given engine URLs."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bebop.service.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the gateway dies, however it dies (no orphaned engines)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_engines(
    n: int, model: str, spec: str, extra: list[str]
) -> tuple[list[subprocess.Popen], list[str]]:
    """Start n ``bebop engine`` children on loopback ports; wait until each answers /health."""
    bebop = str(Path(sys.executable).parent / "bebop")
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        cmd = [bebop, "engine", "--model", model, "--port", str(port), "--spec", spec, *extra]
        procs.append(subprocess.Popen(cmd, preexec_fn=_die_with_parent))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 300
    for proc, url in zip(procs, urls, strict=True):
        while True:
            if proc.poll() is not None:
                stop(procs)
                raise RuntimeError(f"engine {url} exited with {proc.returncode} during start-up")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stop(procs)
                raise TimeoutError(f"engine {url} did not start")
            time.sleep(0.2)
    return procs, urls


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def serve(settings: GatewaySettings, engines: int, model: str, spec: str, engine_args: list[str]) -> None:
    import uvicorn

    from bebop.service.gateway.app import build_app

    procs: list[subprocess.Popen] = []
    if not settings.engine_urls and not settings.engine_dns:
        procs, settings.engine_urls = spawn_engines(engines, model, spec, engine_args)
        settings.weights_roots.append(Path(model).resolve())
    try:
        log.info(
            "gateway on %s:%d in front of %s", settings.host, settings.port, ", ".join(settings.engine_urls)
        )
        uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")
    finally:
        stop(procs)
