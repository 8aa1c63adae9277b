"""The Grafana dashboard and the rules, read without a server: every series they name is one the
gateway or the engine exports (or a recording rule), and the dashboard is well formed.
The end-to-end test (test_prometheus_e2e.py) then evaluates every query against live data."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from bebop.service.engine.metrics import EngineMetrics
from bebop.service.gateway.metrics import GatewayMetrics
from tests.deploy.promql import DASHBOARD, dashboard_targets, rules, series_names

SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def _exported(registry: CollectorRegistry) -> set[str]:
    return {m.name + s for m in registry.collect() for s in SUFFIXES[m.type]}


def _known() -> set[str]:
    recorded = {r["record"] for r in rules() if "record" in r}
    return _exported(GatewayMetrics().registry) | _exported(EngineMetrics().registry) | recorded


def test_every_series_named_is_exported():
    known = _known()
    named = {n for _, expr in dashboard_targets() for n in series_names(expr)}
    named |= {n for r in rules() for n in series_names(r["expr"])}
    assert named, "no series found: the name pattern is wrong"
    assert not named - known, f"not exported by the gateway or the engine: {sorted(named - known)}"


def test_the_name_check_can_fail():
    assert series_names("rate(bebop_rollout_token_total[1m])") - _known() == {"bebop_rollout_token_total"}


def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    # no two panels overlap
    cells = set()
    for p in panels:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine


def test_dashboard_covers_what_the_issue_asks():
    exprs = " ".join(e for _, e in dashboard_targets())
    for series in [
        "bebop_engine_drafts_accepted_total",  # acceptance per position
        "bebop_spec_accept_length_sum",  # accept length
        "bebop_target_entropy_sum",  # entropy
        "bebop_accept_entropy_fit_intercept",  # the fit
        "bebop_accept_entropy_fit_gap",  # its residual
        "bebop_rollout_tokens_total",  # tokens/s
        "bebop_http_request_seconds_bucket",  # latency
        "bebop_engine_queued_requests",  # queue
        "bebop_rollouts_inflight",  # inflight
        "bebop_weight_reloads_total",  # reloads
        "bebop_rollout_samples_total",  # by weight version
        "bebop_engine_healthy",  # engine health
    ]:
        assert series in exprs, series
