"""Hot weight updates: load or receive, validate, stage, then commit (swap) or discard.

A new state dict reaches the serving model only whole and only validated (``checkpoint``): from a
checkpoint directory under the engine's weight roots, or broadcast by a trainer over
``torch.distributed`` (``weight_receiver``). It is then either swapped in between two scheduler
steps, or staged (Bebop's extension) until the gateway commits or discards it: the two-phase
reload, so an update that fails on one engine never reaches the others. Anything refused leaves
the old weights serving. Every answer is SGLang's ``{"success", "message", ...}``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .checkpoint import inside_roots, load_checked_state
from .protocol import DiskUpdate, DistributedUpdate, GroupJoin
from .weight_receiver import WeightReceiver

if TYPE_CHECKING:
    from ...model import Qwen3Model
    from .metrics import EngineMetrics
    from .scheduler import Scheduler

T = TypeVar("T")
# A slot staged by another reload this long ago is abandoned (its gateway died between stage and
# commit): a new reload may take it. Past the gateway's default request timeout (600 s).
STALE_STAGE_S = 900.0
IO_THREADS = 2  # one update at a time holds reload_lock; the second thread answers discard/leave meanwhile


@dataclass
class RetainedWeights:
    """What a two-phase commit replaced, kept on the host until the gateway settles the reload, so
    a rollback never depends on the old checkpoint directory still existing (rotated away, or the
    weights came over torch.distributed). One set at a time: the next commit replaces it."""

    state: dict[str, torch.Tensor]  # name -> CPU copy of the tensor the commit overwrote
    version: str
    model_path: str
    stage_id: str | None  # the reload that committed


@dataclass
class StagedWeights:
    """Validated weights held for a two-phase reload until the gateway commits or discards them."""

    state: dict[str, torch.Tensor]  # name -> tensor, shapes and dtypes of the serving model's
    version: str | None
    model_path: str | None  # None when they came over torch.distributed
    stage_id: str | None = None  # the reload that staged them (None: an older gateway, anyone's)
    staged_at: float = field(default_factory=time.monotonic)  # seconds, monotonic clock


class WeightUpdater:
    """The one place that changes the serving model's weights, its version and its checkpoint path.

    The blocking methods (loading, receiving, swapping) run on ``io`` through ``off_loop``, never on
    the event loop; ``reload_lock`` keeps to one update at a time. The swap itself runs on the
    scheduler's thread between two steps, so no step sees half a state dict.
    """

    def __init__(
        self,
        model: Qwen3Model,
        scheduler: Scheduler,
        metrics: EngineMetrics,
        model_path: str,
        weights_roots: Sequence[str] = (),
        receiver: WeightReceiver | None = None,
    ):
        self.model = model
        self.scheduler = scheduler
        self.metrics = metrics
        self.model_path = str(Path(model_path).resolve())  # the checkpoint now serving
        self.roots = (model_path, *weights_roots)  # where checkpoints may load from
        # Weights swap in place with unchanged shapes, so the bound on a pushed tensor never changes.
        self.largest_numel = max(p.numel() for p in model.state_dict().values())
        self.receiver = receiver or WeightReceiver()
        self.staged: StagedWeights | None = None
        self.retained: RetainedWeights | None = None
        # SGLang 0.5.23's weight-update session (/begin_weight_update {selector} ... /end_weight_update).
        # SGLang refuses distributed and tensor updates outside one; this engine also takes them
        # without one, for clients older than 0.5.23 (slime, AReaL).
        self.session: str | None = None
        self.reload_lock = threading.Lock()
        self.io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="bebop-weights")

    @property
    def version(self) -> str:
        return self.scheduler.weight_version

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking method on ``io`` and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # ------------------------------------------------------------------ loading and receiving
    def update_from_disk(self, update: DiskUpdate) -> dict:
        """Validate the checkpoint, then swap it in (or stage it with ``update.stage``)."""
        if "\x00" in update.model_path:  # Path.resolve would raise on it
            return {"success": False, "message": "model_path contains a NUL byte"}
        if not inside_roots(update.model_path, self.roots):
            self.metrics.weight_updates.labels("rejected").inc()
            return {
                "success": False,
                "message": f"checkpoint refused: {update.model_path} is outside this engine's weight roots",
            }
        with self.reload_lock:
            try:
                state = load_checked_state(update.model_path, self.model)
            except (ValueError, FileNotFoundError, OSError) as err:
                self.metrics.weight_updates.labels("rejected").inc()
                return {"success": False, "message": f"checkpoint refused, old weights still serving: {err}"}
            path = str(Path(update.model_path).resolve())
            return self._swap_or_stage(
                state, update.weight_version, update.abort_all, path, update.stage, update.stage_id
            )

    def update_from_distributed(self, update: DistributedUpdate) -> dict:
        """Receive the broadcast tensors, validate them, then swap them in (or stage them)."""
        with self.reload_lock:
            try:
                state = self.receiver.receive(
                    list(update.names),
                    list(update.dtypes),
                    list(update.shapes),
                    update.group_name,
                    self.model,
                )
            except ValueError as err:
                self.metrics.weight_updates.labels("rejected").inc()
                return {"success": False, "message": f"update refused, old weights still serving: {err}"}
            return self._swap_or_stage(
                state, update.weight_version, update.abort_all, None, update.stage, update.stage_id
            )

    def join_group(self, join: GroupJoin) -> None:
        """Join the trainer's process group (blocks until every rank has joined). Raises ValueError
        or RuntimeError saying why not."""
        self.receiver.init_group(
            join.master_address,
            join.master_port,
            join.rank_offset,
            join.world_size,
            join.group_name,
            join.backend,
        )

    def leave_group(self, group_name: str) -> None:
        """Raises ValueError when no group of that name was joined."""
        self.receiver.destroy_group(group_name)

    # ------------------------------------------------------------------ staging
    def commit_staged(self, abort_all: bool, stage_id: str | None = None) -> dict:
        with self.reload_lock:
            staged = self.staged
            if staged is None:
                return {"success": False, "message": "no staged weights to commit"}
            if not _owns(stage_id, staged.stage_id):
                return {"success": False, "message": f"the staged weights belong to reload {staged.stage_id}"}
            self.staged = None
            serving = self.model.state_dict()
            # Host copies: device memory stays the model's; a reload is rare next to the steps.
            kept = {name: serving[name].detach().to("cpu", copy=True) for name in staged.state}
            self.retained = RetainedWeights(kept, self.version, self.model_path, staged.stage_id)
            return self._swap(staged.state, staged.version, abort_all, staged.model_path)

    def roll_back(self, abort_all: bool, stage_id: str | None = None) -> dict:
        """Put back what the last two-phase commit replaced (weights, version, checkpoint path)."""
        with self.reload_lock:
            retained = self.retained
            if retained is None:
                return {"success": False, "message": "no retained weights to roll back to"}
            if not _owns(stage_id, retained.stage_id):
                return {
                    "success": False,
                    "message": f"the retained weights belong to reload {retained.stage_id}",
                }
            self.retained = None
            return self._swap(retained.state, retained.version, abort_all, retained.model_path)

    def settle(self, stage_id: str | None = None) -> dict:
        """The reload is settled: drop the retained copy (another reload's stays)."""
        with self.reload_lock:
            had = self.retained is not None and _owns(stage_id, self.retained.stage_id)
            if had:
                self.retained = None
            return {"success": True, "released": had}

    def discard_staged(self, stage_id: str | None = None) -> dict:
        """Drop the staged weights (the old ones never stopped serving); another reload's stay."""
        with self.reload_lock:
            had = self.staged is not None and _owns(stage_id, self.staged.stage_id)
            if had:
                self.staged = None
            return {"success": True, "discarded": had}

    # ------------------------------------------------------------------ session and version
    def open_session(self, selector: str) -> bool:
        """False when a session is already open. Called on the event loop only, so check-and-set is
        atomic."""
        if self.session is not None:
            return False
        self.session = selector
        return True

    def close_session(self) -> bool:
        """False when no session is open (event loop only, as ``open_session``)."""
        if self.session is None:
            return False
        self.session = None
        return True

    def set_version(self, version: str, abort_all: bool) -> Future:
        """Rename the serving weights between two steps (slime's /update_weight_version); with
        ``abort_all`` the requests in flight end first, so none mixes the two names."""

        def rename() -> None:
            if abort_all:
                self.scheduler.abort(None, "aborted for a weight version update")
            self.scheduler.weight_version = version

        return self.scheduler.call(rename)

    # ------------------------------------------------------------------ the swap
    def _swap_or_stage(
        self,
        state: dict[str, torch.Tensor],
        version: str | None,
        abort_all: bool,
        model_path: str | None,
        stage: bool,
        stage_id: str | None = None,
    ) -> dict:
        if stage:
            held = self.staged
            foreign = held is not None and not _owns(stage_id, held.stage_id)
            if foreign and time.monotonic() - held.staged_at < STALE_STAGE_S:
                return {
                    "success": False,
                    "message": f"another reload ({held.stage_id}) has weights staged here: "
                    "it must commit or discard them first",
                }
            self.staged = StagedWeights(state, version, model_path, stage_id)
            return {"success": True, "staged": True, "message": "weights validated and staged"}
        return self._swap(state, version, abort_all, model_path)

    def _swap(
        self, state: dict[str, torch.Tensor], version: str | None, abort_all: bool, model_path: str | None
    ) -> dict:
        """Copy validated tensors into the serving model between two steps (the target and the MTP
        head alike), and set the weight version; blocks until done. Returns the success answer."""

        def swap() -> None:
            if abort_all:
                self.scheduler.abort(None, "aborted for a weight update")
            with torch.no_grad():
                self.model.load_state_dict(state, strict=False)
            self.scheduler.weight_version = version or self.scheduler.weight_version
            if model_path is not None:
                self.model_path = model_path

        self.scheduler.call(swap).result()
        self.metrics.weight_updates.labels("success").inc()
        return {
            "success": True,
            "message": "weights updated",
            "weight_version": self.scheduler.weight_version,
        }


def _owns(caller: str | None, holder: str | None) -> bool:
    """Whether a call naming reload ``caller`` may act on what reload ``holder`` staged or kept: an
    unnamed call or an unnamed holder (an older gateway) matches any, so nothing old breaks."""
    return caller is None or holder is None or caller == holder
