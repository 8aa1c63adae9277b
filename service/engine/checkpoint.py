"""Checking weights before a hot swap: a bad checkpoint or push must never reach the serving model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...model import Qwen3Model
from ...model.hf_io import WEIGHTS_FILE, load_config


def inside_roots(model_path: str | Path, roots: Iterable[str | Path]) -> bool:
    """Whether ``model_path``, symlinks and ``..`` resolved, is one of ``roots`` or lies under one:
    a client may name any checkpoint, but the engine reads only where its operator put weights."""
    resolved = Path(model_path).resolve()
    return any(resolved == r or r in resolved.parents for r in (Path(root).resolve() for root in roots))


def load_checked_state(model_path: str | Path, current: Qwen3Model) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, checked against the serving model: same architecture, every tensor
    present with the same shape and dtype, all finite. Raises ValueError saying what is wrong."""
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"{model_path} is not a directory")
    cfg = load_config(path)
    ours = current.config
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ):
        if getattr(cfg, name) != getattr(ours, name):
            raise ValueError(
                f"config {name} is {getattr(cfg, name)}, the serving model has {getattr(ours, name)}"
            )
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {model_path}")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read {weights}: {err}") from None
    expected = current.state_dict()
    if ours.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    if current.mtp is not None and not any(k.startswith("mtp.") for k in state):
        raise ValueError(
            "the checkpoint has no mtp.* weights: the target and the draft head are updated together"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"tensor names differ: missing {missing[:3]}")
    check_tensors(state, expected)
    return state


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every tensor is one the serving model has (``expected``: its state dict), with the same shape
    and dtype, and finite. A full checkpoint and a partial distributed push both pass through here.
    Raises ValueError saying what is wrong."""
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"unknown tensor names {extra[:3]}")
    for name, t in tensors.items():
        ref = expected[name]
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, expected {ref.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or Inf")
