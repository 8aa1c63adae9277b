"""``bebop sglang-server``: flag checks (one line per problem), the command it runs, SGLANG_PLUGINS."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from bebop.model.demo_path import demo_model_dir
from bebop.service.sglang.launcher import check_flags, has_mtp_weights, plugin_env, run_sglang_server
from tests.procs import BEBOP
from tests.service.sglang.conftest import GOOD_FLAGS


def good_flags(model: str) -> list[str]:
    return [model if arg == "MODEL" else arg for arg in GOOD_FLAGS]


def without(flags: list[str], flag: str, takes_value: bool = True) -> list[str]:
    i = flags.index(flag)
    return flags[:i] + flags[i + 1 + int(takes_value) :]


def replaced(flags: list[str], flag: str, value: str) -> list[str]:
    i = flags.index(flag)
    return [*flags[: i + 1], value, *flags[i + 2 :]]


@pytest.fixture(scope="module")
def demo() -> str:
    path = demo_model_dir()
    assert has_mtp_weights(path), "the shipped demo model carries its MTP head under mtp.*"
    return str(path)


def test_good_flags_pass(demo):
    assert check_flags(good_flags(demo)) == []
    assert check_flags(without(good_flags(demo), "--speculative-num-draft-tokens")) == []


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (
            lambda f: without(f, "--speculative-use-rejection-sampling", False),
            "--speculative-use-rejection-sampling",
        ),
        (lambda f: replaced(f, "--speculative-algorithm", "NGRAM"), "--speculative-algorithm"),
        (lambda f: without(f, "--speculative-algorithm"), "--speculative-algorithm"),
        (lambda f: replaced(f, "--speculative-eagle-topk", "4"), "--speculative-eagle-topk"),
        (lambda f: without(f, "--speculative-eagle-topk"), "--speculative-eagle-topk"),
        (lambda f: without(f, "--speculative-num-steps"), "--speculative-num-steps"),
        (lambda f: replaced(f, "--speculative-num-draft-tokens", "6"), "--speculative-num-draft-tokens"),
        (
            lambda f: [*f, "--speculative-accept-threshold-single", "0.9"],
            "--speculative-accept-threshold-single",
        ),
        (lambda f: [*f, "--speculative-accept-threshold-acc", "0.5"], "--speculative-accept-threshold-acc"),
        (lambda f: without(f, "--speculative-draft-model-path"), "--speculative-draft-model-path"),
        (
            lambda f: replaced(f, "--speculative-draft-model-path", "/no/such/dir"),
            "--speculative-draft-model-path",
        ),
        (lambda f: without(f, "--model-path"), "--model-path"),
    ],
)
def test_each_wrong_flag_gives_one_line_naming_it(demo, edit, names):
    problems = check_flags(edit(good_flags(demo)))
    assert len(problems) == 1, problems
    assert problems[0].startswith(names) and "\n" not in problems[0]


def test_nextn_draft_without_mtp_weights_says_how_to_train_one(tmp_path, demo):
    (tmp_path / "config.json").write_text("{}")
    save_file({"model.norm.weight": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    problems = check_flags(replaced(good_flags(demo), "--speculative-draft-model-path", str(tmp_path)))
    assert len(problems) == 1 and "bebop train-mtp" in problems[0]
    save_file({"mtp.norm.weight": torch.ones(4)}, str(tmp_path / "mtp.safetensors"))
    assert check_flags(replaced(good_flags(demo), "--speculative-draft-model-path", str(tmp_path))) == []


def test_several_problems_are_all_reported():
    problems = check_flags(["--speculative-algorithm", "STANDALONE", "--speculative-eagle-topk", "2"])
    assert len(problems) >= 5


def test_plugin_env_allows_bebop_without_narrowing_an_open_allow_list():
    assert "SGLANG_PLUGINS" not in plugin_env({})  # unset: SGLang loads every installed plugin
    assert plugin_env({"SGLANG_PLUGINS": "other"})["SGLANG_PLUGINS"] == "other,bebop"
    assert plugin_env({"SGLANG_PLUGINS": "bebop,other"})["SGLANG_PLUGINS"] == "bebop,other"


def test_dry_run_prints_sglangs_launch_command(demo, capsys):
    assert run_sglang_server(["--", *good_flags(demo)], python="/x/python", dry_run=True) == 0
    assert capsys.readouterr().out.split() == ["/x/python", "-m", "sglang.launch_server", *good_flags(demo)]


def test_cli_exits_2_with_one_line_per_problem():
    proc = subprocess.run(
        [BEBOP, "sglang-server", "--dry-run", "--", "--model-path", "m", "--speculative-algorithm", "NEXTN"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bebop sglang-server: ")]
    assert len(lines) == 4, proc.stderr  # rejection sampling, topk, num-steps, draft path


def test_cli_without_sglang_installed_says_so(demo):
    proc = subprocess.run(
        [BEBOP, "sglang-server", "--dry-run", "--", *good_flags(demo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:  # sglang is installed beside bebop here: the command is printed
        assert "sglang.launch_server" in proc.stdout
    else:
        assert proc.returncode == 2 and "sglang is not installed" in proc.stderr


@pytest.mark.sglang
def test_checked_flag_names_are_sglangs_own(probe_result):
    parsed = probe_result["parsed_flags"]
    assert parsed["speculative_algorithm"] == "NEXTN"
    assert parsed["speculative_eagle_topk"] == 1 and parsed["speculative_num_steps"] == 3
    assert parsed["speculative_num_draft_tokens"] == 4
    assert parsed["speculative_use_rejection_sampling"] is True
    assert parsed["speculative_accept_threshold_single"] == 1.0 == parsed["speculative_accept_threshold_acc"]


def test_plugin_modules_import_without_sglang():
    code = (
        "import sys; sys.modules['sglang'] = None\n"  # any `import sglang` now fails
        "import bebop.service.sglang, bebop.service.sglang.plugin, bebop.service.sglang.kernel, "
        "bebop.service.sglang.launcher\n"
        "from bebop.service.sglang import plugin\n"
        "try:\n    plugin.load()\nexcept ImportError:\n    print('needs sglang')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "needs sglang"
