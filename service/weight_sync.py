"""Trainer side of the distributed weight push: broadcast new weights straight into every engine.

The trainer is rank 0 of a group with every engine: engine i joins as rank 1 + its rank offset
(``/init_weights_update_group``). A push posts ``/update_weights_from_distributed`` to every
engine (names, dtypes, shapes, weight_version) and broadcasts each tensor in that order; every
engine validates what it received before swapping it in.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
}


class WeightPushError(RuntimeError):
    """An engine refused or failed an update; ``details`` maps engine URL to its answer."""

    def __init__(self, message: str, details: dict[str, object]):
        super().__init__(f"{message}: {details}")
        self.details = details


class WeightBroadcaster:
    """Rank 0 of the weight-update group. Use as a context manager to leave the group at the end."""

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
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(self.urls)))
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
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{master_address}:{master_port}",
            rank=0,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        answers = {url: f.result() for url, f in zip(self.urls, joins, strict=True)}
        failed = {u: a for u, a in answers.items() if not a.get("success")}
        if failed:
            raise WeightPushError("engines could not join the group", failed)

    def push(self, named_tensors: dict[str, torch.Tensor], weight_version: str) -> dict[str, dict]:
        """Broadcast ``named_tensors`` to every engine; returns each engine's answer.

        Raises WeightPushError when any engine refused (its old weights keep serving; the caller
        decides whether to roll the others back).
        """
        names = list(named_tensors)
        body = {
            "names": names,
            "dtypes": [DTYPE_NAMES[named_tensors[n].dtype] for n in names],
            "shapes": [list(named_tensors[n].shape) for n in names],
            "group_name": self.group_name,
            "weight_version": weight_version,
        }
        answers = [
            self.pool.submit(self._post, url, "/update_weights_from_distributed", body) for url in self.urls
        ]
        for name in names:
            dist.broadcast(named_tensors[name].detach().contiguous().cpu(), src=0)
        results = {url: f.result() for url, f in zip(self.urls, answers, strict=True)}
        failed = {u: a for u, a in results.items() if not a.get("success")}
        if failed:
            raise WeightPushError("engines refused the update", failed)
        return results

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
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
