"""The ``bebop`` command as a user runs it: a real subprocess of the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

BEBOP = Path(sys.executable).parent / "bebop"


def test_bench_kernels_json_reports_every_batch_and_the_tv_loss():
    cmd = [str(BEBOP), "bench", "kernels", "--batch", "1", "3", "--vocab", "1000", "--tv-rows", "16"]
    out = subprocess.run(
        [*cmd, "--repeats", "1", "--json"], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout)
    assert [row["batch"] for row in report["chain_rejection_sample"]] == [1, 3]
    for row in report["chain_rejection_sample"]:
        assert row["bebop_ms"] > 0 and row["bebop_no_entropy_ms"] > 0
    assert report["tv_loss"]["n"] == 16 and report["tv_loss"]["fused_ms"] > 0


def test_unknown_command_is_a_usage_error():
    out = subprocess.run([str(BEBOP), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice" in out.stderr
