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


def test_bench_engine_json_reports_interleaved_rounds_and_the_ceiling():
    cmd = [str(BEBOP), "bench", "engine", "--batch", "2", "--temperature", "1.0", "--new-tokens", "8"]
    out = subprocess.run(
        [*cmd, "--prompts", "4", "--rounds", "2", "--no-hf", "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["prompts"] == 4 and report["rounds"] == 2
    runs = {row["spec"]: row for row in report["rows"]}
    assert set(runs) == {"none", "target_only", "rejection"}
    for row in runs.values():  # all rounds' tokens over all rounds' seconds: within the rounds' rates
        assert len(row["tokens_per_s_runs"]) == 2
        assert min(row["tokens_per_s_runs"]) <= row["tokens_per_s"] <= max(row["tokens_per_s_runs"])
    assert report["speedup"]["b2"] == runs["rejection"]["tokens_per_s"] / runs["none"]["tokens_per_s"]
    assert report["efficiency"]["b2"] == report["speedup"]["b2"] / report["ceiling"]["b2"]
    assert runs["rejection"]["accept_length"] > 1 and runs["none"]["accept_length"] == 1


def test_unknown_command_is_a_usage_error():
    out = subprocess.run([str(BEBOP), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice" in out.stderr
