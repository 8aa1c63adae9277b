"""Locust users shaped like RL rollouts against ``bebop serve``.

    locust -f loadtest/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:8000

Users (weights are relative spawn shares):

- ``GrpoUser``: GRPO groups (one prompt, n = 8 samples) with a long-tailed ``max_new_tokens``,
  half of them streamed (NDJSON) and half answered at once; a task label for the metrics.
- ``SessionUser``: multi-turn sessions: each turn appends the sampled answer and a new question to
  the conversation and sends it with the same ``session_id`` (sticky routing).
- ``GenerateUser``: SGLang ``/generate`` pass-through, as slime or AReaL clients send it.
- ``ReloadUser``: one admin that reloads the served weights from disk every ``BEBOP_LT_RELOAD_S``
  seconds (0 turns it off), as a trainer does after each step.

Every answer is checked, not just its status: a rollout must return exactly n samples per prompt,
each with tokens and a weight version; a stream must end with every sample and no error line. A
response that fails a check is a failed request, so ``locust`` exits 1 on any of them.

Beyond locust's latency table, the run collects tokens/s, accept length, acceptance, target entropy
and samples per weight version; they are printed at the end and written as JSON to
``BEBOP_LT_STATS`` when it is set (``loadtest/run.py`` sets it).

Environment: ``BEBOP_API_TOKEN`` / ``BEBOP_ADMIN_TOKEN`` (sent when set), ``BEBOP_LT_MODEL_PATH``
(the checkpoint ``ReloadUser`` reloads; default: ask the gateway for nothing and skip reloads),
``BEBOP_LT_RELOAD_S`` (default 20), ``BEBOP_LT_PAUSE_MODE`` (default ``retract``).

Runs inside locust's own virtual environment: standard library and locust only, no ``bebop`` import.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter

from locust import FastHttpUser, between, events, task

GROUP_SIZE = 8  # samples per GRPO prompt, the group size GRPO papers use most
# Long-tailed completion budgets: most rollouts are short, a few run long (the RL straggler shape).
MAX_NEW_TOKENS = (16, 24, 32, 48, 64, 96, 160)
MAX_NEW_TOKENS_WEIGHTS = (30, 25, 18, 12, 8, 5, 2)
SESSION_TURNS = 3
TIMEOUT_S = 300.0  # a rollout under load may queue behind others; the gateway answers or errors


def _headers(token_env: str) -> dict[str, str]:
    token = os.environ.get(token_env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def arith_prompt(rng: random.Random) -> str:
    """A demo ``arith`` prompt (two or three two-digit operands, running totals never negative)."""
    while True:
        operands = [rng.randint(10, 99)] + [
            rng.choice((1, -1)) * rng.randint(10, 99) for _ in range(rng.randint(1, 2))
        ]
        if all(sum(operands[: i + 1]) >= 0 for i in range(len(operands))):
            return str(operands[0]) + "".join(f"{x:+d}" for x in operands[1:]) + "="


def story_prompt(rng: random.Random) -> str:
    adjective = rng.choice(("brave", "old", "quiet", "clever", "tiny", "wise"))
    topic = rng.choice(("fox", "owl", "robot", "sailor", "dragon", "bear"))
    return f"story about a {adjective} {topic}:"


# ---------------------------------------------------------------------------------------------
# custom statistics


class RolloutStats:
    """Figures locust does not track: per-sample tokens, acceptance and entropy, weight versions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # gevent is cooperative, but the stats are read at exit too
        self.started = time.monotonic()
        self.samples = 0
        self.tokens = 0
        self.accept_length_sum = 0.0
        self.accept_rate_sum = 0.0
        self.spec_samples = 0
        self.entropy_sum = 0.0
        self.entropy_samples = 0
        self.versions: Counter[str] = Counter()
        self.reloads_ok = 0
        self.reloads_failed = 0

    def add_sample(self, sample: dict) -> None:
        with self.lock:
            self.samples += 1
            self.tokens += len(sample.get("output_ids") or ())
            spec = sample.get("spec") or {}
            if spec.get("accept_length") is not None:
                self.spec_samples += 1
                self.accept_length_sum += spec["accept_length"]
                self.accept_rate_sum += spec.get("accept_rate") or 0.0
            if sample.get("entropy_mean") is not None:
                self.entropy_samples += 1
                self.entropy_sum += sample["entropy_mean"]
            self.versions[str(sample.get("weight_version"))] += 1

    def summary(self) -> dict:
        with self.lock:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            return {
                "elapsed_s": round(elapsed, 2),
                "samples": self.samples,
                "tokens": self.tokens,
                "tokens_per_s": round(self.tokens / elapsed, 1),
                "samples_per_s": round(self.samples / elapsed, 2),
                "accept_length": round(self.accept_length_sum / self.spec_samples, 3)
                if self.spec_samples
                else None,
                "acceptance": round(self.accept_rate_sum / self.spec_samples, 4)
                if self.spec_samples
                else None,
                "entropy": round(self.entropy_sum / self.entropy_samples, 4)
                if self.entropy_samples
                else None,
                "samples_per_weight_version": dict(self.versions),
                "reloads_ok": self.reloads_ok,
                "reloads_failed": self.reloads_failed,
            }


STATS = RolloutStats()


@events.test_start.add_listener
def _on_start(environment, **_kwargs) -> None:
    STATS.started = time.monotonic()


@events.quitting.add_listener
def _on_quit(environment, **_kwargs) -> None:
    summary = STATS.summary()
    summary["locust_failures"] = environment.stats.total.num_failures
    summary["locust_requests"] = environment.stats.total.num_requests
    print("bebop rollout stats: " + json.dumps(summary, sort_keys=True), flush=True)
    path = os.environ.get("BEBOP_LT_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)


def check_samples(samples: list[dict], expected: int) -> str | None:
    """Why the samples of one rollout request are not a complete answer, or None if they are."""
    if len(samples) != expected:
        return f"{len(samples)} samples, expected {expected}"
    for s in samples:
        if not s.get("output_ids"):
            return f"sample {s.get('prompt_index')}/{s.get('sample_index')} has no tokens"
        if not s.get("weight_version"):
            return "sample without weight_version"
    if len({(s["prompt_index"], s["sample_index"]) for s in samples}) != expected:
        return "duplicate samples"
    return None


# ---------------------------------------------------------------------------------------------
# users


class _RolloutBase(FastHttpUser):
    abstract = True
    network_timeout = TIMEOUT_S
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.api = {**_headers("BEBOP_API_TOKEN"), "content-type": "application/json"}

    def max_new_tokens(self) -> int:
        return self.rng.choices(MAX_NEW_TOKENS, MAX_NEW_TOKENS_WEIGHTS)[0]

    def rollout(self, prompts: list[dict], sampling: dict, stream: bool, name: str, label: str) -> list[dict]:
        body = {
            "prompts": prompts,
            "sampling_params": sampling,
            "seed": self.rng.randrange(1 << 30),
            "task": label,
            "stream": stream,
        }
        expected = sum(p.get("n", 1) for p in prompts)
        samples: list[dict] = []
        # The body is read in full before the clock stops, so a stream's time is its last sample's.
        with self.client.post(
            "/v1/rollouts", json=body, headers=self.api, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return []
            try:
                if stream:
                    for line in r.text.splitlines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if "error" in item:
                            r.failure(f"stream error: {str(item['error'])[:200]}")
                            return []
                        samples.append(item)
                else:
                    samples = r.json()["results"]
            except (ValueError, KeyError, TypeError) as e:
                r.failure(f"bad body: {e!r}")
                return []
            problem = check_samples(samples, expected)
            if problem:
                r.failure(problem)
                return []
            r.success()
        for s in samples:
            STATS.add_sample(s)
        return samples


class GrpoUser(_RolloutBase):
    """One GRPO group per call: a prompt, n = 8 samples; half streamed."""

    weight = 6
    wait_time = between(0.0, 0.5)

    @task(3)
    def arith_group(self) -> None:
        stream = self.rng.random() < 0.5
        prompt = {"text": arith_prompt(self.rng), "n": GROUP_SIZE}
        sampling = {"temperature": 1.0, "max_new_tokens": self.max_new_tokens()}
        self.rollout([prompt], sampling, stream, "rollouts arith" + (" stream" if stream else ""), "arith")

    @task(1)
    def story_group(self) -> None:
        stream = self.rng.random() < 0.5
        prompt = {"text": story_prompt(self.rng), "n": GROUP_SIZE}
        sampling = {"temperature": 1.0, "max_new_tokens": self.max_new_tokens()}
        self.rollout([prompt], sampling, stream, "rollouts story" + (" stream" if stream else ""), "story")


class SessionUser(_RolloutBase):
    """Multi-turn sessions: each turn extends the conversation, sticky by ``session_id``."""

    weight = 2
    wait_time = between(0.0, 0.5)

    @task
    def session(self) -> None:
        session_id = f"lt-{self.rng.randrange(1 << 40):x}"
        conversation = arith_prompt(self.rng)
        for turn in range(SESSION_TURNS):
            prompt = {"text": conversation, "n": 1, "session_id": session_id}
            samples = self.rollout(
                [prompt], {"temperature": 0.7, "max_new_tokens": 48}, False, f"session turn {turn}", "session"
            )
            if not samples:
                return
            conversation = conversation + (samples[0].get("text") or "") + " " + arith_prompt(self.rng)


class GenerateUser(FastHttpUser):
    """SGLang ``/generate`` pass-through (non-streaming), as RL frameworks built on SGLang send it."""

    weight = 1
    wait_time = between(0.0, 0.5)
    network_timeout = TIMEOUT_S

    def on_start(self) -> None:
        self.rng = random.Random()
        self.api = {**_headers("BEBOP_API_TOKEN"), "content-type": "application/json"}

    @task
    def generate(self) -> None:
        body = {
            "text": arith_prompt(self.rng),
            "sampling_params": {
                "temperature": 1.0,
                "max_new_tokens": 48,
                "sampling_seed": self.rng.randrange(1 << 30),
            },
            "return_logprob": True,
        }
        with self.client.post(
            "/generate", json=body, headers=self.api, name="generate", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return
            try:
                data = r.json()
                meta = data["meta_info"]
                ids = data["output_ids"]
            except (ValueError, KeyError, TypeError) as e:
                r.failure(f"bad body: {e!r}")
                return
            if not ids or meta.get("completion_tokens") != len(ids):
                r.failure("completion_tokens does not match output_ids")
                return
            r.success()
        STATS.add_sample(
            {
                "output_ids": ids,
                "weight_version": meta.get("weight_version"),
                "spec": {
                    "accept_length": meta.get("spec_accept_length"),
                    "accept_rate": meta.get("spec_accept_rate"),
                },
                "entropy_mean": meta.get("entropy_mean"),
            }
        )


class ReloadUser(FastHttpUser):
    """The trainer's side: reload the weights from disk on a schedule (a new version each time)."""

    weight = 1
    fixed_count = 1  # exactly one reloader, whatever the user count
    network_timeout = TIMEOUT_S

    def wait_time(self) -> float:
        period = float(os.environ.get("BEBOP_LT_RELOAD_S", "20"))
        return period if period > 0 else 3600.0  # off: this user idles

    def on_start(self) -> None:
        self.admin = {**_headers("BEBOP_ADMIN_TOKEN"), "content-type": "application/json"}
        self.model_path = os.environ.get("BEBOP_LT_MODEL_PATH")
        self.count = 0

    @task
    def reload(self) -> None:
        if not self.model_path or float(os.environ.get("BEBOP_LT_RELOAD_S", "20")) <= 0:
            return
        self.count += 1
        body = {
            "model_path": self.model_path,
            "version": f"lt-{os.getpid()}-{self.count}",
            "pause_mode": os.environ.get("BEBOP_LT_PAUSE_MODE", "retract"),
        }
        with self.client.post(
            "/v1/weights", json=body, headers=self.admin, name="reload", catch_response=True
        ) as r:
            ok = r.status_code == 200
            with STATS.lock:
                if ok:
                    STATS.reloads_ok += 1
                else:
                    STATS.reloads_failed += 1
            if not ok:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:300]}")


__all__ = ["GenerateUser", "GrpoUser", "ReloadUser", "SessionUser", "check_samples"]
