"""Prometheus rules with the real promtool: syntax, unit tests, and proof that each alert's unit
tests can fail (an alert that never fires, or always fires, breaks them)."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, run
from tests.deploy.promql import RULES

RULE_TESTS = DEPLOY / "prometheus" / "rules.test.yml"
ALERTS = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
# Every alert the issue asks for, under the names the runbooks and the chart's README use.
REQUIRED_ALERTS = {
    "BebopAcceptanceBelowEntropyBand",
    "BebopAcceptanceCollapseAfterReload",
    "BebopEngineDown",
    "BebopNoHealthyEngine",
    "BebopReloadFailed",
    "BebopQueueGrowing",
    "BebopHigh5xxRate",
    "BebopHighP99Latency",
}


def test_rules_check(promtool):
    r = run([promtool, "check", "rules", str(RULES)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_unit_tests_pass(promtool):
    r = run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_firing_and_quiet_cases():
    assert set(ALERTS) == REQUIRED_ALERTS
    cases: dict[str, list[bool]] = {a: [] for a in ALERTS}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            cases[case["alertname"]].append(bool(case["exp_alerts"]))
    for alert, fires in cases.items():
        assert True in fires, f"{alert}: no case where it fires"
        assert False in fires, f"{alert}: no case where it stays quiet"


def _mutated(tmp_path, alert: str, expr: str) -> str:
    """A copy of rules.yml where ``alert`` has ``expr`` and no ``for``, beside the unit tests."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
                rule.pop("for", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return str(tmp_path)


@pytest.mark.parametrize("alert", ALERTS)
def test_unit_tests_catch_a_silent_alert(promtool, tmp_path, alert):
    r = run([promtool, "test", "rules", RULE_TESTS.name], cwd=_mutated(tmp_path, alert, "vector(1) < 0"))
    assert r.returncode == 1
    assert re.search(rf"alertname: {alert}, time: .*\n\s+exp:\[\n", r.stdout + r.stderr)


@pytest.mark.parametrize("alert", ALERTS)
def test_unit_tests_catch_an_alert_that_always_fires(promtool, tmp_path, alert):
    r = run([promtool, "test", "rules", RULE_TESTS.name], cwd=_mutated(tmp_path, alert, "vector(1)"))
    assert r.returncode == 1
    assert re.search(rf"alertname: {alert}, time: .*\n\s+exp:\[\],", r.stdout + r.stderr)
