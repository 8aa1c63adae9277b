"""What the engine is and how it is doing: model and server info, health checks, Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest

from ..sampling import SamplingParams
from .deps import EngineDep, error_response

PROMETHEUS_TEXT = "text/plain; version=0.0.4"
HEALTH_PROMPT = [0]  # one token id every vocabulary has

router = APIRouter()


@router.get("/model_info")
async def model_info(engine: EngineDep):
    return {
        "model_path": engine.model_path,
        "tokenizer_path": engine.model_path,
        "is_generation": True,
        "weight_version": engine.scheduler.weight_version,
        "vocab_size": engine.vocab_size,
        "bebop_staged_weights": True,  # accepts "stage" and /commit_staged_weights
    }


@router.get("/server_info")
async def server_info(engine: EngineDep):
    cfg, sched = engine.cfg, engine.scheduler
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


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/health_generate")
async def health_generate(engine: EngineDep):
    # One greedy token through the scheduler: the engine is alive, not only its HTTP server. (A
    # comment, not a docstring: FastAPI would publish a docstring in /openapi.json.)
    q: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    req = engine.new_request(
        HEALTH_PROMPT,
        None,
        SamplingParams(max_new_tokens=1, temperature=0.0),
        lambda r, f: f and loop.call_soon_threadsafe(q.put_nowait, True),
    )
    engine.scheduler.submit(req)  # Overloaded: a 503 through the app's handler
    timeout = engine.cfg.health_generate_timeout_s
    try:
        await asyncio.wait_for(q.get(), timeout=timeout)
    except asyncio.TimeoutError:
        engine.scheduler.cancel(req, "health check timed out")
        return error_response(503, f"no token generated within {timeout:g} s (paused or overloaded)")
    return {"status": "ok", "finish_reason": req.finish_reason}


@router.get("/metrics")
async def metrics(engine: EngineDep):
    m, sched = engine.metrics, engine.scheduler
    m.running.set(len(sched.running))
    m.queued.set(len(sched.waiting))
    m.refresh_rate()
    return PlainTextResponse(generate_latest(m.registry).decode(), media_type=PROMETHEUS_TEXT)
