"""End to end: a real Prometheus scrapes a running `bebop serve --engines 1` under a short load,
evaluates deploy/prometheus/rules.yml, and every dashboard query and every rule signal returns data.

A metric the dashboard or the rules name that the gateway or the engine does not export fails here.
Prometheus runs with the compose stack's own configuration (deploy/prometheus/prometheus.yml), its
targets moved to loopback, and the gateway runs with every token set, as deployed: Prometheus
scrapes with the scrape-only metrics token and the engine token.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from bebop.model.demo_path import demo_model_dir
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import Prometheus, dashboard_targets, grafana_to_promql, rules, series_names
from tests.procs import BEBOP, free_port

SCRAPE_S = 1  # scrape and rule evaluation interval: seconds of load give many points
LOAD_S = 6.0  # seconds of rollout traffic before and after the reload
TOKENS = {
    f"BEBOP_{kind}_TOKEN": f"{kind.lower()}-token-for-the-e2e-test"
    for kind in ("API", "ADMIN", "ENGINE", "METRICS")
}
API = {"Authorization": f"Bearer {TOKENS['BEBOP_API_TOKEN']}"}
ADMIN = {"Authorization": f"Bearer {TOKENS['BEBOP_ADMIN_TOKEN']}"}


def _load(url: str, seconds: float, seed: int) -> None:
    deadline = time.monotonic() + seconds
    k = 0
    with httpx.Client(base_url=url, timeout=120, headers=API) as client:
        while time.monotonic() < deadline:
            for task, prompt in (("arith", "12+35="), ("story", "Once upon a time")):
                body = {
                    "prompts": [{"text": prompt, "n": 4}],
                    "sampling_params": {"max_new_tokens": 16, "temperature": 1.0},
                    "seed": seed + k,
                    "task": task,
                }
                r = client.post("/v1/rollouts", json=body)
                assert r.status_code == 200, r.text
                k += 1


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.25)


@contextlib.contextmanager
def _prometheus(binary: str, tmp_path, gateway: str, engines: list[str]):
    """Prometheus with the compose stack's configuration, pointed at loopback."""
    port = free_port()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    targets = {"bebop-gateway": [gateway], "bebop-engine": engines}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets.pop(job["job_name"])}]
        secret = Path(job["authorization"]["credentials_file"]).name  # /run/secrets/<name> in compose
        token = tmp_path / secret
        token.write_text(TOKENS[f"BEBOP_{secret.removesuffix('_token').upper()}_TOKEN"])
        job["authorization"]["credentials_file"] = str(token)
    assert not targets, f"jobs missing from deploy/prometheus/prometheus.yml: {targets}"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}: {proc.stderr.read()}")
            try:
                return httpx.get(url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 30, "prometheus not ready")
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def _serve(args: list[str], port: int, log):
    """`bebop *args` with every token in its environment, until /readyz answers 200."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [BEBOP, *args], env={**os.environ, **TOKENS}, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"bebop {' '.join(args)} exited {proc.returncode}:\n{Path(log).read_text()}"
                )
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 180, "the gateway is not ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def prom(prometheus_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom")
    roots = tmp_path_factory.mktemp("weights")
    # A checkpoint that every engine refuses: the reload is rolled back (bebop_weight_reloads_total
    # {outcome="rolled_back"}), as a trainer's bad checkpoint would be.
    broken = roots / "broken"
    shutil.copytree(demo_model_dir(), broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    port = free_port()
    args = ["serve", "--port", str(port), "--engines", "1", "--weights-root", str(roots)]
    with _serve(args, port, tmp / "gateway.log") as url:
        engines = httpx.get(url + "/v1/engines", timeout=10, headers=ADMIN).json()["engines"]
        engines = [e["url"] for e in engines]
        hosts = [e.removeprefix("http://") for e in engines]
        with _prometheus(prometheus_bin, tmp, f"127.0.0.1:{port}", hosts) as p:
            _load(url, LOAD_S, seed=1)
            ok = httpx.post(
                url + "/v1/weights",
                json={"model_path": str(demo_model_dir()), "version": "v2", "pause_mode": "retract"},
                timeout=120,
                headers=ADMIN,
            )
            assert ok.status_code == 200, ok.text
            bad = httpx.post(
                url + "/v1/weights",
                json={"model_path": str(broken), "version": "v3"},
                timeout=120,
                headers=ADMIN,
            )
            assert bad.status_code == 409, bad.text
            _load(url, LOAD_S, seed=1000)
            # wait until Prometheus has scraped the failed reload and the samples of the new weights
            _wait(
                lambda: (
                    p.finite_values("bebop:weight_reloads_failed:increase15m > 0")
                    and p.finite_values('sum(bebop_rollout_samples_total{weight_version="v2"}) > 0')
                ),
                60,
                "the reload failure or the new version's samples never reached Prometheus",
            )
            time.sleep(3 * SCRAPE_S)
            p.scraped = [url, *engines]
            yield p


def test_every_target_is_scraped(prom):
    targets = prom.get("/api/v1/targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"bebop-gateway", "bebop-engine"}
    assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]


def test_metrics_need_a_token(prom):
    """What Prometheus scrapes is not public: the tokens in its configuration are what let it in."""
    for url in prom.scraped:
        assert httpx.get(url + "/metrics", timeout=5).status_code == 401, url


def test_every_rule_evaluates(prom):
    groups = prom.get("/api/v1/rules")["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules())
    bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad


@pytest.mark.parametrize(("panel", "expr"), dashboard_targets(), ids=[t for t, _ in dashboard_targets()])
def test_dashboard_query_returns_data(prom, panel, expr):
    assert prom.finite_values(grafana_to_promql(expr)), f"{panel}: no data for {expr}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("record") or r["alert"])
def test_rule_signals_return_data(prom, rule):
    """A recording rule returns data; an alert's condition may rightly be empty (nothing firing), so
    every series it reads must return data instead."""
    if "record" in rule:
        assert prom.finite_values(rule["record"]), f"{rule['record']}: no data"
    for name in series_names(rule["expr"]):
        assert prom.query(f'group by (__name__) ({{__name__="{name}"}})'), f"{name} is not exported"


def test_reload_outcomes_are_counted(prom):
    outcomes = {
        s["metric"]["outcome"]: float(s["value"][1]) for s in prom.query("bebop_weight_reloads_total")
    }
    assert outcomes == {"success": 1.0, "rolled_back": 1.0}
    versions = {s["metric"]["weight_version"] for s in prom.query("bebop_rollout_samples_total")}
    assert {"v2"} <= versions


def test_a_missing_metric_fails_the_check(prom):
    """The check itself can fail: a misspelt metric returns nothing."""
    assert not prom.finite_values("sum(rate(bebop_rollout_token_total[1m]))")
    assert not prom.query('group by (__name__) ({__name__="bebop_engine_queue_requests"})')
