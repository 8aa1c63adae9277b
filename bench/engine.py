"""``bebop bench engine``: decoding throughput of the embedded engine by speculation mode.

Each configuration decodes the same held-out story and arithmetic prompts (64 by default, to EOS
or ``new_tokens``) with the same seeds through ``ModelRunner`` (the engine's execution path, without
HTTP), ``batch`` at a time, and reports generated tokens per second of wall time, the accept
length (tokens per verify step) and the draft acceptance rate. In the same run, Hugging Face
``transformers`` ``generate`` on the same checkpoint (plain sampling, and assisted generation by
prompt lookup, batch 1 only in transformers) is timed as the peer a user would try first.

The speculative ceiling. Also in the same run, the model calls a step cannot avoid are timed
alone at each batch size (``component_times``): a 1-token target forward (t_decode), a G+1-token
verify forward (t_verify) and a 1-token MTP step (t_mtp), all over the engine's KV pool at a
typical context. With the measured accept length L, no engine can beat
``ceiling = L * t_decode / (t_verify + G * t_mtp)`` over plain decoding; ``efficiency =
speedup / ceiling`` is how much of it the engine keeps (the rest is laws, sampling, bookkeeping).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..model import load_model
from ..service.engine.runner import ModelRunner, default_device
from ..service.engine.sampling import SamplingParams
from ..service.engine.scheduler import prefill_groups

SPECS = ("none", "target_only", "rejection")


def workload(model_dir: Path, n: int = 16) -> list[list[int]]:
    """n held-out prompts, story and arithmetic alternating (high and low entropy)."""
    from tokenizers import Tokenizer

    from ..training.tasks import held_out_prompts

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    story, arith = held_out_prompts("story", n, 0), held_out_prompts("arith", n, 0)
    return [tok.encode((story if i % 2 == 0 else arith)[i // 2].prompt).ids for i in range(n)]


def run_config(
    model,
    spec: str,
    prompts: list[list[int]],
    batch: int,
    temperature: float,
    new_tokens: int,
    draft_steps: int,
    device: torch.device | None = None,
    cuda_graphs: bool | None = None,
    first_seed: int = 0,
) -> dict:
    """Decode every prompt to EOS or ``new_tokens``, ``batch`` at a time (a finished row's place is
    refilled at once, as in the scheduler); tokens/s over the whole workload, and the raw counts.
    Prompt i decodes with seed first_seed + i."""
    max_len = max(len(p) for p in prompts) + new_tokens + 8
    runner = ModelRunner(model, batch, max_len, spec, draft_steps, device=device, cuda_graphs=cuda_graphs)
    params = SamplingParams(temperature=temperature, max_new_tokens=new_tokens)
    eos = model.config.eos_token_id
    todo = list(enumerate(prompts))
    running: list[tuple] = []  # (state, produced, done?)
    tokens = verify_steps = verify_tokens = proposed = accepted = 0
    start = time.perf_counter()
    while todo or running:
        admitted = []
        while todo and len(running) + len(admitted) < batch:
            admitted.append(todo.pop(0))
        # as the scheduler admits: prompts of similar lengths prefilled together, one forward a group
        for group in prefill_groups(admitted, length=lambda item: len(item[1])):
            seeds = [first_seed + i for i, _ in group]
            pairs = runner.prefill_group([p for _, p in group], [params] * len(group), seeds)
            for state, out in pairs:
                running.append([state, len(out.tokens), out.tokens[-1] == eos])
                tokens += 1
        live = [r for r in running if not r[2] and r[1] < new_tokens]
        for r in running:
            if r not in live:
                runner.release(r[0])
        running = live
        if not running:
            continue
        for r, out in zip(running, runner.step([r[0] for r in running]), strict=True):
            kept = out.tokens[: new_tokens - r[1]]
            if eos in kept:
                kept = kept[: kept.index(eos) + 1]
                r[2] = True
            r[1] += len(kept)
            tokens += len(kept)
            verify_steps += 1
            verify_tokens += len(out.tokens)
            proposed += out.drafts_proposed
            accepted += out.drafts_accepted
    _sync(runner.device)
    elapsed = time.perf_counter() - start
    counts = {
        "tokens": tokens,
        "seconds": elapsed,
        "verify_steps": verify_steps,
        "verify_tokens": verify_tokens,
        "proposed": proposed,
        "accepted": accepted,
    }
    return {**_row(spec, batch, temperature, counts), "counts": counts}


def _row(spec: str, batch: int, temperature: float, c: dict) -> dict:
    """A report row from a run's (or several runs' summed) counts."""
    return {
        "spec": spec,
        "batch": batch,
        "temperature": temperature,
        "tokens_per_s": c["tokens"] / c["seconds"],
        "accept_length": c["verify_tokens"] / c["verify_steps"] if c["verify_steps"] else None,
        "acceptance": c["accepted"] / c["proposed"] if c["proposed"] else None,
    }


def run_interleaved(
    model,
    prompts: list[list[int]],
    batch: int,
    temperature: float,
    new_tokens: int,
    draft_steps: int,
    rounds: int,
    device: torch.device | None = None,
    cuda_graphs: bool | None = None,
) -> dict[str, dict]:
    """Every spec mode on ``prompts``, ``rounds`` times, interleaved in chunks of 4 * batch prompts
    (each chunk decoded by every mode in turn, refilled within the chunk): a shared machine's slow
    spells, seconds long, then fall on every mode alike. Returns a row per mode: tokens/s of all
    rounds together (total tokens over total seconds), and per round in ``tokens_per_s_runs``."""
    chunk = 4 * batch
    totals = {spec: Counter() for spec in SPECS}
    per_round: dict[str, list[float]] = {spec: [] for spec in SPECS}
    for _ in range(rounds):
        this_round = {spec: Counter() for spec in SPECS}
        for first in range(0, len(prompts), chunk):
            for spec in SPECS:
                run = run_config(
                    model, spec, prompts[first : first + chunk], batch, temperature, new_tokens,
                    draft_steps, device, cuda_graphs, first_seed=first,
                )  # fmt: skip
                this_round[spec].update(run["counts"])
        for spec in SPECS:
            per_round[spec].append(this_round[spec]["tokens"] / this_round[spec]["seconds"])
            totals[spec].update(this_round[spec])
    return {
        spec: {**_row(spec, batch, temperature, c), "tokens_per_s_runs": per_round[spec]}
        for spec, c in totals.items()
    }


def run_hf(
    model_dir: Path,
    prompts: list[list[int]],
    batch: int,
    temperature: float,
    new_tokens: int,
    assisted: bool,
    draft_steps: int = 3,
    device: torch.device | None = None,
) -> dict | None:
    """transformers ``generate`` on the same checkpoint; None when transformers is missing."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    device = device or torch.device("cpu")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
    torch.manual_seed(0)
    pad = hf.config.pad_token_id or 0
    eos = hf.config.eos_token_id
    kwargs: dict[str, Any] = {
        "do_sample": temperature > 0,
        "max_new_tokens": new_tokens,
        "pad_token_id": pad,
    }
    if temperature > 0:
        kwargs["temperature"] = temperature
    if assisted:
        if batch != 1:
            return None  # transformers' assisted generation takes batch size 1 only
        # Our MTP head is not a transformers assistant; prompt-lookup decoding is the assisted mode a
        # user gets without a separate draft model.
        kwargs["prompt_lookup_num_tokens"] = draft_steps
    start = time.perf_counter()
    tokens = 0
    groups = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    for group in groups:  # transformers decodes a batch until its longest row ends
        width = max(len(p) for p in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
        for row in out[:, width:].tolist():
            tokens += (row.index(eos) + 1) if eos in row else len(row)
    elapsed = time.perf_counter() - start
    return {
        "spec": "hf_assisted" if assisted else "hf_generate",
        "batch": batch,
        "temperature": temperature,
        "tokens_per_s": tokens / elapsed,
        "accept_length": None,
        "acceptance": None,
    }


def component_times(
    model, batch: int, draft_steps: int, context: int = 64, repeats: int = 60, device=None
) -> dict[str, float]:
    """Median milliseconds of the model calls a step cannot avoid, at ``batch`` rows of ``context``
    cached tokens on the engine's KV pool: decode (1 token), verify (G+1 tokens), one MTP step."""
    G = draft_steps
    runner = ModelRunner(model, batch, context + 4 * G + 8, "rejection", G, device=device)
    params = SamplingParams(temperature=1.0, max_new_tokens=1)
    for b in range(batch):
        runner.prefill([(7 * b + j) % model.config.vocab_size for j in range(context)], params, seed=b)
    dev, rows = runner.device, slice(0, batch)
    t = runner.position[:batch].clone()
    C = model.config.hidden_size

    def target(T: int):
        index = t[:, None] + runner._arange[:T]
        ids = torch.zeros(batch, T, dtype=torch.int64, device=dev)
        span = context + T
        return lambda: model(ids, index, runner._mask(t, T, span), runner.kv.views(rows, index, span))

    def mtp_step():
        index = (t - 1)[:, None]
        ids = torch.zeros(batch, 1, dtype=torch.int64, device=dev)
        hidden = torch.zeros(batch, 1, C, dtype=runner.pend_hidden.dtype, device=dev)
        span = context + 1
        mask, caches = runner._mask(t - 1, 1, span), runner.mtp_kv.views(rows, index, span)
        return lambda: model.mtp(model.embed(ids), hidden, model.rope(index + 1), model.lm_head, mask, caches)

    calls = {"decode_ms": target(1), "verify_ms": target(G + 1), "mtp_ms": mtp_step()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(3):
            for fn in calls.values():
                fn()
        # round-robin, so that a slow spell of the machine weighs on the three medians alike
        for _ in range(repeats):
            for name, fn in calls.items():
                _sync(dev)
                start = time.perf_counter()
                fn()
                _sync(dev)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine_bench(
    model_dir: Path,
    batches: tuple[int, ...] = (1, 16),
    temperatures: tuple[float, ...] = (1.0, 0.6),
    new_tokens: int = 96,
    draft_steps: int = 3,
    with_hf: bool = True,
    device: str | torch.device | None = None,
    cuda_graphs: bool | None = None,
    prompts: int = 64,
    rounds: int = 3,
) -> dict:
    """Every (batch, temperature, spec) on ``prompts`` held-out prompts, ``rounds`` times, the
    modes interleaved (``run_interleaved``); the transformers peer once per (batch, temperature).

    Finished rows are refilled from a chunk of 4 * batch prompts, so the batch stays mostly full,
    as in an RL rollout phase; with only as many prompts as rows, one wave decodes and its
    longest row (the one that accepts least) would set the time.
    """
    device = torch.device(device) if device is not None else default_device()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(model_dir).to(device)
    work = workload(model_dir, prompts)
    rows, components = [], {}
    for batch in batches:
        components[f"b{batch}"] = component_times(model, batch, draft_steps, device=device)
        for temperature in temperatures:
            config = (batch, temperature)
            for spec in SPECS:  # warm-up
                run_config(model, spec, work[:2], *config, 8, draft_steps, device, cuda_graphs)
            modes = run_interleaved(
                model, work, *config, new_tokens, draft_steps, rounds, device, cuda_graphs
            )
            rows.extend(modes.values())
            if with_hf:
                for assisted in (False, True):
                    run_hf(
                        model_dir, work[:batch], batch, temperature, 8, assisted, draft_steps, device
                    )  # warm-up
                    row = run_hf(
                        model_dir, work, batch, temperature, new_tokens, assisted, draft_steps, device
                    )
                    if row is not None:
                        rows.append(row)

    def row_of(spec: str, batch: int) -> dict:
        return next(r for r in rows if r["spec"] == spec and r["batch"] == batch and r["temperature"] == 1.0)

    speedup, ceiling, efficiency = {}, {}, {}
    if 1.0 in temperatures:
        for b in batches:
            key, c = f"b{b}", components[f"b{b}"]
            speedup[key] = row_of("rejection", b)["tokens_per_s"] / row_of("none", b)["tokens_per_s"]
            accept_length = row_of("rejection", b)["accept_length"]
            ceiling[key] = accept_length * c["decode_ms"] / (c["verify_ms"] + draft_steps * c["mtp_ms"])
            efficiency[key] = speedup[key] / ceiling[key]
    return {
        "model": str(model_dir),
        "device": _device_name(device),
        "cuda_graphs": device.type == "cuda" and cuda_graphs is not False,
        "new_tokens": new_tokens,
        "draft_steps": draft_steps,
        "prompts": prompts,
        "rounds": rounds,
        "rows": rows,
        "components": components,
        "speedup": speedup,
        "ceiling": ceiling,
        "efficiency": efficiency,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
