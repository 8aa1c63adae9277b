"""``bebop sglang-server -- <sglang args>``: check the speculative flags, then run SGLang's server
with the plugin allowed (``SGLANG_PLUGINS`` gets ``bebop``).

The checks are read from the arguments alone (SGLang is not imported), so a wrong flag is reported
in a second, one line each, instead of after a model load. They mirror what SGLang 0.5.23 requires
of rejection sampling (sglang/srt/arg_groups/speculative_hook.py:1210-1249) plus what Bebop needs to
be the kernel that runs: without ``--speculative-use-rejection-sampling`` SGLang verifies
target-only and never calls the patched kernel.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

PLUGIN_NAME = "bebop"  # the entry point's name in pyproject.toml
# Algorithms whose draft workers hand the verify a target-vocabulary draft law q
# (speculative_hook.py:1211-1219; NEXTN resolves to EAGLE).
REJECTION_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN")
# Algorithms that draft from MTP weights inside the target checkpoint.
MTP_ALGORITHMS = ("NEXTN",)
MTP_WEIGHT_PREFIX = "mtp."  # Qwen3-Next-style names, as `bebop train-mtp` writes them
MTP_SIDE_FILE = "mtp.safetensors"  # the head `bebop train-mtp` writes beside a Hugging Face checkpoint


def _flag_parser() -> argparse.ArgumentParser:
    """The SGLang flags that matter here; everything else passes through untouched."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--model-path", "--model")
    p.add_argument("--speculative-algorithm")
    p.add_argument("--speculative-draft-model-path", "--speculative-draft-model")
    p.add_argument("--speculative-num-steps", type=int)
    p.add_argument("--speculative-eagle-topk", type=int)
    p.add_argument("--speculative-num-draft-tokens", type=int)
    p.add_argument("--speculative-accept-threshold-single", type=float, default=1.0)
    p.add_argument("--speculative-accept-threshold-acc", type=float, default=1.0)
    p.add_argument("--speculative-use-rejection-sampling", action="store_true")
    p.add_argument("--speculative-use-block-verification", action="store_true")
    return p


def check_flags(sglang_args: Sequence[str]) -> list[str]:
    """What is wrong with ``sglang_args`` for Bebop's rejection-sampling verify, one line per problem."""
    try:
        flags, _ = _flag_parser().parse_known_args(list(sglang_args))
    except SystemExit:  # a typed flag without a value, or a value of the wrong type
        return ["cannot read the speculative flags: each needs a value of the right type"]
    problems = []
    if not flags.model_path:
        problems.append("--model-path is missing")
    algorithm = (flags.speculative_algorithm or "").upper()
    if not algorithm:
        problems.append("--speculative-algorithm is missing: use NEXTN (MTP heads), EAGLE or EAGLE3")
    elif algorithm not in REJECTION_ALGORITHMS:
        problems.append(
            f"--speculative-algorithm {flags.speculative_algorithm}: rejection sampling needs one of "
            f"{', '.join(REJECTION_ALGORITHMS)}"
        )
    if not flags.speculative_use_rejection_sampling:
        problems.append(
            "--speculative-use-rejection-sampling is missing: without it SGLang verifies target-only "
            "(argmax drafts) and Bebop's kernel never runs"
        )
    if flags.speculative_eagle_topk != 1:
        got = (
            "not set (SGLang would choose)"
            if flags.speculative_eagle_topk is None
            else flags.speculative_eagle_topk
        )
        problems.append(f"--speculative-eagle-topk must be 1 (a chain of drafts), got {got}")
    if flags.speculative_num_steps is None:
        problems.append("--speculative-num-steps is missing: set the draft depth (e.g. 3)")
    elif flags.speculative_num_steps < 1:
        problems.append(f"--speculative-num-steps must be at least 1, got {flags.speculative_num_steps}")
    elif flags.speculative_num_draft_tokens not in (None, flags.speculative_num_steps + 1):
        problems.append(
            f"--speculative-num-draft-tokens must be --speculative-num-steps + 1 = "
            f"{flags.speculative_num_steps + 1} for a chain, got {flags.speculative_num_draft_tokens}"
        )
    for name in ("single", "acc"):
        value = getattr(flags, f"speculative_accept_threshold_{name}")
        if value != 1.0:
            problems.append(
                f"--speculative-accept-threshold-{name} must be 1.0 (rejection sampling is exact), "
                f"got {value}"
            )
    problems += _check_draft(flags, algorithm)
    return problems


def _check_draft(flags: argparse.Namespace, algorithm: str) -> list[str]:
    """The draft weights: a path is required (SGLang does not default it for dense Qwen3), a local
    one must exist, and a NEXTN draft must hold ``mtp.*`` weights."""
    draft = flags.speculative_draft_model_path
    if not draft:
        return [
            "--speculative-draft-model-path is missing: for MTP heads pass the checkpoint itself "
            "(the same path as --model-path)"
        ]
    path = Path(draft).expanduser()
    looks_local = path.exists() or draft.startswith(("/", ".", "~"))
    if not looks_local:  # a Hugging Face repo id: SGLang resolves it
        return []
    if not (path / "config.json").is_file():
        return [f"--speculative-draft-model-path {draft}: no config.json there"]
    if algorithm in MTP_ALGORITHMS and not has_mtp_weights(path):
        return [
            f"--speculative-draft-model-path {draft}: no {MTP_WEIGHT_PREFIX}* weights for NEXTN; "
            f"train a head with `bebop train-mtp --model {draft}`"
        ]
    return []


def has_mtp_weights(model_dir: Path) -> bool:
    """Whether a checkpoint holds MTP weights: ``mtp.safetensors`` beside it, an index naming
    ``mtp.*`` tensors, or a single-file checkpoint with ``mtp.*`` tensors."""
    if (model_dir / MTP_SIDE_FILE).is_file():
        return True
    for index in model_dir.glob("*.safetensors.index.json"):
        names = json.loads(index.read_text()).get("weight_map", {})
        if any(name.startswith(MTP_WEIGHT_PREFIX) for name in names):
            return True
    from safetensors import safe_open

    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            if any(name.startswith(MTP_WEIGHT_PREFIX) for name in f.keys()):  # noqa: SIM118
                return True
    return False


def plugin_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``bebop`` allowed: added to a non-empty SGLANG_PLUGINS; an unset or empty one
    already loads every installed plugin (sglang/srt/plugins/__init__.py:52-55), so it stays."""
    env = dict(env)
    allowed = [name.strip() for name in env.get("SGLANG_PLUGINS", "").split(",") if name.strip()]
    if allowed and PLUGIN_NAME not in allowed:
        env["SGLANG_PLUGINS"] = ",".join([*allowed, PLUGIN_NAME])
    return env


def server_command(sglang_args: Sequence[str], python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "sglang.launch_server", *sglang_args]


def run_sglang_server(
    sglang_args: Sequence[str], *, python: str | None = None, check: bool = True, dry_run: bool = False
) -> int:
    """Check the flags (unless ``check`` is False), then run SGLang's server; returns its exit code.

    Exit code 2: a flag problem (each printed on stderr, one line each) or SGLang missing.
    """
    sglang_args = list(sglang_args)
    if sglang_args[:1] == ["--"]:
        sglang_args = sglang_args[1:]
    problems = check_flags(sglang_args) if check else []
    for problem in problems:
        print(f"bebop sglang-server: {problem}", file=sys.stderr)
    if problems:
        return 2
    if python is None and not _sglang_importable():
        print(
            "bebop sglang-server: sglang is not installed in this environment "
            "(pip install sglang==0.5.23 beside bebop-rollout, or pass --python)",
            file=sys.stderr,
        )
        return 2
    if any(arg == "--speculative-use-block-verification" for arg in sglang_args):
        logger.warning(
            "block verification is delegated to SGLang's own kernel (Bebop verifies token by token)"
        )
    command = server_command(sglang_args, python)
    if dry_run:
        print(" ".join(command))
        return 0
    env = plugin_env(dict(os.environ))
    logger.info("SGLANG_PLUGINS=%r %s", env.get("SGLANG_PLUGINS", ""), " ".join(command))
    return subprocess.call(command, env=env)


def _sglang_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang") is not None
