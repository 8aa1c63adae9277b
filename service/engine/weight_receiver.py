"""Receiving weights from a trainer over ``torch.distributed`` (SGLang's distributed update path).

The trainer is rank 0 of a group it creates with every engine (``/init_weights_update_group``:
master address and port, this engine's ``rank_offset``, ``world_size``, backend gloo on CPU or
nccl on GPU). ``/update_weights_from_distributed`` then names the tensors (names, dtypes,
shapes) that rank 0 broadcasts, in that order. The engine receives them into fresh buffers,
validates them against the serving model, and only then swaps them in between two steps.

A push that fails for one member must not leave the others waiting out the group timeout (they are
paused meanwhile). Two facts about gloo (torch 2.13) shape what happens then:
- a rank that destroys its group closes its connections, and a peer's receive that is already
  posted fails at once ("Connection closed by peer"); so an engine that refuses a push before
  receiving leaves the group, and the trainer's broadcast fails at once;
- a receive posted *after* the sender left waits the whole group timeout, and destroying a group
  with such a receive pending blocks until then too. So receiving polls its work and gives up when
  told to leave (``/destroy_weights_update_group``, which the gateway and the trainer send after a
  failed push), and the blocked destroy runs in a background thread while the engine serves on.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ...model import Qwen3Model
from ..wire_dtypes import torch_dtype
from .checkpoint import check_tensors

# Appended to a refusal that made the engine leave the group (``WeightReceiver.leave_if_member``).
LEFT_GROUP = (
    "; this engine left the weight update group so that the trainer and the other engines stop "
    "waiting for it: create the group again before the next push"
)


class WeightReceiver:
    """One process group at a time; every call blocks until the trainer side has done its part,
    except leaving, which also stops a receive in progress."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.group_name: str | None = None
        self.backend: str | None = None
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.leave_requested = threading.Event()
        self.receiving = False  # under the lock: a receive is waiting for tensors

    def init_group(
        self, master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str
    ) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
        if not (0 < rank < world_size):
            raise ValueError(f"rank_offset must be in [1, world_size), got {rank} of {world_size}")
        with self.lock:  # waits for an abandoned group's destroy (at most the group timeout)
            self.group_name = self.backend = None  # during the rendezvous there is no usable group
            if dist.is_initialized():
                dist.destroy_process_group()
            self.leave_requested.clear()
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{master_address}:{master_port}",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=self.timeout_s),
            )
            self.group_name = group_name
            self.backend = backend

    def destroy_group(self, group_name: str) -> None:
        """Leave the group joined by ``init_group`` (SGLang's /destroy_weights_update_group). A
        receive in progress stops and leaves the group itself: this returns at once either way.
        (While a join is in its rendezvous there is no group to name: a ValueError.)"""
        if self.group_name is None or group_name != self.group_name:
            raise ValueError(f"no weight update group named {group_name!r} to destroy")
        if not self.leave_if_member(group_name) and self.receiving:
            self.leave_requested.set()

    def leave_if_member(self, group_name: object) -> bool:
        """Leave the group when it is the one named: what an engine does when it refuses a push it
        will not receive, so that the trainer's broadcast fails at once. Returns whether it left.
        Never waits: while the lock is busy (a join, a receive, a destroy) it leaves nothing."""
        if self.group_name is None or group_name != self.group_name:
            return False
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.group_name is None or group_name != self.group_name:
                return False
            self._leave()
            return True
        finally:
            self.lock.release()

    def _leave(self) -> None:
        """Under ``self.lock``."""
        self.group_name = self.backend = None
        if dist.is_initialized():
            dist.destroy_process_group()

    def receive(
        self, names: list[str], dtypes: list[str], shapes: list[list[int]], group_name: str, model: Qwen3Model
    ) -> dict[str, torch.Tensor]:
        """Receive the broadcast tensors, then validate them (names, shapes, dtypes, finite).

        A manifest refused before receiving makes this engine leave the group; once receiving
        starts, every announced tensor is received whatever its verdict, so the broadcast completes
        for everyone and the refusal comes after. A broadcast that fails (a peer left) or that this
        engine is told to leave ends the receive with a ValueError."""
        self._check_member(group_name)  # fail fast, without waiting for the lock
        self.lock.acquire()
        handed_over = False  # the lock goes to the thread that destroys an abandoned group
        received: dict[str, torch.Tensor] = {}
        try:
            self._check_member(group_name)  # again: the group may have changed while we waited
            try:
                torch_dtypes, device = self._plan(names, dtypes, shapes, model)
            except ValueError as err:
                self._leave()
                raise ValueError(f"{err}{LEFT_GROUP}") from None
            self.receiving = True
            try:
                for name, dtype, shape in zip(names, torch_dtypes, shapes, strict=True):
                    buf = torch.empty([int(x) for x in shape], dtype=dtype, device=device)
                    self._wait(dist.broadcast(buf, src=0, async_op=True))
                    received[name] = buf
            except _Abandoned:
                self.group_name = self.backend = None
                # destroy blocks until the pending receive times out: hand it and the lock to a thread
                threading.Thread(target=self._destroy_then_release, daemon=True).start()
                handed_over = True
                raise ValueError(
                    f"the broadcast failed after {len(received)} of {len(names)} tensors: the engine was "
                    "told to leave the weight update group while it waited (the push failed elsewhere); "
                    "create the group again before the next push"
                ) from None
            except (RuntimeError, ValueError) as err:  # DistBackendError included: a peer left or died
                self._leave()  # the group is broken for every later call
                raise ValueError(
                    f"the broadcast failed after {len(received)} of {len(names)} tensors: "
                    f"{str(err).splitlines()[0][:300]}{LEFT_GROUP}"
                ) from None
            finally:
                self.receiving = False
            if self.leave_requested.is_set():  # told to leave as the last tensor came: leave now
                self.leave_requested.clear()
                self._leave()
        finally:
            if not handed_over:
                self.lock.release()
        check_tensors(received, model.state_dict())
        return received

    def _check_member(self, group_name: str) -> None:
        if self.group_name is None or not dist.is_initialized():
            raise ValueError("no weight update group: call /init_weights_update_group first")
        if group_name != self.group_name:
            raise ValueError(f"unknown group_name {group_name!r}; this engine joined {self.group_name!r}")

    def _wait(self, work: dist.Work) -> None:
        """Wait for one receive, giving up when told to leave. Polling, because a gloo receive
        cannot be cancelled and a blocking wait would hold the engine until the group timeout."""
        while not work.is_completed():
            if self.leave_requested.is_set():
                raise _Abandoned
            time.sleep(0.002)
        work.wait()  # raises the receive's error, if any

    def _destroy_then_release(self) -> None:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        finally:
            self.leave_requested.clear()
            self.lock.release()

    def _plan(
        self, names: list[str], dtypes: list[str], shapes: list[list[int]], model: Qwen3Model
    ) -> tuple[list[torch.dtype], torch.device]:
        """The dtypes and the device to receive into; ValueError for a manifest that cannot be received."""
        if not (len(names) == len(dtypes) == len(shapes)) or not names:
            raise ValueError("names, dtypes and shapes must be non-empty lists of the same length")
        torch_dtypes = [torch_dtype(d) for d in dtypes]
        # nccl moves CUDA buffers only; gloo here moves CPU ones (swapping copies them to the model)
        device = next(model.parameters()).device if self.backend == "nccl" else torch.device("cpu")
        if self.backend == "nccl" and device.type != "cuda":
            raise ValueError("the nccl backend needs an engine on CUDA (bebop engine --device cuda)")
        return torch_dtypes, device


class _Abandoned(Exception):
    """The engine was told to leave the group while a receive was pending."""
