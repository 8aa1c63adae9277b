"""A FAKE SGLang / ``bebop engine`` server, in process, for the gateway's pool and reload tests.

A fake, not an engine: it generates nothing real and loads no weights. It answers the calls the
gateway's pool and reload coordinator make (``/health``, ``/model_info``, ``/server_info``,
``/generate``, pause and continue, ``/update_weights_from_disk`` with Bebop's ``stage`` extension,
``/commit_staged_weights``, ``/discard_staged_weights``) the way ``service/engine/routes/weights.py`` does,
and every behaviour a test needs to break is a plain attribute (``healthy``, ``fail_update``, ...).
It runs on loopback in the test's own event loop (aiohttp), so the gateway talks to it over real
HTTP, through its real client, without a subprocess. Every call except the health probes is logged
in ``calls`` as ``(path, body)``.

    async with FakeEngine(can_stage=True) as engine:
        pool.add(engine.url)
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from aiohttp import web

PROBES = ("/health", "/model_info", "/server_info")  # polled all the time: not logged


class FakeEngine:
    """A fake engine's state and its aiohttp server; ``url`` is known once entered."""

    def __init__(
        self,
        version: str = "v0",
        model_path: str = "/ckpt/v0",
        can_stage: bool = True,
        tp_size: int = 1,
        keeps_previous: bool = True,
    ):
        self.version = version
        self.model_path = model_path
        self.can_stage = can_stage  # False: a stock SGLang server, which swaps at once
        # /rollback_weights and /settle_weights (False: an older bebop engine without them, 404)
        self.keeps_previous = keeps_previous
        self.previous: tuple[str, str] | None = None  # (version, model_path) kept at commit
        self.fail_commit: str | None = None  # a message: /commit_staged_weights refuses (400)
        self.joined = asyncio.Event()  # /init_weights_update_group answers once set (the trainer joined)
        self.gone: set[str] = set()  # checkpoint directories no longer on disk: loading them fails
        self.tp_size = tp_size
        self.healthy = True  # False: /health answers 503
        self.fail_update: str | None = None  # a message: /update_weights_from_disk refuses (400)
        self.fail_pause = False  # /pause_generation answers 500
        self.report_version: str | None = None  # a lie in /model_info after a commit (None: the truth)
        self.generate_status = 200  # anything else: /generate answers it with an error body
        self.staged: tuple[str, str] | None = None  # (version, model_path) held until commit/discard
        self.paused = False
        self.calls: list[tuple[str, dict]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ server
    async def __aenter__(self) -> FakeEngine:
        app = web.Application(middlewares=[self._log])
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/model_info", self._model_info),
                web.get("/server_info", self._server_info),
                web.post("/generate", self._generate),
                web.post("/pause_generation", self._pause),
                web.post("/continue_generation", self._continue),
                web.post("/abort_request", self._ok),
                web.post("/flush_cache", self._ok),
                web.post("/init_weights_update_group", self._join),
                web.post("/update_weights_from_disk", self._update_from_disk),
                web.post("/commit_staged_weights", self._commit),
                web.post("/discard_staged_weights", self._discard),
                *(
                    [web.post("/rollback_weights", self._rollback), web.post("/settle_weights", self._settle)]
                    if self.keeps_previous
                    else []
                ),
            ]
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # port 0: the OS picks a free one
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the port: later calls are refused, as by an engine that died."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def paths(self) -> list[str]:
        """The logged calls' paths, in order."""
        return [path for path, _ in self.calls]

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in PROBES:
            body = await request.json() if request.can_read_body else {}
            self.calls.append((request.path, body))
        return await handler(request)

    # ------------------------------------------------------------------ routes
    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({}, status=200 if self.healthy else 503)

    async def _model_info(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_path": self.model_path,
                "weight_version": self.report_version or self.version,
                "is_generation": True,
                "bebop_staged_weights": self.can_stage,
            }
        )

    async def _server_info(self, _: web.Request) -> web.Response:
        return web.json_response({"tp_size": self.tp_size, "weight_version": self.version})

    async def _generate(self, request: web.Request) -> web.Response:
        if self.generate_status != 200:
            error = {"error": {"message": f"fake failure {self.generate_status}"}}
            return web.json_response(error, status=self.generate_status)
        body = await request.json()
        n = body.get("sampling_params", {}).get("max_new_tokens", 1)
        meta = {"weight_version": self.version, "finish_reason": {"type": "length", "length": n}}
        return web.json_response({"text": "", "output_ids": [7] * n, "meta_info": meta})

    async def _ok(self, _: web.Request) -> web.Response:
        return web.json_response({"success": True})

    async def _pause(self, _: web.Request) -> web.Response:
        if self.fail_pause:
            return web.json_response({"success": False, "message": "fake: cannot pause"}, status=500)
        self.paused = True
        return web.json_response({"success": True})

    async def _continue(self, _: web.Request) -> web.Response:
        self.paused = False
        return web.json_response({"success": True})

    async def _update_from_disk(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "stage" in body and not self.can_stage:  # SGLang's request struct refuses unknown fields
            return web.json_response({"success": False, "message": "unexpected field 'stage'"}, status=400)
        if self.fail_update is not None:
            message = f"checkpoint refused, old weights still serving: {self.fail_update}"
            return web.json_response({"success": False, "message": message}, status=400)
        if body["model_path"] in self.gone:
            message = f"{body['model_path']} is not a directory"
            return web.json_response({"success": False, "message": message}, status=400)
        if body.get("stage"):
            self.staged = (body["weight_version"], body["model_path"])
            return web.json_response({"success": True, "staged": True, "message": "staged"})
        self.version, self.model_path = body["weight_version"], body["model_path"]
        return web.json_response({"success": True, "weight_version": self.version})

    async def _commit(self, _: web.Request) -> web.Response:
        if self.staged is None:
            return web.json_response({"success": False, "message": "no staged weights to commit"}, status=409)
        if self.fail_commit is not None:
            return web.json_response({"success": False, "message": self.fail_commit}, status=400)
        self.previous = (self.version, self.model_path)
        (self.version, self.model_path), self.staged = self.staged, None
        return web.json_response({"success": True, "weight_version": self.version})

    async def _join(self, _: web.Request) -> web.Response:
        await self.joined.wait()  # a real engine blocks in the rendezvous until rank 0 joins
        return web.json_response({"success": True, "message": "joined"})

    async def _rollback(self, _: web.Request) -> web.Response:
        if self.previous is None:
            return web.json_response({"success": False, "message": "nothing retained"}, status=409)
        (self.version, self.model_path), self.previous = self.previous, None
        return web.json_response({"success": True, "weight_version": self.version})

    async def _settle(self, _: web.Request) -> web.Response:
        had, self.previous = self.previous is not None, None
        return web.json_response({"success": True, "released": had})

    async def _discard(self, _: web.Request) -> web.Response:
        had, self.staged = self.staged is not None, None
        return web.json_response({"success": True, "discarded": had})
