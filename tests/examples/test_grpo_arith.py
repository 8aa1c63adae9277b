"""examples/grpo_arith.py end to end: a real ``bebop serve``, two GRPO steps, both reload paths (~30 s)."""

import json
import random
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "grpo_arith.py"


def test_two_steps_reload_from_disk_then_push(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--steps", "2", "--prompts", "2", "--group", "4"]
    cmd += ["--max-new-tokens", "24", "--max-running", "8", "--out", str(out)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**_env(), "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "rejection" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["reload"] for s in steps] == ["disk", "push"]  # both hot-reload paths ran
    # step 2 sampled under the weights step 1 loaded from disk; after it the engines serve step-2 (pushed)
    assert steps[0]["sampled_versions"] == ["default"]
    assert steps[1]["sampled_versions"] == ["step-1"]
    assert steps[1]["served_version"] == ["step-2"]
    for s in steps:
        assert 0.0 <= s["reward"] <= 1.0
        assert 0.0 < s["acceptance"] <= 1.0 and s["entropy"] >= 0.0
        assert s["logp_gap"] < 0.05  # the engine's sampling log-probs match the trainer's own


def _env():
    import os

    return dict(os.environ)


def _example_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("grpo_arith", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_novelty_counts_words_no_sibling_uses_within_each_group_only():
    novelty = _example_module().novelty
    texts = [
        " the fox ran.",  # "ran" is its own: 1 of 3 words
        " the fox sat, the fox slept.",  # "sat", "slept": 2 of 4 distinct words
        " a fox ran.",  # group 2: all 3 words its own (group 1's words do not count)
        "",  # an empty completion earns nothing
    ]
    assert novelty(texts, group=2) == [1 / 3, 2 / 4, 1.0, 0.0]


def test_slope_ratio_interval_covers_the_true_ratio_and_excludes_one():
    g = _example_module()
    rng = random.Random(0)

    def run(slope: float) -> list[dict]:  # 20 steps of 64 samples: acceptance = 0.9 + slope * entropy + noise
        steps = []
        for _ in range(20):
            ents = [rng.uniform(0.5, 2.5) for _ in range(64)]
            steps.append({"samples": [(e, 0.9 + slope * e + rng.gauss(0, 0.05)) for e in ents]})
        return steps

    target_only, rejection = run(-0.2), run(-0.05)
    assert abs(g.sample_slope(target_only) + 0.2) < 0.02
    lo, hi = g.slope_ratio_ci(rejection, target_only, draws=300)
    assert lo < 0.25 < hi and hi < 0.5  # the true ratio inside, "at most half" decided
