"""MTP evaluation: report shape, and the kernel's empirical acceptance against the analytic one."""

import json
import math
import subprocess
import sys
from pathlib import Path

from bebop.training.mtp_eval import evaluate

BEBOP = Path(sys.executable).parent / "bebop"


def test_report_rows_and_analytic_vs_empirical_acceptance(quick_model):
    report = evaluate(quick_model, ["arith", "story"], gamma=3, temperature=1.0, prompts_per_task=24)
    assert report["gamma"] == 3 and report["temperature"] == 1.0
    losses = {"ce", "kl", "rkl", "tv", "e2e_tv"}
    assert {(r["task"], r["loss"]) for r in report["rows"]} == {
        (t, lo) for t in ("arith", "story") for lo in losses
    }
    for row in report["rows"]:
        assert len(row["per_position"]) == 3 and 0 <= row["rs_acceptance"] <= 1
        # Rejection sampling accepts at least as often as the argmax draft: sum min(p, q) >= p(argmax q)
        # is not a theorem, but min(p, q)(argmax q) <= p(argmax q) is; check the figure's range instead.
        assert 0 <= row["target_only_acceptance"] <= 1
        # Position 1: every chain reaches it, so the kernel's acceptance rate estimates the mean of
        # sum min(p, q) over the same chains; 6 sigma of a Bernoulli mean plus rounding slack.
        a, n = row["per_position"][0], row["chains"]
        assert abs(row["per_position_empirical"][0] - a) <= 6 * math.sqrt(a * (1 - a) / n) + 0.01, row


def test_eval_cli_json(quick_model):
    cmd = [str(BEBOP), "eval-mtp", "--model", str(quick_model), "--task", "arith", "--prompts", "4", "--json"]
    report = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout)
    assert set(report) == {"gamma", "temperature", "rows"}
    assert {"task", "loss", "rs_acceptance", "target_only_acceptance", "per_position"} <= set(
        report["rows"][0]
    )
