"""Receiving weights from a trainer over ``torch.distributed`` (SGLang's distributed update path).

The trainer is rank 0 of a group it creates with every engine (``/init_weights_update_group``:
master address and port, this engine's ``rank_offset``, ``world_size``, backend gloo on CPU or
nccl on GPU). ``/update_weights_from_distributed`` then names the tensors (names, dtypes,
shapes) that rank 0 broadcasts, in that order. The engine receives them into fresh buffers,
validates them against the serving model, and only then swaps them in between two steps.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from ...model import Qwen3Model
from ..wire_dtypes import torch_dtype
from .checkpoint import check_tensors


class WeightReceiver:
    """One process group at a time; every call blocks until the trainer side has done its part."""

    def __init__(self) -> None:
        self.group_name: str | None = None
        self.backend: str | None = None
        self.lock = threading.Lock()

    def init_group(
        self, master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str
    ) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
        if not (0 < rank < world_size):
            raise ValueError(f"rank_offset must be in [1, world_size), got {rank} of {world_size}")
        with self.lock:
            if dist.is_initialized():
                dist.destroy_process_group()
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{master_address}:{master_port}",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=120),
            )
            self.group_name = group_name
            self.backend = backend

    def destroy_group(self, group_name: str) -> None:
        """Leave the group joined by ``init_group`` (SGLang's /destroy_weights_update_group)."""
        with self.lock:
            if self.group_name is None or group_name != self.group_name:
                raise ValueError(f"no weight update group named {group_name!r} to destroy")
            if dist.is_initialized():
                dist.destroy_process_group()
            self.group_name = self.backend = None

    def receive(
        self, names: list[str], dtypes: list[str], shapes: list[list[int]], group_name: str, model: Qwen3Model
    ) -> dict[str, torch.Tensor]:
        """Receive the broadcast tensors, then validate them (names, shapes, dtypes, finite)."""
        if self.group_name is None or not dist.is_initialized():
            raise ValueError("no weight update group: call /init_weights_update_group first")
        if group_name != self.group_name:
            raise ValueError(f"unknown group_name {group_name!r}; this engine joined {self.group_name!r}")
        if not (len(names) == len(dtypes) == len(shapes)) or not names:
            raise ValueError("names, dtypes and shapes must be non-empty lists of the same length")
        torch_dtypes = [torch_dtype(d) for d in dtypes]  # ValueError before anything is received
        received = {}
        # nccl moves CUDA buffers only; gloo here moves CPU ones (swapping copies them to the model)
        device = next(model.parameters()).device if self.backend == "nccl" else torch.device("cpu")
        if self.backend == "nccl" and device.type != "cuda":
            raise ValueError("the nccl backend needs an engine on CUDA (bebop engine --device cuda)")
        with self.lock:
            # Receive everything the trainer sends even if a name is bad, or the group deadlocks.
            for name, dtype, shape in zip(names, torch_dtypes, shapes, strict=True):
                buf = torch.empty([int(x) for x in shape], dtype=dtype, device=device)
                dist.broadcast(buf, src=0)
                received[name] = buf
        check_tensors(received, model.state_dict())
        return received
