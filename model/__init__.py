"""The Qwen3-architecture model with its MTP draft head, and Hugging Face format I/O.

The names below load on first use (PEP 562) rather than at import: the gateway image has no torch
and still imports ``bebop.model.demo_path`` to find the shipped demo model.
"""

from importlib import import_module
from typing import Any

# public name -> the module of this package that defines it
_EXPORTS = {
    "DecoderOutput": "decoder",
    "LayerCache": "decoder",
    "ModelConfig": "decoder",
    "PoolCache": "decoder",
    "Qwen3Model": "decoder",
    "load_model": "hf_io",
    "save_model": "hf_io",
    "MTPHead": "mtp",
    "MTPOutput": "mtp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
