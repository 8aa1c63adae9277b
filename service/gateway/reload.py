"""All-or-nothing weight reloads across every engine, one at a time, from disk or pushed.

A reload is two-phase:

    pause every engine (the caller's mode)
    -> stage: each engine loads (from disk) or receives (trainer broadcast) the new weights and
       validates them, but keeps serving the old ones
    -> commit on every engine only when every engine staged; verify each reports the new version
    -> resume

If any engine fails to stage, every staged copy is discarded and nothing changed anywhere. Staging
is a Bebop extension: an engine that ignores it (a stock SGLang server) swaps at once, so when the
update fails elsewhere such an engine is rolled back to the checkpoint it served before, from disk.
Either way the call fails with per-engine detail and a bad checkpoint never takes serving down.

The distributed push needs a process group first: ``init_group`` fans ``/init_weights_update_group``
out to every engine with its rank offset (the trainer is rank 0; an engine with tensor parallelism
takes ``tp_size`` ranks), and ``push`` then stages ``/update_weights_from_distributed`` on every
member while the trainer broadcasts. SGLang 0.5.23 refuses a distributed update outside a weight-update
session (400), so each member's update is wrapped in ``/begin_weight_update {"selector": "all"}`` ...
``/end_weight_update`` (target and MTP draft alike); an engine without those routes (SGLang before
0.5.23) answers 404 to the begin call and is updated without a session.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .pool import EnginePool
from .upstream import UpstreamError

log = logging.getLogger(__name__)

StageCall = Callable[[list[str], str], Awaitable[dict[str, dict]]]  # (urls, stage_id) -> answers


class ReloadFailed(Exception):
    def __init__(self, message: str, engines: dict[str, dict]):
        super().__init__(message)
        self.engines = engines


class GroupMismatch(Exception):
    """The trainer's idea of the group (world size, members) is not the gateway's: a 409."""


@dataclass
class WeightGroup:
    name: str
    world_size: int
    ranks: dict[str, int]  # engine url -> its first rank


@dataclass
class ReloadCoordinator:
    pool: EnginePool
    roots: list[Path]
    timeout_s: float = 600.0
    info_timeout_s: float = 30.0  # /model_info and /server_info reads (checks, not weight transfers)
    continue_aborted: bool = False  # the last reload's choice for the samples it aborted
    last_abort: float = 0.0  # monotonic time of the last /v1/abort: samples older than it stay aborted
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one update at a time
    # The trainer's group: joining blocks until the trainer joins too (up to the engines' 120 s
    # rendezvous timeout), so it has its own lock and a reload from disk is not held up meanwhile.
    # A push takes this one, then ``lock``; a reload only ``lock``: one order, no deadlock.
    group_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    last: dict = field(default_factory=dict)
    group: WeightGroup | None = None
    # engine url -> the checkpoint directory its current weights came from; None after a push
    # (a stock engine that cannot stage can then not be rolled back from disk).
    checkpoints: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def continues(self, started: float) -> bool:
        """Whether an aborted sample that started at ``started`` (monotonic) goes on from its prefix:
        the last reload asked for it, and no /v1/abort came since the sample started."""
        return self.continue_aborted and self.last_abort < started

    def abort_all(self) -> None:
        self.last_abort = time.monotonic()

    def allowed(self, model_path: str) -> Path:
        """The resolved path if it lies under an allowed root (--weights-root, and the model of the
        embedded engines); raises PermissionError otherwise, ValueError for a path that cannot exist.
        Roots come from the operator only, never from what an engine reports."""
        if "\x00" in model_path:
            raise ValueError("model_path contains a NUL byte")
        path = Path(model_path).resolve()
        roots = [r.resolve() for r in self.roots]
        if not any(path == r or r in path.parents for r in roots):
            raise PermissionError(f"{model_path} is outside the allowed weight roots")
        return path

    async def _post(self, url: str, path: str, body: dict) -> dict:
        try:
            r = await self.pool.client.post(url + path, body, self.timeout_s)
            data = r.json()
            data.setdefault("success", r.status_code == 200)
            return data
        except (UpstreamError, ValueError) as err:
            return {"success": False, "message": f"{type(err).__name__}: {err}"}

    async def post_all(self, path: str, body: dict, urls: list[str]) -> dict[str, dict]:
        answers = await asyncio.gather(*(self._post(u, path, body) for u in urls))
        return dict(zip(urls, answers, strict=True))

    # ------------------------------------------------------------------ from disk
    async def reload(self, model_path: str, version: str, pause_mode: str, continue_aborted: bool) -> dict:
        path = str(self.allowed(model_path))
        update = {"model_path": path, "weight_version": version}

        async def stage(urls: list[str], stage_id: str) -> dict[str, dict]:
            return await self._stage_all("/update_weights_from_disk", update, urls, stage_id)

        urls = [e.url for e in self.pool.healthy()]
        return await self._two_phase(urls, version, pause_mode, continue_aborted, stage, path)

    # ------------------------------------------------------------------ distributed push
    async def group_layout(self) -> WeightGroup:
        """Rank offsets for every healthy engine, in a fixed order: the trainer is rank 0."""
        urls = sorted(e.url for e in self.pool.healthy())
        infos = await self._all_info(urls, "/server_info")
        ranks, next_rank = {}, 1
        for url in urls:
            ranks[url] = next_rank
            next_rank += max(1, int(infos[url].get("tp_size") or 1))
        return WeightGroup(name="", world_size=next_rank, ranks=ranks)

    async def init_group(
        self, master_address: str, master_port: int, world_size: int, group_name: str, backend: str
    ) -> dict:
        """Every engine joins the trainer's group; blocks until the trainer (rank 0) has joined too."""
        async with self.group_lock:
            layout = await self.group_layout()
            if not layout.ranks:
                raise GroupMismatch("no healthy engine to join the group")
            if world_size != layout.world_size:
                raise GroupMismatch(
                    f"world_size {world_size} does not match the engines: expected {layout.world_size} "
                    f"(the trainer plus {layout.world_size - 1} engine ranks); read GET /v1/weights/group"
                )
            bodies = {
                url: {
                    "master_address": master_address,
                    "master_port": master_port,
                    "rank_offset": rank,
                    "world_size": world_size,
                    "group_name": group_name,
                    "backend": backend,
                }
                for url, rank in layout.ranks.items()
            }
            answers = await asyncio.gather(
                *(self._post(u, "/init_weights_update_group", b) for u, b in bodies.items())
            )
            results = dict(zip(bodies, answers, strict=True))
            failed = {u: a for u, a in results.items() if not a.get("success")}
            self.group = None if failed else WeightGroup(group_name, world_size, layout.ranks)
            if failed:
                raise ReloadFailed("some engines could not join the weight update group", results)
            return {"group_name": group_name, "world_size": world_size, "ranks": layout.ranks}

    async def leave_group(self) -> dict:
        """Every member leaves the trainer's group (SGLang's /destroy_weights_update_group).

        A trainer whose push was refused before the engines received it still has its broadcast
        pending, and gloo would hold it (and the trainer's exit) until the group timeout; once the
        engines leave, it fails at once. Not under ``group_lock``: that is what it frees."""
        group, self.group = self.group, None
        if group is None:
            return {"left": {}}
        answers = await self.post_all(
            "/destroy_weights_update_group", {"group_name": group.name}, list(group.ranks)
        )
        return {"group_name": group.name, "left": answers}

    async def push(self, manifest: dict, version: str, pause_mode: str, continue_aborted: bool) -> dict:
        """Stage the trainer's broadcast (``manifest``: names, dtypes, shapes, group_name) on every
        group member, then commit all or none."""
        async with self.group_lock:
            group = self.group
            if group is None or manifest["group_name"] != group.name:
                raise GroupMismatch(
                    f"no weight update group named {manifest['group_name']!r}: "
                    "call POST /v1/weights/group first"
                )
            urls = list(group.ranks)
            missing = [u for u in urls if u not in self.pool.engines or not self.pool.engines[u].healthy]
            if missing:
                raise GroupMismatch(f"group members are gone or unhealthy: {missing}; create the group again")
            body = {**manifest, "weight_version": version}

            async def stage(urls: list[str], stage_id: str) -> dict[str, dict]:
                return await self._stage_all(
                    "/update_weights_from_distributed", body, urls, stage_id, session=True
                )

            return await self._two_phase(urls, version, pause_mode, continue_aborted, stage, None)

    # ------------------------------------------------------------------ the protocol
    async def _stage_all(
        self, path: str, body: dict, urls: list[str], stage_id: str, session: bool = False
    ) -> dict[str, dict]:
        """Ask engines that announce staging to stage; a stock SGLang server would refuse the
        unknown field, so it gets SGLang's own call and swaps at once. With ``session`` each call is
        wrapped in SGLang 0.5.23's weight-update session."""

        def body_for(url: str) -> dict:
            engine = self.pool.engines.get(url)  # None: removed while paused; it fails or stages
            if engine is None or engine.can_stage:
                return {**body, "stage": True, "stage_id": stage_id}
            return body

        async def one(url: str) -> dict:
            if not session:
                return await self._post(url, path, body_for(url))
            answer = await self._stage_in_session(url, path, body_for(url))
            engine = self.pool.engines.get(url)
            if not answer.get("success") and engine is not None and not engine.can_stage:
                # Stock SGLang: a refusal may come before it received anything, while the trainer and
                # the other members are inside the broadcast, which it will not join; leaving closes
                # its connections, so they fail now instead of at the group timeout. (Bebop's
                # engines leave by themselves exactly when they refuse before receiving.)
                await self._post(url, "/destroy_weights_update_group", {"group_name": body.get("group_name")})
                self.group = None  # a member left: the next push must create the group again
            return answer

        answers = await asyncio.gather(*(one(u) for u in urls))
        return dict(zip(urls, answers, strict=True))

    async def _stage_in_session(self, url: str, path: str, body: dict) -> dict:
        """One distributed update inside SGLang 0.5.23's begin/end weight-update session."""
        opened = await self._begin_session(url)
        if opened is not None and not opened.get("success"):
            return {**opened, "message": f"begin_weight_update failed: {opened.get('message')}"}
        try:
            return await self._post(url, path, body)
        finally:
            if opened is not None:
                closed = await self._post(url, "/end_weight_update", {})
                if not closed.get("success"):
                    log.error("end_weight_update on %s failed: %s", url, closed)

    async def _begin_session(self, url: str) -> dict | None:
        """Open SGLang 0.5.23's weight-update session on ``url``: its answer, or None when the engine
        has no such route (older SGLang: updates need no session there). A session left open by an
        interrupted update is closed and opened again."""
        for attempt in range(2):
            try:
                r = await self.pool.client.post(
                    url + "/begin_weight_update", {"selector": "all"}, self.timeout_s
                )
            except UpstreamError as err:
                return {"success": False, "message": f"UpstreamError: {err}"}
            if r.status_code in (404, 405):
                return None
            try:
                answer = r.json()
            except ValueError:
                answer = {"message": r.text[:200]}
            answer.setdefault("success", r.status_code == 200)
            if answer["success"] or attempt or "already open" not in str(answer.get("message")):
                return answer
            await self._post(url, "/end_weight_update", {})
        return answer

    async def _two_phase(
        self,
        urls: list[str],
        version: str,
        pause_mode: str,
        continue_aborted: bool,
        stage: StageCall,
        checkpoint: str | None,
    ) -> dict:
        async with self.lock:
            start = time.monotonic()
            # Names this reload on every engine: another gateway's reload cannot commit, discard or
            # roll back what this one staged or kept (each engine has one slot of each).
            stage_id = uuid.uuid4().hex
            mine = {"stage_id": stage_id}
            self._idle.clear()
            self.continue_aborted = continue_aborted
            if not urls:
                self._idle.set()
                raise ReloadFailed("no healthy engine to update", {})
            engines = {u: self.pool.engines.get(u) for u in urls}  # one may be removed meanwhile
            previous = {
                u: (
                    self.checkpoints.get(u, getattr(engines[u], "model_path", None)),
                    getattr(engines[u], "weight_version", None),
                )
                for u in urls
            }
            try:
                paused = await self.post_all("/pause_generation", {"mode": pause_mode}, urls)
                not_paused = {u: a for u, a in paused.items() if not a.get("success")}
                if not_paused:  # nothing staged yet: nothing to undo
                    detail = {u: {"updated": False, **a} for u, a in paused.items()}
                    self.last = {"version": version, "outcome": "not_paused", "engines": detail}
                    raise ReloadFailed("some engines could not be paused; nothing changed", detail)
                results = await stage(urls, stage_id)
                ok = [u for u in urls if results[u].get("success")]
                staged = [u for u in ok if results[u].get("staged")]
                swapped = [u for u in ok if not results[u].get("staged")]  # engines that cannot stage
                all_staged = len(ok) == len(urls)
                if all_staged:
                    results.update(await self.post_all("/commit_staged_weights", mine, staged))
                    await self._verify_version(urls, version, results)
                failed = {u for u in urls if not results[u].get("success")}
                if failed:
                    committed = [u for u in urls if u not in failed and (all_staged or u in swapped)]
                    await self.post_all(
                        "/discard_staged_weights", mine, [u for u in staged if u not in committed]
                    )
                    rolled = await self._roll_back(committed, previous, staged, stage_id)
                    serving = await self._all_info(urls, "/model_info")  # checked, not assumed
                    detail = {
                        u: {
                            "updated": u not in failed,
                            **results[u],
                            **rolled.get(u, {}),
                            "serving": serving[u].get("weight_version"),
                        }
                        for u in urls
                    }
                    old = {u: previous[u][1] for u in urls}
                    consistent = all(detail[u]["serving"] == old[u] for u in urls)
                    self.last = {
                        "version": version,
                        "outcome": "rolled_back" if consistent else "inconsistent",
                        "engines": detail,
                    }
                    message = (
                        "the update failed on some engines; all engines serve the old weights"
                        if consistent
                        else "the update failed and the rollback did not restore every engine: "
                        + ", ".join(f"{u} serves {detail[u]['serving']!r}" for u in urls)
                    )
                    raise ReloadFailed(message, detail)
                for url in urls:
                    if url in self.pool.engines:  # an engine removed mid-reload is no longer ours
                        self.pool.engines[url].weight_version = version
                    self.checkpoints[url] = checkpoint
                self.last = {
                    "version": version,
                    "outcome": "success",
                    "source": "disk" if checkpoint else "distributed",
                    "seconds": time.monotonic() - start,
                    "engines": {u: {"success": True, "weight_version": version} for u in urls},
                }
                return self.last
            finally:
                # Settled either way: the engines that staged drop the copy they kept at commit.
                stagers = [u for u in urls if getattr(engines[u], "can_stage", False)]
                await self.post_all("/settle_weights", mine, stagers)
                await self.post_all("/continue_generation", {}, urls)
                self._idle.set()

    async def _verify_version(self, urls: list[str], version: str, results: dict[str, dict]) -> None:
        infos = await self._all_info(urls, "/model_info")
        for url in urls:
            got = infos[url].get("weight_version")
            if results[url].get("success") and got != version:
                results[url] = {"success": False, "message": f"reports version {got!r} after the update"}

    async def _all_info(self, urls: list[str], path: str) -> dict[str, dict]:
        async def info(url: str) -> dict:
            try:
                return (await self.pool.client.get(url + path, self.info_timeout_s)).json()
            except (UpstreamError, ValueError):
                return {}

        return dict(zip(urls, await asyncio.gather(*(info(u) for u in urls)), strict=True))

    async def _roll_back(
        self, urls: list[str], previous: dict[str, tuple], staged: list[str], stage_id: str
    ) -> dict[str, dict]:
        """Put each committed engine back on its previous weights: from the copy a staging engine kept
        at commit (``/rollback_weights``, which needs no checkpoint on disk), else by reloading the
        previous checkpoint directory (stock SGLang, or an engine without the route)."""
        out = {}
        for url in urls:
            path, version = previous[url]
            if url in staged:
                answer = await self._post(url, "/rollback_weights", {"stage_id": stage_id})
                if answer.get("success"):
                    out[url] = {
                        "rolled_back": True,
                        "rollback_message": "restored the weights kept at commit",
                    }
                    continue
                log.warning("rollback_weights on %s failed (%s); trying its previous checkpoint", url, answer)
            if path is None:
                out[url] = {
                    "rolled_back": False,
                    "rollback_message": "its previous weights were pushed, not read from disk",
                }
                log.error("cannot roll back %s: its previous weights came from a distributed push", url)
                continue
            answer = await self._post(
                url, "/update_weights_from_disk", {"model_path": path, "weight_version": version}
            )
            out[url] = {"rolled_back": bool(answer.get("success")), "rollback_message": answer.get("message")}
            if not answer.get("success"):
                log.error("rollback of %s to %s failed: %s", url, path, answer)
        return out
