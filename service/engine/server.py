"""``bebop engine``: the embedded engine behind SGLang 0.5.23's native HTTP protocol.

Routes and field names follow SGLang so the gateway (and slime, AReaL, smg) talk to this engine
and to SGLang servers alike. Unknown request fields are ignored, as SGLang does; bad values get a
400 with a message, and everything is validated before anything is queued. With
``BEBOP_ENGINE_TOKEN`` every route but ``/health`` needs ``Authorization: Bearer <token>`` (as
SGLang's ``--api-key``); checkpoints load only from under the model directory and ``--weights-root``.
A client that goes away aborts its requests. Bebop's additions ride in ``meta_info``:
``spec_accept_per_position``, ``entropy_mean``, ``weight_version_spans`` and, with
``return_entropy``, ``output_token_entropy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import generate_latest

from ...model import Qwen3Model, load_model
from ..httpguard import (
    LOOPBACK,
    BearerAuth,
    BodyLimit,
    check_token,
    first_or_disconnect,
    parse_json_object,
)
from ..text import has_lone_surrogate
from .checkpoint import load_checked_state
from .metrics import EngineMetrics
from .runner import ModelRunner, default_device
from .sampling import BadRequest, SamplingParams
from .scheduler import Overloaded, Request, Scheduler
from .stops import StopStrings, hold_back, trim_text
from .weight_receiver import WeightReceiver

log = logging.getLogger(__name__)
MAX_PROMPTS = 4096  # prompts in one /generate batch (the gateway's limit per rollout)
MAX_WEIGHT_VERSION_CHARS = 128
MAX_TENSOR_DIMS = 8
WEIGHT_SELECTORS = ("target", "draft", "all")  # SGLang 0.5.23's BeginWeightUpdateReqInput.selector
SHUTDOWN_GRACE_S = 5  # SIGTERM: requests get this long to finish, then the process exits anyway
GENERATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "text": {
                            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                        },
                        "input_ids": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "integer"}},
                                {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                            ]
                        },
                        "sampling_params": {
                            "type": "object",
                            "properties": {
                                "temperature": {"type": "number"},
                                "top_p": {"type": "number"},
                                "top_k": {"type": "integer"},
                                "max_new_tokens": {"type": "integer"},
                                "stop_token_ids": {"type": "array", "items": {"type": "integer"}},
                                "ignore_eos": {"type": "boolean"},
                                "sampling_seed": {"type": "integer"},
                            },
                        },
                        "rid": {
                            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                        },
                        "stream": {"type": "boolean"},
                        "return_logprob": {"type": "boolean"},
                        "return_entropy": {"type": "boolean"},
                    },
                }
            }
        },
    }
}


def _body_doc(properties: dict) -> dict:
    """An OpenAPI request body for a route that reads its JSON by hand (for /docs and fuzzing)."""
    schema = {"type": "object", "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@dataclass
class EngineConfig:
    model_path: str
    spec: str = "rejection"
    draft_steps: int = 3
    max_running: int = 16
    max_queue: int = 256
    max_len: int = 512  # context: prompt + max_new_tokens must fit
    weight_version: str = "default"
    seed: int = 0
    api_token: str | None = None  # BEBOP_ENGINE_TOKEN: every route but /health needs it
    weights_roots: list[str] = field(default_factory=list)  # besides the model directory
    device: str | None = None  # cpu or cuda; None: cuda when available


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status}, **extra}, status_code=status)


@dataclass
class StagedWeights:
    """Validated weights held for a two-phase reload until the gateway commits or discards them."""

    state: dict[str, torch.Tensor]
    version: str | None
    model_path: str | None  # None when they came over torch.distributed


class Engine:
    """The model, its runner and scheduler, the tokenizer, and the metrics of one engine process."""

    def __init__(self, cfg: EngineConfig):
        from tokenizers import Tokenizer

        self.cfg = cfg
        self.model_path = str(Path(cfg.model_path).resolve())
        self.model: Qwen3Model = load_model(self.model_path)
        tok_file = Path(self.model_path) / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(tok_file)) if tok_file.is_file() else None
        device = torch.device(cfg.device) if cfg.device else default_device()
        self.runner = ModelRunner(
            self.model, cfg.max_running, cfg.max_len, cfg.spec, cfg.draft_steps, device=device
        )
        self.scheduler = Scheduler(
            self.runner, self.model.config.eos_token_id, cfg.max_queue, cfg.weight_version
        )
        self.metrics = EngineMetrics()
        self.scheduler.on_tokens = self.metrics.observe_tokens
        self.reload_lock = threading.Lock()  # one weight update at a time
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bebop-weights")
        self.receiver = WeightReceiver()
        self.staged: StagedWeights | None = None
        # SGLang 0.5.23's weight-update session (/begin_weight_update {selector} ... /end_weight_update).
        # SGLang refuses distributed and tensor updates outside one; this engine also takes them
        # without one, for clients older than 0.5.23 (slime, AReaL).
        self.update_session: str | None = None

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    # ------------------------------------------------------------------ requests
    def parse(self, body: dict) -> tuple[list[list[int]], list[str | None], bool]:
        """Prompts as token ids, their rids, and whether the request was a batch."""
        if "input_ids" in body and body["input_ids"] is not None:
            ids = body["input_ids"]
            if not isinstance(ids, list):
                raise BadRequest("input_ids must be a list of token ids or a list of such lists")
            batch = bool(ids) and isinstance(ids[0], list)
            prompts = ids if batch else [ids]
        elif "text" in body and body["text"] is not None:
            if self.tokenizer is None:
                raise BadRequest("this model has no tokenizer: send input_ids")
            texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
            batch = isinstance(body["text"], list)
            if not all(isinstance(t, str) for t in texts):
                raise BadRequest("text must be a string or a list of strings")
            if any(has_lone_surrogate(t) for t in texts):
                raise BadRequest("text holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
            if len(texts) > MAX_PROMPTS:
                raise BadRequest(f"at most {MAX_PROMPTS} prompts per request")
            prompts = [self.tokenizer.encode(t).ids for t in texts]
        else:
            raise BadRequest("give input_ids or text")
        if len(prompts) > MAX_PROMPTS:
            raise BadRequest(f"at most {MAX_PROMPTS} prompts per request")
        for p in prompts:
            if not isinstance(p, list) or not p:
                raise BadRequest("each prompt must be a non-empty list of token ids")
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                raise BadRequest("input_ids must be integers")
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise BadRequest(f"input_ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        rid = body.get("rid")
        rids = rid if isinstance(rid, list) else [rid] * len(prompts)
        if not all(r is None or isinstance(r, str) for r in rids):
            raise BadRequest("rid must be a string or a list of strings")
        if len(rids) != len(prompts):
            raise BadRequest("rid must have one entry per prompt")
        if batch and isinstance(rid, str):
            rids = [f"{rid}-{i}" for i in range(len(prompts))]
        return prompts, rids, batch

    def make_request(self, prompt: list[int], rid: str | None, params: SamplingParams, on_event) -> Request:
        if len(prompt) + params.max_new_tokens > self.cfg.max_len:
            raise BadRequest(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"context of {self.cfg.max_len} tokens"
            )
        seed = params.sampling_seed if params.sampling_seed is not None else random.getrandbits(63)
        stop_check = None
        if params.stop:
            if self.tokenizer is None:
                raise BadRequest("sampling_params.stop needs a tokenizer, which this model lacks")
            tokenizer = self.tokenizer
            stop_check = StopStrings(
                params.stop, lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
            )
        return Request(
            rid=rid or uuid.uuid4().hex,
            prompt=prompt,
            params=params,
            seed=seed,
            on_event=on_event,
            stop_check=stop_check,
        )

    def text(self, req: Request) -> str:
        """The ``text`` SGLang answers: stop tokens and stop strings trimmed unless ``no_stop_trim``,
        special tokens per ``skip_special_tokens``; while streaming, a tail that may begin a stop
        string is held back."""
        p, ids, reason = req.params, req.output, req.finish_reason or {}
        if isinstance(reason.get("matched"), int) and not p.no_stop_trim:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=p.skip_special_tokens)
        if req.finished:
            return trim_text(text, reason, p.no_stop_trim)
        return hold_back(text, p.stop) if p.stop else text

    def response(self, req: Request, return_logprob: bool, return_entropy: bool) -> dict:
        n = len(req.output)
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": req.finish_reason,
            "prompt_tokens": len(req.prompt),
            "completion_tokens": n,
            "cached_tokens": 0,
            "e2e_latency": time.monotonic() - req.created,
            "weight_version": req.version_spans[-1][2]
            if req.version_spans
            else self.scheduler.weight_version,
            "weight_version_spans": req.version_spans,
            "entropy_mean": (sum(req.entropies) / len(req.entropies)) if req.entropies else None,
        }
        if self.runner.G:
            # SGLang 0.5.23's names, then the older ones slime reads (slime/utils/types.py, SpecInfo)
            meta["spec_num_correct_drafts"] = req.drafts_accepted
            meta["spec_num_proposed_drafts"] = req.drafts_proposed
            meta["spec_correct_drafts_histogram"] = list(req.accept_histogram)
            meta["spec_accept_token_num"] = req.drafts_accepted
            meta["spec_draft_token_num"] = req.drafts_proposed
            meta["spec_verify_ct"] = req.verify_ct
            meta["spec_accept_length"] = ((n - 1) / req.verify_ct) if req.verify_ct else None
            meta["spec_accept_rate"] = (
                (req.drafts_accepted / req.drafts_proposed) if req.drafts_proposed else None
            )
            meta["spec_accept_per_position"] = [
                (a / r) if r else None
                for a, r in zip(req.position_accepted, req.position_reached, strict=True)
            ]
        if return_logprob:
            meta["output_token_logprobs"] = [
                [_finite(lp), t, None] for lp, t in zip(req.logprobs, req.output, strict=True)
            ]
        if return_entropy:
            meta["output_token_entropy"] = req.entropies
        out = {"output_ids": list(req.output), "meta_info": meta}
        if self.tokenizer is not None:
            out["text"] = self.text(req)
        return out

    # ------------------------------------------------------------------ weights
    def update_from_disk(
        self, model_path: str, version: str | None, abort_all: bool, stage: bool = False
    ) -> dict:
        """Validate the checkpoint off the loop thread, then swap it in between two steps.

        With ``stage`` (a Bebop extension to SGLang's call) the validated weights are only held
        until ``/commit_staged_weights`` or ``/discard_staged_weights``: the gateway's two-phase
        reload, so an update that fails on one engine never reaches the others.
        """
        if "\x00" in model_path:
            return {"success": False, "message": "model_path contains a NUL byte"}
        resolved = Path(model_path).resolve()
        roots = [Path(r).resolve() for r in [self.cfg.model_path, *self.cfg.weights_roots]]
        if not any(resolved == r or r in resolved.parents for r in roots):
            self.metrics.weight_updates.labels("rejected").inc()
            return {
                "success": False,
                "message": f"checkpoint refused: {model_path} is outside this engine's weight roots",
            }
        with self.reload_lock:
            try:
                state = load_checked_state(model_path, self.model)
            except (ValueError, FileNotFoundError, OSError) as err:
                self.metrics.weight_updates.labels("rejected").inc()
                return {"success": False, "message": f"checkpoint refused, old weights still serving: {err}"}
            return self._swap_or_stage(state, version, abort_all, str(Path(model_path).resolve()), stage)

    def check_manifest(self, body: dict) -> None:
        """Refuse a malformed manifest before any buffer is allocated: a shape of 2**40 elements
        would take the process down, not the request."""
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)):
            raise BadRequest("names, dtypes and shapes must be lists")
        if not all(isinstance(n, str) for n in names) or not all(isinstance(d, str) for d in dtypes):
            raise BadRequest("names and dtypes must be strings")
        largest = max(p.numel() for p in self.model.state_dict().values())
        for shape in shapes:
            if not (
                isinstance(shape, list)
                and len(shape) <= MAX_TENSOR_DIMS
                and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= largest for x in shape)
                and math.prod(shape) <= largest
            ):
                raise BadRequest(f"shape {str(shape)[:80]} is not the shape of any tensor of this model")
        _check_version(body.get("weight_version"))

    def update_from_distributed(self, body: dict) -> dict:
        with self.reload_lock:
            try:
                state = self.receiver.receive(
                    list(body.get("names") or []),
                    list(body.get("dtypes") or []),
                    list(body.get("shapes") or []),
                    str(body.get("group_name")),
                    self.model,
                )
            except ValueError as err:
                self.metrics.weight_updates.labels("rejected").inc()
                return {"success": False, "message": f"update refused, old weights still serving: {err}"}
            abort_all = bool(body.get("abort_all_requests", False))
            return self._swap_or_stage(
                state, body.get("weight_version"), abort_all, None, bool(body.get("stage"))
            )

    def _swap_or_stage(
        self,
        state: dict[str, torch.Tensor],
        version: str | None,
        abort_all: bool,
        model_path: str | None,
        stage: bool,
    ) -> dict:
        if stage:
            self.staged = StagedWeights(state, version, model_path)
            return {"success": True, "staged": True, "message": "weights validated and staged"}
        return self._swap(state, version, abort_all, model_path)

    def commit_staged(self, abort_all: bool) -> dict:
        with self.reload_lock:
            staged, self.staged = self.staged, None
            if staged is None:
                return {"success": False, "message": "no staged weights to commit"}
            return self._swap(staged.state, staged.version, abort_all, staged.model_path)

    def discard_staged(self) -> dict:
        with self.reload_lock:
            had, self.staged = self.staged is not None, None
            return {"success": True, "discarded": had}

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


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # -inf (a greedy row's other tokens) is not JSON


def build_app(engine: Engine) -> FastAPI:
    sched = engine.scheduler

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        sched.stop()  # fail whatever is still queued explicitly rather than dropping it

    app = FastAPI(title="Bebop engine", description="SGLang-compatible embedded engine", lifespan=lifespan)
    app.add_middleware(BodyLimit)
    if engine.cfg.api_token:  # outermost: a request without the token is refused before its body is read
        app.add_middleware(BearerAuth, token=engine.cfg.api_token, public={"/health"})

    async def body_of(request: HTTPRequest) -> dict:
        body, why = parse_json_object(await request.body())
        if body is None:
            raise BadRequest(why)
        return body

    @app.exception_handler(BadRequest)
    async def bad_request(_: HTTPRequest, err: BadRequest) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(Overloaded)
    async def overloaded(_: HTTPRequest, err: Overloaded) -> JSONResponse:
        return _error(503, str(err), retry_after=1)

    @app.post("/generate", openapi_extra=GENERATE_DOC)
    async def generate(request: HTTPRequest):
        body = await body_of(request)
        params = SamplingParams.from_dict(body.get("sampling_params"), engine.vocab_size)
        prompts, rids, batch = engine.parse(body)
        stream = bool(body.get("stream"))
        if stream and batch:  # refused before anything is queued: nothing may decode for nobody
            raise BadRequest("stream is supported for a single prompt")
        return_logprob, return_entropy = bool(body.get("return_logprob")), bool(body.get("return_entropy"))
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue] = []
        reqs: list[Request] = []

        for prompt, rid in zip(prompts, rids, strict=True):
            q: asyncio.Queue = asyncio.Queue()

            def on_event(req: Request, finished: bool, q=q) -> None:
                if finished:
                    engine.metrics.observe_finished(req)
                loop.call_soon_threadsafe(q.put_nowait, finished)

            reqs.append(engine.make_request(prompt, rid, params, on_event))
            queues.append(q)
        submitted: list[Request] = []
        try:
            for req in reqs:
                sched.submit(req)
                submitted.append(req)
        except Overloaded as err:
            for req in submitted:  # these objects only: another client may use the same rid
                sched.cancel(req, "queue full")
            return _error(503, str(err), retry_after=1)

        if stream:
            return StreamingResponse(
                _stream(engine, reqs[0], queues[0], return_logprob, return_entropy),
                media_type="text/event-stream",
            )

        async def all_finished() -> None:
            for q in queues:
                while not await q.get():
                    pass

        finished = False
        try:
            finished, _ = await first_or_disconnect(all_finished(), request.receive)
        finally:
            if not finished:  # the client went away (or the server stops): free the slots
                for req in reqs:
                    sched.cancel(req, "client disconnected")
        if not finished:
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        failed = [r for r in reqs if (r.finish_reason or {}).get("status_code", 200) >= 500]
        if failed:
            return _error(500, failed[0].finish_reason["message"])
        results = [engine.response(r, return_logprob, return_entropy) for r in reqs]
        return results if batch else results[0]

    @app.post(
        "/update_weights_from_disk",
        openapi_extra=_body_doc(
            {
                "model_path": {"type": "string"},
                "weight_version": {"type": "string"},
                "abort_all_requests": {"type": "boolean"},
                "stage": {"type": "boolean"},
            }
        ),
    )
    async def update_weights_from_disk(request: HTTPRequest):
        body = await body_of(request)
        if not isinstance(body.get("model_path"), str):
            raise BadRequest("model_path (a string) is required")
        _check_version(body.get("weight_version"))
        result = await asyncio.get_running_loop().run_in_executor(
            engine.io,
            engine.update_from_disk,
            body["model_path"],
            body.get("weight_version"),
            bool(body.get("abort_all_requests", False)),
            bool(body.get("stage", False)),
        )
        return JSONResponse(result, status_code=200 if result["success"] else 400)

    @app.post("/commit_staged_weights")
    async def commit_staged_weights(request: HTTPRequest):
        body = await body_of(request)
        abort_all = bool(body.get("abort_all_requests", False))
        result = await asyncio.get_running_loop().run_in_executor(engine.io, engine.commit_staged, abort_all)
        return JSONResponse(result, status_code=200 if result["success"] else 409)

    @app.post("/discard_staged_weights")
    async def discard_staged_weights():
        return await asyncio.get_running_loop().run_in_executor(engine.io, engine.discard_staged)

    @app.post("/init_weights_update_group")
    async def init_weights_update_group(request: HTTPRequest):
        body = await body_of(request)
        try:
            args = (
                str(body["master_address"]),
                int(body["master_port"]),
                int(body["rank_offset"]),
                int(body["world_size"]),
                str(body.get("group_name", "weight_update_group")),
                str(body.get("backend", "gloo")),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise BadRequest(f"need master_address, master_port, rank_offset, world_size: {err}") from None
        try:
            await asyncio.get_running_loop().run_in_executor(engine.io, engine.receiver.init_group, *args)
        except (ValueError, RuntimeError) as err:
            return _error(400, f"cannot join the weight update group: {err}", success=False)
        return {"success": True, "message": "joined the weight update group"}

    @app.post("/update_weights_from_distributed")
    async def update_weights_from_distributed(request: HTTPRequest):
        body = await body_of(request)
        engine.check_manifest(body)
        result = await asyncio.get_running_loop().run_in_executor(
            engine.io, engine.update_from_distributed, body
        )
        return JSONResponse(result, status_code=200 if result["success"] else 400)

    @app.post("/pause_generation", openapi_extra=_body_doc({"mode": {"type": "string"}}))
    async def pause_generation(request: HTTPRequest):
        body = await body_of(request)
        mode = body.get("mode", "abort")
        if mode not in ("abort", "retract", "in_place"):
            raise BadRequest(f"mode must be abort, retract or in_place, got {mode!r}")
        await asyncio.wrap_future(sched.call(lambda: sched.pause(mode)))
        return {"success": True, "mode": mode}

    @app.post("/continue_generation")
    async def continue_generation():
        await asyncio.wrap_future(sched.call(sched.resume))
        return {"success": True}

    @app.post(
        "/abort_request",
        openapi_extra=_body_doc({"rid": {"type": "string"}, "abort_all": {"type": "boolean"}}),
    )
    async def abort_request(request: HTTPRequest):
        body = await body_of(request)
        rid = None if body.get("abort_all") else body.get("rid")
        if rid is None and not body.get("abort_all"):
            raise BadRequest("give rid or abort_all: true")
        if rid is not None and not isinstance(rid, str):
            raise BadRequest("rid must be a string")
        n = await asyncio.wrap_future(sched.call(lambda: sched.abort(rid)))
        return {"success": True, "aborted": n}

    @app.api_route("/flush_cache", methods=["GET", "POST"])  # slime calls it with GET
    async def flush_cache():
        return {"success": True, "message": "no prefix cache to flush"}

    @app.post("/begin_weight_update", openapi_extra=_body_doc({"selector": {"type": "string"}}))
    async def begin_weight_update(request: HTTPRequest):
        """SGLang 0.5.23's session around distributed/tensor updates (``selector``: which runners;
        here the target and its MTP head are one state dict, so every selector reaches both)."""
        body = await body_of(request)
        selector = body.get("selector", "all")
        if selector not in WEIGHT_SELECTORS:
            raise BadRequest(f"selector must be one of {list(WEIGHT_SELECTORS)}, got {str(selector)[:40]!r}")
        if engine.update_session is not None:
            return _error(
                400, "a weight-update session is already open; call end_weight_update() first", success=False
            )
        engine.update_session = selector
        return {"success": True, "message": f"weight-update session open (selector {selector})"}

    @app.post("/end_weight_update")
    async def end_weight_update():
        if engine.update_session is None:
            return _error(
                400, "no weight-update session is open; call begin_weight_update() first", success=False
            )
        engine.update_session = None
        return {"success": True, "message": "weight-update session closed"}

    @app.get("/get_weight_version")  # slime's name; SGLang 0.5.23 answers it in /model_info too
    async def get_weight_version():
        return {"weight_version": sched.weight_version}

    @app.post(
        "/update_weight_version",
        openapi_extra=_body_doc(
            {"new_version": {"type": "string"}, "abort_all_requests": {"type": "boolean"}}
        ),
    )
    async def update_weight_version(request: HTTPRequest):
        body = await body_of(request)
        version = body.get("new_version")
        if not isinstance(version, str):
            raise BadRequest("new_version (a string) is required")
        _check_version(version)
        abort_all = body.get("abort_all_requests", True)  # SGLang's default

        def set_version() -> None:
            if abort_all:
                sched.abort(None, "aborted for a weight version update")
            sched.weight_version = version

        await asyncio.wrap_future(sched.call(set_version))
        return {"success": True, "message": f"Weight version updated to {version}", "new_version": version}

    @app.post("/destroy_weights_update_group", openapi_extra=_body_doc({"group_name": {"type": "string"}}))
    async def destroy_weights_update_group(request: HTTPRequest):
        body = await body_of(request)
        name = body.get("group_name", "weight_update_group")
        if not isinstance(name, str):
            raise BadRequest("group_name must be a string")
        try:
            await asyncio.get_running_loop().run_in_executor(engine.io, engine.receiver.destroy_group, name)
        except ValueError as err:
            return _error(400, str(err), success=False)
        return {"success": True, "message": f"left the weight update group {name}"}

    @app.post("/update_weights_from_tensor")
    async def update_weights_from_tensor():
        return _error(
            400,
            "update_weights_from_tensor is not supported by the embedded engine: its tensors are CUDA IPC "
            "handles of a trainer in the same process group; use /update_weights_from_distributed or "
            "/update_weights_from_disk",
            success=False,
        )

    @app.get("/model_info")
    async def model_info():
        return {
            "model_path": engine.model_path,
            "tokenizer_path": engine.model_path,
            "is_generation": True,
            "weight_version": sched.weight_version,
            "vocab_size": engine.vocab_size,
            "bebop_staged_weights": True,  # accepts "stage" and /commit_staged_weights
        }

    @app.get("/server_info")
    async def server_info():
        cfg = engine.cfg
        return {
            "engine": "bebop",
            "model_path": engine.model_path,
            "speculative_algorithm": None if cfg.spec == "none" else "NEXTN",
            "speculative_num_steps": engine.runner.G,
            "speculative_use_rejection_sampling": cfg.spec == "rejection",
            "max_running_requests": cfg.max_running,
            "tp_size": 1,  # ranks this engine takes in a weight update group
            "context_length": cfg.max_len,
            "weight_version": sched.weight_version,
            "paused": sched.paused_mode,
            "running_requests": len(sched.running),
            "queued_requests": len(sched.waiting),
        }

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/health_generate")
    async def health_generate():
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        req = engine.make_request(
            [0],
            None,
            SamplingParams(max_new_tokens=1, temperature=0.0),
            lambda r, f: f and loop.call_soon_threadsafe(q.put_nowait, True),
        )
        sched.submit(req)
        try:
            await asyncio.wait_for(q.get(), timeout=30)
        except asyncio.TimeoutError:
            sched.cancel(req, "health check timed out")
            return _error(503, "no token generated within 30 s (paused or overloaded)")
        return {"status": "ok", "finish_reason": req.finish_reason}

    @app.get("/metrics")
    async def metrics():
        engine.metrics.running.set(len(sched.running))
        engine.metrics.queued.set(len(sched.waiting))
        engine.metrics.refresh_rate()
        return PlainTextResponse(
            generate_latest(engine.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    return app


async def _stream(engine: Engine, req: Request, q: asyncio.Queue, return_logprob: bool, return_entropy: bool):
    """SGLang's SSE stream: one ``data:`` chunk per step (cumulative output), then ``data: [DONE]``;
    a request that failed in the engine ends with an ``error`` event. A client that goes away
    (Starlette cancels the stream, or closes it) aborts the request."""
    try:
        finished = False
        while not finished:
            finished = await q.get()
            while not q.empty():
                finished = finished or q.get_nowait()
            reason = req.finish_reason or {}
            if reason.get("status_code", 200) >= 500:
                error = {"message": reason.get("message"), "code": reason["status_code"]}
                yield f"data: {json.dumps({'error': error})}\n\n"
                break
            yield f"data: {json.dumps(engine.response(req, return_logprob, return_entropy))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not req.finished:
            engine.scheduler.cancel(req, "client disconnected")


def _check_version(version: Any) -> None:
    if version is not None and (
        not isinstance(version, str) or len(version) > MAX_WEIGHT_VERSION_CHARS or has_lone_surrogate(version)
    ):
        raise BadRequest(f"weight_version must be a string of at most {MAX_WEIGHT_VERSION_CHARS} characters")


def check_listen(host: str, token: str | None) -> None:
    """Without BEBOP_ENGINE_TOKEN the engine only listens on loopback (as the gateway does)."""
    check_token("BEBOP_ENGINE_TOKEN", token)
    if host not in LOOPBACK and not token:
        raise ValueError(
            f"refusing to listen on {host} without BEBOP_ENGINE_TOKEN: "
            "without a token the engine only listens on loopback"
        )


def serve_engine(cfg: EngineConfig, host: str, port: int) -> None:
    import faulthandler

    import uvicorn

    # A crash inside a native op (segfault, abort) would otherwise end the engine without a word:
    # load tests saw engines vanish with nothing in their logs.
    faulthandler.enable()
    check_listen(host, cfg.api_token)
    engine = Engine(cfg)
    engine.scheduler.start()
    log.info("engine on %s:%d serving %s (spec %s)", host, port, cfg.model_path, cfg.spec)
    uvicorn.run(
        build_app(engine),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
