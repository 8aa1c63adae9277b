"""EngineConfig: validated once when built, frozen after."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from bebop.service.engine.config import SPEC_MODES, EngineConfig
from bebop.service.engine.runner import SPEC_MODES as RUNNER_SPEC_MODES
from bebop.service.httpguard import MAX_BODY_BYTES


def test_defaults_are_valid_and_match_what_the_server_used_before():
    cfg = EngineConfig(model_path="m", weights_roots=["a", "b"])
    assert cfg.weights_roots == ("a", "b")  # a list from the CLI, held as a tuple
    assert (cfg.max_prompts, cfg.max_body_bytes, cfg.health_generate_timeout_s) == (
        4096,
        MAX_BODY_BYTES,
        30.0,
    )
    assert (cfg.keep_alive_s, cfg.shutdown_grace_s) == (5, 5)
    assert "seed" not in {f.name for f in dataclasses.fields(EngineConfig)}  # never read: removed


def test_the_config_cannot_change_after_validation():
    cfg = EngineConfig(model_path="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_len = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spec": "eagle"}, "spec must be one of"),
        ({"device": "tpu"}, "device must be"),
        ({"max_running": 0}, "max_running"),
        ({"max_len": 0}, "max_len"),
        ({"max_prompts": 0}, "max_prompts"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"draft_steps": -1}, "draft_steps"),
        ({"max_queue": -1}, "max_queue"),
        ({"keep_alive_s": 0}, "keep_alive_s"),
        ({"health_generate_timeout_s": -1.0}, "health_generate_timeout_s"),
        ({"weight_group_timeout_s": float("nan")}, "weight_group_timeout_s"),
        ({"weight_group_timeout_s": float("inf")}, "weight_group_timeout_s"),
        ({"weight_group_timeout_s": 0}, "weight_group_timeout_s"),
        ({"weight_version": "v" * 129}, "weight_version"),
        ({"weights_roots": [""]}, "weights_roots"),
        ({"model_path": ""}, "model_path"),
    ],
)
def test_bad_settings_are_refused_when_built(change, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**{"model_path": "m", **change})


def test_cuda_with_an_index_is_a_device():
    assert EngineConfig(model_path="m", device="cuda:1").device == "cuda:1"


def test_the_spec_modes_are_the_runners():
    assert SPEC_MODES == RUNNER_SPEC_MODES


def test_the_engine_cli_refuses_a_bad_setting_in_one_line():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "bebop"), "engine", "--weight-group-timeout", "nan"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "weight_group_timeout_s must be positive" in out.stderr
