"""`bebop serve --engine-dns` against a name that resolves to several loopback addresses, as a
Kubernetes headless Service resolves to its ready engine pods.

Two real engines listen on 127.0.0.2 and 127.0.0.3 (both loopback on Linux) on the same port, as
pods of a StatefulSet do. The gateway runs in a private mount namespace (`unshare -m`) where a
temporary hosts file is bind-mounted over /etc/hosts, so the system resolver (glibc, the same call
a cluster's DNS answer goes through) returns both addresses for one name; nothing on the machine
changes. Editing that file then plays the Service gaining and losing pods.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.procs import BEBOP, free_port

NAME = "bebop-engines.test"
ADDRESSES = ["127.0.0.2", "127.0.0.3"]


def _private_mounts_available() -> str | None:
    """Why the test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare -m) with its own /etc/hosts"
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, check=False)
    return None if r.returncode == 0 else f"unshare -m is not permitted here: {r.stderr.strip()}"


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str]):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _write_hosts(path, addresses: list[str]) -> None:
    # written in place: the bind mount follows the file (inode), not its name
    with open(path, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write("127.0.0.1 localhost\n" + "".join(f"{a} {NAME}\n" for a in addresses))


def _engines(gateway: str) -> dict[str, dict]:
    return {e["url"]: e for e in httpx.get(gateway + "/v1/engines", timeout=5).json()["engines"]}


def test_gateway_follows_a_name_with_several_addresses(tmp_path):
    reason = _private_mounts_available()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "BEBOP_ENGINE_TOKEN": "engine-token-for-the-dns-test"}
    port, gw_port = free_port(), free_port()
    urls = [f"http://{a}:{port}" for a in ADDRESSES]
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    _write_hosts(hosts, ADDRESSES)
    with contextlib.ExitStack() as stack:
        for address in ADDRESSES:
            stack.enter_context(_process([BEBOP, "engine", "--host", address, "--port", str(port)], env))
        for url in urls:
            _wait(
                lambda url=url: httpx.get(url + "/health", timeout=2).status_code == 200, 120, f"{url} not up"
            )
        script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
        gateway_cmd = [BEBOP, "serve", "--port", str(gw_port), "--engine-dns", f"{NAME}:{port}"]
        stack.enter_context(
            _process(["unshare", "-m", "sh", "-c", script, "sh", str(hosts), *gateway_cmd], env)
        )
        gateway = f"http://127.0.0.1:{gw_port}"

        # both addresses of the one name join the pool and serve
        _wait(lambda: sorted(u for u, e in _engines(gateway).items() if e["healthy"]) == urls, 60, "pool")
        body = {"prompts": [{"text": "12+35=", "n": 16}], "sampling_params": {"max_new_tokens": 8}, "seed": 3}
        r = httpx.post(gateway + "/v1/rollouts", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 16
        assert all(e["served"] > 0 for e in _engines(gateway).values()), _engines(gateway)

        # a pod leaves the Service: its address leaves the pool, and its metrics series with it
        _write_hosts(hosts, ADDRESSES[:1])
        _wait(lambda: list(_engines(gateway)) == urls[:1], 30, "the vanished address stayed in the pool")
        metrics = httpx.get(gateway + "/metrics", timeout=5).text
        assert f'bebop_engine_healthy{{engine="{urls[0]}"}} 1.0' in metrics
        assert urls[1] not in metrics
        r = httpx.post(gateway + "/v1/rollouts", json=body, timeout=120)
        assert r.status_code == 200, r.text

        # and comes back
        _write_hosts(hosts, ADDRESSES)
        _wait(
            lambda: sorted(u for u, e in _engines(gateway).items() if e["healthy"]) == urls, 30, "no rejoin"
        )

    assert NAME not in Path("/etc/hosts").read_text()  # nothing changed outside the namespace
