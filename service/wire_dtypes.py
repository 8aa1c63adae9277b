"""The tensor dtypes a weight push may carry, by the names SGLang's protocol uses on the wire.

One table for the trainer (``weight_push``), the gateway's request schema and the engine's receiver.
Importable without torch: the gateway image has none, and only needs the names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

WireDtype = Literal["float32", "float16", "bfloat16", "float64"]
WIRE_DTYPES: tuple[str, ...] = get_args(WireDtype)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a wire name; ValueError naming the allowed ones otherwise."""
    import torch

    if name not in WIRE_DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {list(WIRE_DTYPES)}")
    return getattr(torch, name)


def wire_name(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype; ValueError if a push cannot carry it."""
    name = str(dtype).removeprefix("torch.")
    if name not in WIRE_DTYPES:
        raise ValueError(f"dtype {dtype} cannot be pushed; allowed: {list(WIRE_DTYPES)}")
    return name
