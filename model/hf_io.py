"""Hugging Face format in and out: ``config.json`` + ``model.safetensors`` (MTP weights under ``mtp.*``).

The directory loads in ``transformers`` as a plain ``qwen3`` model (the ``mtp.*`` tensors are
unexpected keys there and ignored) and in SGLang, whose NEXTN loaders read
``num_nextn_predict_layers``.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .decoder import ModelConfig, Qwen3Model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MTP_LAYERS_KEY = "num_nextn_predict_layers"


def config_to_hf(cfg: ModelConfig) -> dict:
    """ModelConfig -> a ``qwen3`` config.json dict."""
    out = dict(cfg.extra)
    out.update(
        {
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "attention_bias": False,
            "torch_dtype": "float32",
            MTP_LAYERS_KEY: cfg.num_mtp_layers,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
        }
    )
    return out


def config_from_hf(raw: dict) -> ModelConfig:
    """A ``qwen3`` config.json dict -> ModelConfig; unknown keys are kept in ``extra``."""
    if raw.get("model_type") not in ("qwen3", None):
        raise ValueError(f"config.json model_type must be 'qwen3', got {raw.get('model_type')!r}")
    names = {f.name for f in fields(ModelConfig)} - {"extra", "num_mtp_layers", "rope_theta"}
    kwargs = {k: raw[k] for k in names if k in raw and raw[k] is not None}
    rope = raw.get("rope_parameters") or {}
    kwargs["rope_theta"] = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kwargs["num_mtp_layers"] = int(raw.get(MTP_LAYERS_KEY, 0) or 0)
    if isinstance(kwargs.get("eos_token_id"), list):
        kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
    if "head_dim" not in kwargs:
        kwargs["head_dim"] = raw["hidden_size"] // raw["num_attention_heads"]
    extra = {k: v for k, v in raw.items() if k not in names}
    return ModelConfig(**kwargs, extra=extra)


def save_model(model: Qwen3Model, directory: str | Path) -> Path:
    """Write config.json and model.safetensors (tied lm_head omitted, as Hugging Face does)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    return config_from_hf(json.loads(path.read_text()))


def load_model(
    directory: str | Path, dtype: torch.dtype = torch.float32, strict_mtp: bool = False
) -> Qwen3Model:
    """Load a directory written by ``save_model`` (or a Hugging Face qwen3 checkpoint).

    Missing ``mtp.*`` weights leave a freshly initialised head unless ``strict_mtp``.
    """
    cfg = load_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
    state = load_file(str(weights))
    model = Qwen3Model(cfg)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    missing_backbone = [k for k in missing if not k.startswith("mtp.")]
    if missing_backbone or (strict_mtp and missing):
        raise ValueError(f"checkpoint {directory} lacks weights: {missing[:5]}")
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {directory} has unexpected weights: {result.unexpected_keys[:5]}")
    return model.to(dtype)
