"""What the dashboard and the rules ask Prometheus, in a form the tests can evaluate."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import httpx
import yaml

from tests.deploy.conftest import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "bebop.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
# Grafana's variables, replaced the way Grafana would for "All" tasks and a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$task": ".*"}
# Every series name Bebop exports starts with bebop_; recording rules are named bebop:...:...
SERIES_NAME = re.compile(r"\bbebop[_:][A-Za-z0-9_:]*")


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title / refId, expr) for every query of every panel, rows included."""
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"{p['title']} / {t['refId']}", t["expr"]))
            walk(p.get("panels", []))

    walk(json.loads(path.read_text())["panels"])
    return out


def grafana_to_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def rules(path: Path = RULES) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def series_names(expr: str) -> set[str]:
    return set(SERIES_NAME.findall(expr))


class Prometheus:
    """A thin client of Prometheus's HTTP API."""

    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query failed: {expr!r}: {body.get('error', r.text)}")
        return body["data"]["result"]

    def finite_values(self, expr: str) -> list[float]:
        """The finite sample values of an instant query (NaN, from 0/0, does not count as data)."""
        values = [float(s["value"][1]) for s in self.query(expr)]
        return [v for v in values if math.isfinite(v)]

    def get(self, path: str) -> dict:
        return httpx.get(f"{self.url}{path}", timeout=10).json()["data"]
