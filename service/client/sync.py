"""``RolloutClient``: the SDK over ``httpx.Client``; ``_requests`` builds requests and answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import torch

from ..weight_push import LATE_ANSWER_S, WeightPushError, broadcast_until_answered, join_as_rank0
from ._requests import (
    Call,
    Prompt,
    RolloutResult,
    SamplingParams,
    auth_headers,
    check,
    gateway_url,
    group_layout_call,
    join_group_call,
    leave_group_call,
    pause_call,
    push_weights_call,
    refused,
    result_line,
    resume_call,
    rollouts_call,
    update_weights_call,
    weights_call,
)

log = logging.getLogger(__name__)


class RolloutClient:
    """Synchronous client; one keep-alive connection pool per client."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 600.0,
    ):
        self.http = httpx.Client(base_url=gateway_url(base_url), timeout=timeout_s)
        self.api, self.admin = auth_headers(api_token), auth_headers(admin_token)
        self._group: str | None = None  # the weight-update group this process is rank 0 of
        self._group_timeout_s = 120.0

    def rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> list[RolloutResult]:
        return self._call(rollouts_call(prompts, sampling_params, seed, return_logprobs, task, False))

    def stream_rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> Iterator[RolloutResult]:
        """Samples as they finish (NDJSON), so a trainer can start on early ones."""
        call = rollouts_call(prompts, sampling_params, seed, return_logprobs, task, True)
        with self.http.stream(call.method, call.path, json=call.body, headers=self._auth(call)) as r:
            if refused(r):
                r.read()
                check(r)
            for line in r.iter_lines():
                if line:
                    yield result_line(line)

    def update_weights(
        self, model_path: str, version: str, pause_mode: str = "retract", continue_aborted: bool = False
    ) -> dict:
        """All-or-nothing reload from disk across every engine; raises RolloutError (409) on rollback."""
        return self._call(update_weights_call(model_path, version, pause_mode, continue_aborted))

    def weights(self) -> dict:
        return self._call(weights_call())

    def init_weights_group(
        self,
        master_port: int,
        master_address: str = "127.0.0.1",
        group_name: str = "bebop_weights",
        backend: str = "gloo",
        timeout_s: float = 120.0,
    ) -> dict:
        """Make this process rank 0 of a weight-update group with every engine behind the gateway.

        ``master_address`` must be reachable from the engines (this trainer's address); use
        backend ``nccl`` on GPUs. Returns the layout (world_size, each engine's rank offset).
        """
        world_size = self._call(group_layout_call())["world_size"]
        join = join_group_call(world_size, master_address, master_port, group_name, backend)
        with ThreadPoolExecutor(1) as pool:
            # The engines wait in their rendezvous for rank 0: ask first, then join.
            answer = pool.submit(self._send, join)
            join_as_rank0(master_address, master_port, world_size, backend, timeout_s)
            self._group, self._group_timeout_s = group_name, timeout_s
            return join.parse(answer.result())

    def push_weights(
        self,
        named_tensors: dict[str, torch.Tensor],
        version: str,
        pause_mode: str = "retract",
        continue_aborted: bool = False,
    ) -> dict:
        """Broadcast ``named_tensors`` into every engine; all engines commit them or none does.

        Raises RolloutError (409 with per-engine detail when the engines refused and kept the old
        weights) or WeightPushError (refused before the broadcast: create the group again).
        """
        group = self._group
        if group is None:
            raise WeightPushError("no weight group", "call init_weights_group first")
        push = push_weights_call(named_tensors, group, version, pause_mode, continue_aborted)
        # Not a `with`: its exit would wait for the POST, which a failed push must not do.
        pool = ThreadPoolExecutor(1)
        try:
            # The engines receive only while the POST is in flight, so it runs beside the broadcast.
            answer = pool.submit(self._send, push)
            try:
                r = broadcast_until_answered(named_tensors, answer, refused, self._group_timeout_s)
            except WeightPushError as err:
                self._dissolve_group()
                # Leaving freed the engines still receiving, so the gateway's verdict (which engine
                # refused, what each serves) comes at once: hand it to the caller with the error.
                details = {"broadcast": err.details, "gateway": _late(answer)}
                raise WeightPushError(err.message, details) from None
        finally:
            pool.shutdown(wait=False)
        return push.parse(r)

    def _dissolve_group(self) -> None:
        """After a push that cannot complete. The engines leave first: an engine that is not
        receiving closes its connections, which fails this rank's pending broadcast at once (gloo
        would otherwise hold it, and this process's exit, until the group timeout), and an engine
        inside the broadcast stops waiting for tensors that will never come. Then this side leaves.
        The next push needs ``init_weights_group``."""
        try:
            self._send(leave_group_call())
        except httpx.HTTPError:
            log.warning("could not ask the gateway to dissolve the weight group", exc_info=True)
        self.close_weights_group()

    def close_weights_group(self) -> None:
        """Leave the trainer's side of the group (the engines keep theirs until the next init)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._group = None

    def pause(self, mode: str = "retract") -> dict:
        return self._call(pause_call(mode))

    def resume(self) -> dict:
        return self._call(resume_call())

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RolloutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _auth(self, call: Call) -> dict[str, str]:
        return self.admin if call.admin else self.api

    def _send(self, call: Call) -> httpx.Response:
        return self.http.request(call.method, call.path, json=call.body, headers=self._auth(call))

    def _call(self, call: Call) -> Any:
        return call.parse(self._send(call))


def _late(answer: Future, timeout_s: float = LATE_ANSWER_S) -> object:
    """The gateway's answer to a push whose broadcast failed, or why there is none."""
    try:
        r = answer.result(timeout=timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"
    try:
        return r.json()
    except ValueError:
        return r.text[:500]
