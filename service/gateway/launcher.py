"""``bebop serve``: the gateway, with N embedded engines as child processes unless given engine URLs."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx

from ..ports import free_port
from .settings import GatewaySettings

log = logging.getLogger(__name__)
HEALTH_POLL_S = 0.2  # how often start-up asks a new engine's /health
HEALTH_CALL_TIMEOUT_S = 2.0  # one /health call during start-up; a slow answer is asked again


def _die_with_parent(parent: int) -> None:
    """Linux: the child is SIGKILLed when the gateway dies, however it dies and whatever state the
    child is in (a SIGTERM waits for a stuck request; a SIGKILL does not). Runs in the child."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:  # the gateway died before prctl: nobody would ever stop this child
        os._exit(1)


def spawn_engines(
    n: int,
    model: str,
    spec: str,
    extra: list[str],
    token: str | None = None,
    start_timeout_s: float = GatewaySettings.engine_start_timeout_s,
) -> tuple[list[subprocess.Popen], list[str]]:
    """Start n ``bebop engine`` children on loopback ports; wait (``start_timeout_s`` for all) until
    each answers /health. They require ``token`` (BEBOP_ENGINE_TOKEN), so other local users cannot
    drive them."""
    bebop = str(Path(sys.executable).parent / "bebop")
    env = {**os.environ, "BEBOP_ENGINE_TOKEN": token} if token else None
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        cmd = [bebop, "engine", "--model", model, "--port", str(port), "--spec", spec, *extra]
        preexec = functools.partial(_die_with_parent, os.getpid())
        procs.append(subprocess.Popen(cmd, preexec_fn=preexec, env=env))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + start_timeout_s
    for proc, url in zip(procs, urls, strict=True):
        while True:
            if proc.poll() is not None:
                stop(procs)
                raise RuntimeError(f"engine {url} exited with {proc.returncode} during start-up")
            try:
                if httpx.get(url + "/health", timeout=HEALTH_CALL_TIMEOUT_S).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stop(procs)
                raise TimeoutError(f"engine {url} did not start")
            time.sleep(HEALTH_POLL_S)
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


def report_exits(procs: list[subprocess.Popen], urls: list[str], stopping: threading.Event) -> None:
    """Log, from the parent, how an embedded engine ended when it ends on its own: a SIGKILL (the
    kernel's OOM killer, an operator) leaves nothing in the engine's own log."""

    def watch(proc: subprocess.Popen, url: str) -> None:
        code = proc.wait()
        # Ctrl-C reaches the engines too (one process group) before the gateway sets ``stopping``
        if stopping.is_set() or code == -signal.SIGINT:
            return
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:  # a real-time signal has no name
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        log.error("embedded engine %s (pid %d) %s while the gateway was serving", url, proc.pid, how)

    for proc, url in zip(procs, urls, strict=True):
        threading.Thread(target=watch, args=(proc, url), name=f"watch-{proc.pid}", daemon=True).start()


def serve(settings: GatewaySettings, engines: int, model: str, spec: str, engine_args: list[str]) -> None:
    """Run the gateway until SIGTERM. Without engine URLs or DNS names, first start ``engines``
    embedded engines; the settings that name them are a new, validated object (``settings`` itself
    is never changed), and that one object is what the app is built from."""
    import uvicorn

    from .app import build_app

    procs: list[subprocess.Popen] = []
    stopping = threading.Event()
    try:
        if not settings.engine_urls and not settings.engine_dns:
            # children get a token even when the operator set none: only this gateway talks to them
            token = settings.engine_token or secrets.token_urlsafe(24)
            roots = [*settings.weights_roots, Path(model).resolve()]
            root_args = [arg for root in roots for arg in ("--weights-root", str(root))]
            procs, urls = spawn_engines(
                engines, model, spec, [*engine_args, *root_args], token, settings.engine_start_timeout_s
            )
            settings = replace(settings, engine_token=token, weights_roots=roots, engine_urls=urls)
            settings.validate()
            report_exits(procs, urls, stopping)
        log.info(
            "gateway on %s:%d in front of %s", settings.host, settings.port, ", ".join(settings.engine_urls)
        )
        uvicorn.run(
            build_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=settings.shutdown_grace_s,
        )
    finally:
        stopping.set()
        stop(procs)
