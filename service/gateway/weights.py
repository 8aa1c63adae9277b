"""All-or-nothing weight reloads across every engine, one at a time.

pause every engine (the caller's mode) -> update each from disk (target and MTP head) -> verify
each reports the new version -> resume. If any engine fails, the ones already updated are rolled
back to the checkpoint they served before, everything resumes on the old weights, and the call
fails with per-engine detail. A bad checkpoint never takes serving down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bebop.service.gateway.pool import EnginePool

log = logging.getLogger(__name__)


class ReloadFailed(Exception):
    def __init__(self, message: str, engines: dict[str, dict]):
        super().__init__(message)
        self.engines = engines


@dataclass
class ReloadCoordinator:
    pool: EnginePool
    roots: list[Path]
    timeout_s: float = 600.0
    continue_aborted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    last: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def allowed(self, model_path: str) -> Path:
        """The resolved path if it lies under an allowed root (the served models' directories and
        --weights-root); raises PermissionError otherwise."""
        path = Path(model_path).resolve()
        roots = [r.resolve() for r in self.roots]
        roots += [Path(e.model_path).resolve().parent for e in self.pool.engines.values() if e.model_path]
        if not any(path == r or r in path.parents for r in roots):
            raise PermissionError(f"{model_path} is outside the allowed weight roots")
        return path

    async def _post(self, url: str, path: str, body: dict) -> dict:
        try:
            r = await self.pool.client.post(url + path, json=body, timeout=self.timeout_s)
            data = r.json()
            data.setdefault("success", r.status_code == 200)
            return data
        except (httpx.HTTPError, ValueError) as err:
            return {"success": False, "message": f"{type(err).__name__}: {err}"}

    async def post_all(self, path: str, body: dict, urls: list[str]) -> dict[str, dict]:
        answers = await asyncio.gather(*(self._post(u, path, body) for u in urls))
        return dict(zip(urls, answers, strict=True))

    async def reload(self, model_path: str, version: str, pause_mode: str, continue_aborted: bool) -> dict:
        path = self.allowed(model_path)
        async with self.lock:
            start = time.monotonic()
            self._idle.clear()
            self.continue_aborted = continue_aborted
            urls = [e.url for e in self.pool.healthy()]
            if not urls:
                self._idle.set()
                raise ReloadFailed("no healthy engine to update", {})
            previous = {e.url: (e.model_path, e.weight_version) for e in self.pool.healthy()}
            try:
                await self.post_all("/pause_generation", {"mode": pause_mode}, urls)
                update = {"model_path": str(path), "weight_version": version}
                results = await self.post_all("/update_weights_from_disk", update, urls)
                infos = await self._all_info(urls)
                for url in urls:
                    got = infos[url].get("weight_version")
                    if results[url].get("success") and got != version:
                        results[url] = {
                            "success": False,
                            "message": f"reports version {got!r} after the update",
                        }
                failed = {u: r for u, r in results.items() if not r.get("success")}
                if failed:
                    rolled = await self._roll_back([u for u in urls if u not in failed], previous)
                    detail = {
                        u: {"updated": u not in failed, **results[u], **rolled.get(u, {})} for u in urls
                    }
                    self.last = {"version": version, "outcome": "rolled_back", "engines": detail}
                    raise ReloadFailed(
                        "the update failed on some engines; all engines serve the old weights", detail
                    )
                for url in urls:
                    self.pool.engines[url].weight_version = version
                self.last = {
                    "version": version,
                    "outcome": "success",
                    "seconds": time.monotonic() - start,
                    "engines": {u: {"success": True, "weight_version": version} for u in urls},
                }
                return self.last
            finally:
                await self.post_all("/continue_generation", {}, urls)
                self._idle.set()

    async def _all_info(self, urls: list[str]) -> dict[str, dict]:
        async def info(url: str) -> dict:
            try:
                return (await self.pool.client.get(url + "/model_info", timeout=30)).json()
            except (httpx.HTTPError, ValueError):
                return {}

        return dict(zip(urls, await asyncio.gather(*(info(u) for u in urls)), strict=True))

    async def _roll_back(self, urls: list[str], previous: dict[str, tuple]) -> dict[str, dict]:
        out = {}
        for url in urls:
            path, version = previous[url]
            answer = await self._post(
                url, "/update_weights_from_disk", {"model_path": path, "weight_version": version}
            )
            out[url] = {"rolled_back": bool(answer.get("success")), "rollback_message": answer.get("message")}
            if not answer.get("success"):
                log.error("rollback of %s to %s failed: %s", url, path, answer)
        return out
