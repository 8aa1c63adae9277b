"""Trainer side of the distributed weight push: broadcast new weights straight into the engines.

The trainer is rank 0 of a process group with every engine; engine i joins at its rank offset.
A push announces what it is about to broadcast (names, dtypes, shapes, in order), then broadcasts
each tensor; every engine validates what it received before swapping it in.

Two ways in:
- through the gateway (``RolloutClient.init_weights_group`` / ``push_weights``): the gateway
  fans the calls out and makes the update all or nothing across engines;
- straight to engines (``WeightBroadcaster``), SGLang's protocol with no gateway.
Both use the helpers here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import timedelta

import httpx
import torch
import torch.distributed as dist

from .wire_dtypes import wire_name

log = logging.getLogger(__name__)


class WeightPushError(RuntimeError):
    """An engine or the gateway refused or failed an update; ``details`` holds their answers."""

    def __init__(self, message: str, details: object):
        super().__init__(f"{message}: {details}")
        self.message = message
        self.details = details


def tensor_manifest(named_tensors: dict[str, torch.Tensor], group_name: str) -> dict:
    """The announcement the receivers need to allocate buffers, in broadcast order."""
    names = list(named_tensors)
    dtypes = []
    for name in names:
        try:
            dtypes.append(wire_name(named_tensors[name].dtype))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return {
        "names": names,
        "dtypes": dtypes,
        "shapes": [list(named_tensors[n].shape) for n in names],
        "group_name": group_name,
    }


def join_as_rank0(
    master_address: str, master_port: int, world_size: int, backend: str, timeout_s: float
) -> None:
    """Create the group as its rank 0; the engines join from their side at the same time."""
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{master_address}:{master_port}",
        rank=0,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def broadcast_until_answered(
    named_tensors: dict[str, torch.Tensor], answer: Future, failed: Callable[[object], bool], timeout_s: float
) -> object:
    """Broadcast every tensor from rank 0 while the receivers' HTTP call runs, and return its answer.

    If that call is refused before the receivers took the tensors (bad request, a group that no
    longer matches), or the broadcast itself fails (an engine that refused left the group, which
    closes its connections), the broadcast can never complete: raise WeightPushError instead of
    waiting out the timeout. The group is then out of step: the caller leaves it (``dist`` calls on
    this rank return at once after a failed send), which frees the engines still inside the
    broadcast, and creates it again before the next push.
    """
    # gloo sends CPU tensors, nccl CUDA ones: move only for gloo. The list keeps them alive until done.
    on_cpu = dist.get_backend() == "gloo"
    sent = [
        t.detach().contiguous().cpu() if on_cpu else t.detach().contiguous() for t in named_tensors.values()
    ]
    works = [dist.broadcast(t, src=0, async_op=True) for t in sent]
    deadline = time.monotonic() + timeout_s
    while not all(w.is_completed() for w in works):
        if answer.done() and answer.exception() is not None:  # the HTTP call itself failed
            raise WeightPushError(
                "the update call failed before the engines received the weights; "
                "create the weight group again before the next push",
                {"call_error": f"{type(answer.exception()).__name__}: {answer.exception()}"},
            )
        if answer.done() and failed(answer.result()):
            raise WeightPushError(
                "the update was refused before the engines received the weights; "
                "create the weight group again before the next push",
                answer.result(),
            )
        if time.monotonic() > deadline:
            raise WeightPushError("the broadcast did not complete", {"timeout_s": timeout_s})
        time.sleep(0.005)
    for i, w in enumerate(works):
        try:
            w.wait()
        except RuntimeError as err:  # DistBackendError included: a receiver left or died
            raise WeightPushError(
                f"the broadcast failed at tensor {i} of {len(works)} (an engine refused the update and "
                "left the group, or died); create the weight group again before the next push",
                {"broadcast_error": str(err).splitlines()[0][:300]},
            ) from None
    return answer.result(timeout=timeout_s)


def answers_or_first_refusal(answers: dict[str, Future], refused: Callable[[dict], bool]) -> dict[str, dict]:
    """Every engine's answer, or as soon as one engine refuses, the answers in so far: the others may be
    waiting inside a broadcast that can no longer complete, so waiting for them would wait for a timeout."""
    got = {}
    by_future = {f: url for url, f in answers.items()}
    for f in as_completed(by_future):
        got[by_future[f]] = f.result()
        if refused(got[by_future[f]]):
            break
    return got


# How long a failed push waits for the answers of engines it freed by leaving the group (they fail
# their receive at once; this bounds an engine that is stuck for another reason).
LATE_ANSWER_S = 30.0


def _answer_within(answer: Future, timeout_s: float) -> dict:
    try:
        return answer.result(timeout=timeout_s)
    except TimeoutError:
        return {"success": False, "message": f"no answer within {timeout_s:g} s of the failed push"}


def _as_dict(details: object) -> dict:
    return details if isinstance(details, dict) else {"detail": details}


class WeightBroadcaster:
    """Rank 0 of a group with engines directly (no gateway). A context manager: leaves the group."""

    def __init__(
        self,
        engine_urls: list[str],
        master_port: int,
        master_address: str = "127.0.0.1",
        group_name: str = "weight_update_group",
        backend: str = "gloo",
        timeout_s: float = 120.0,
    ):
        self.urls = [u.rstrip("/") for u in engine_urls]
        self.group_name = group_name
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(max_workers=len(self.urls) + 1)  # + one that gathers answers
        world = len(self.urls) + 1
        # The engines block in their rendezvous until rank 0 arrives: post first, then join.
        joins = [
            self.pool.submit(
                self._post,
                url,
                "/init_weights_update_group",
                {
                    "master_address": master_address,
                    "master_port": master_port,
                    "rank_offset": i + 1,
                    "world_size": world,
                    "group_name": group_name,
                    "backend": backend,
                },
            )
            for i, url in enumerate(self.urls)
        ]
        join_as_rank0(master_address, master_port, world, backend, timeout_s)
        answers = {url: f.result() for url, f in zip(self.urls, joins, strict=True)}
        failed = {u: a for u, a in answers.items() if not a.get("success")}
        if failed:
            raise WeightPushError("engines could not join the group", failed)

    def push(self, named_tensors: dict[str, torch.Tensor], weight_version: str) -> dict[str, dict]:
        """Broadcast ``named_tensors`` to every engine; returns each engine's answer.

        Raises WeightPushError when any engine refused (its old weights keep serving; the caller
        decides whether to roll the others back; the gateway does that for you).
        """
        body = {**tensor_manifest(named_tensors, self.group_name), "weight_version": weight_version}
        path = "/update_weights_from_distributed"
        answers = {url: self.pool.submit(self._post, url, path, body) for url in self.urls}
        refused = lambda answer: not answer.get("success")  # noqa: E731
        gathered = self.pool.submit(answers_or_first_refusal, answers, refused)
        try:
            broadcast_until_answered(
                named_tensors, gathered, lambda got: any(map(refused, got.values())), self.timeout_s
            )
        except WeightPushError as err:
            # Every engine leaves (one inside the broadcast stops waiting for tensors that will
            # never come, so it answers now), which fails this side's pending broadcast; then
            # this side leaves, at once.
            for url in self.urls:  # here, not in the pool: its threads wait for the answers
                self._post(url, "/destroy_weights_update_group", {"group_name": self.group_name})
            self.close_group()
            late = {url: _answer_within(f, LATE_ANSWER_S) for url, f in answers.items()}
            raise WeightPushError(err.message, {**late, **_as_dict(err.details)}) from None
        # The broadcast completed, so every engine answers (the gathering stopped at a refusal
        # after receiving; the answer of each engine still belongs in the result or the error).
        by_url = {url: _answer_within(f, self.timeout_s) for url, f in answers.items()}
        failed = {u: a for u, a in by_url.items() if not a.get("success")}
        if failed:
            raise WeightPushError("engines refused the update", failed)
        return by_url

    def close_group(self) -> None:
        """Leave the group (this side); the next push needs a new WeightBroadcaster."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def close(self) -> None:
        self.close_group()
        self.pool.shutdown(wait=False)

    def __enter__(self) -> WeightBroadcaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, url: str, path: str, body: dict) -> dict:
        try:
            r = httpx.post(url + path, json=body, timeout=self.timeout_s)
            return r.json()
        except (httpx.HTTPError, ValueError) as err:
            return {"success": False, "message": f"{type(err).__name__}: {err}"}
