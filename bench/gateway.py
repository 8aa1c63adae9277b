"""``bebop bench gateway``: throughput and latency through the gateway against the engines directly.

One run starts N embedded engines, a ``bebop serve`` in front of them and, when installed, SGLang's
model gateway (``smg``, Rust) in front of the same engines as the peer. Every target gets the same
workload (the same prompts and seeds, ``ignore_eos``, so the same token count), at a fixed
concurrency, in interleaved rounds so drift on a noisy machine hits every target alike:

    direct           the client spreads requests round-robin over the engines' /generate
    bebop_generate   the gateway's SGLang pass-through /generate
    bebop_rollouts   the gateway's /v1/rollouts (one sample per request)
    smg              smg's /generate (round_robin policy)

Throughput loss is ``1 - tokens_per_s(target) / tokens_per_s(direct)``, medians over rounds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

from ..service.gateway.launcher import free_port, spawn_engines, stop


@dataclass(frozen=True)
class Workload:
    concurrency: int
    requests: int
    max_new_tokens: int
    prompt_len: int = 8

    def prompt(self, i: int) -> list[int]:
        return [5 + (i * 7 + k) % 200 for k in range(self.prompt_len)]


@dataclass(frozen=True)
class Target:
    name: str
    urls: tuple[str, ...]
    path: str  # /generate or /v1/rollouts


def _body(target: Target, w: Workload, i: int) -> dict:
    params = {"max_new_tokens": w.max_new_tokens, "ignore_eos": True, "temperature": 1.0}
    if target.path == "/v1/rollouts":
        return {"prompts": [{"input_ids": w.prompt(i), "n": 1}], "sampling_params": params, "seed": i}
    return {"input_ids": w.prompt(i), "sampling_params": {**params, "sampling_seed": i}}


def _tokens(target: Target, data: dict) -> int:
    if target.path == "/v1/rollouts":
        return sum(len(r["output_ids"]) for r in data["results"])
    return len(data["output_ids"])


async def _drive(target: Target, w: Workload) -> dict:
    """Run the workload against one target; tokens/s over the wall time, latency percentiles.

    The load comes from aiohttp, the lightest Python client we have, so that the client's own CPU
    (on the same machine) weighs as little as possible on the comparison.
    """
    gate = asyncio.Semaphore(w.concurrency)
    latencies: list[float] = []
    tokens = errors = 0
    connector = aiohttp.TCPConnector(limit=w.concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            nonlocal tokens, errors
            async with gate:
                start = time.perf_counter()
                url = target.urls[i % len(target.urls)] + target.path
                try:
                    async with session.post(url, json=_body(target, w, i)) as r:
                        ok = r.status == 200
                        # read before adding: `tokens += await ...` would lose other tasks' updates
                        got = _tokens(target, await r.json()) if ok else 0
                    tokens += got
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                errors += not ok
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(w.requests)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "tokens_per_s": tokens / wall,
        "requests_per_s": (w.requests - errors) / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
    }


def _wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    probe = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 1}}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during start-up")
        try:
            if httpx.post(url + "/generate", json=probe, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer /generate within {timeout_s} s")


def find_smg(explicit: str | None) -> str | None:
    """smg from --smg, else on PATH, else the separate venv ``.cache/smg-venv`` (its own deps)."""
    for candidate in (explicit, shutil.which("smg"), ".cache/smg-venv/bin/smg"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_gateway_bench(
    model: Path,
    engines: int,
    workloads: list[Workload],
    rounds: int,
    smg: str | None,
    max_running: int,
) -> dict:
    bebop = str(Path(sys.executable).parent / "bebop")
    procs, engine_urls = spawn_engines(engines, str(model), "rejection", ["--max-running", str(max_running)])
    helpers: list[subprocess.Popen] = []
    try:
        port = free_port()
        cmd = [bebop, "serve", "--port", str(port)]
        for url in engine_urls:
            cmd += ["--engine-url", url]
        helpers.append(subprocess.Popen(cmd))
        gateway = f"http://127.0.0.1:{port}"
        _wait_ready(gateway, helpers[-1], "bebop serve")
        targets = [
            Target("direct", tuple(engine_urls), "/generate"),
            Target("bebop_generate", (gateway,), "/generate"),
            Target("bebop_rollouts", (gateway,), "/v1/rollouts"),
        ]
        if smg:
            port, metrics_port = free_port(), free_port()
            cmd = [smg, "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *engine_urls]
            cmd += ["--policy", "round_robin", "--prometheus-host", "127.0.0.1"]
            cmd += ["--prometheus-port", str(metrics_port)]
            helpers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_ready(f"http://127.0.0.1:{port}", helpers[-1], "smg")
            targets.append(Target("smg", (f"http://127.0.0.1:{port}",), "/generate"))

        rows = []
        for w in workloads:
            warm = Workload(min(w.concurrency, 8), 16, w.max_new_tokens, w.prompt_len)
            for t in targets:
                asyncio.run(_drive(t, warm))
            runs: dict[str, list[dict]] = {t.name: [] for t in targets}
            for _ in range(rounds):
                for t in targets:
                    runs[t.name].append(asyncio.run(_drive(t, w)))
            direct = statistics.median(r["tokens_per_s"] for r in runs["direct"])
            for t in targets:
                med = {k: statistics.median(r[k] for r in runs[t.name]) for k in runs[t.name][0]}
                rows.append(
                    {
                        "target": t.name,
                        "concurrency": w.concurrency,
                        "requests": w.requests,
                        "max_new_tokens": w.max_new_tokens,
                        **med,
                        "throughput_loss": 1 - med["tokens_per_s"] / direct,
                    }
                )
        return {"engines": engines, "rounds": rounds, "smg": smg, "rows": rows}
    finally:
        stop(helpers)
        stop(procs)
