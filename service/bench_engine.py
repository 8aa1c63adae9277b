"""``bebop bench engine``: decoding throughput of the embedded engine by speculation mode.

Each configuration decodes the same 16 held-out story and arithmetic prompts (to EOS or
``new_tokens``) with the same seeds through ``ModelRunner`` (the engine's execution path, without
HTTP), ``batch`` at a time, and reports generated tokens per second of wall time, the accept
length (tokens per verify step) and the draft acceptance rate. In the same run, Hugging Face
``transformers`` ``generate`` on the same checkpoint (plain sampling, and assisted generation by
prompt lookup, batch 1 only in transformers) is timed as the peer a user would try first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bebop.service.engine.runner import ModelRunner
from bebop.service.engine.sampling import SamplingParams
from bebop.service.model import load_model

SPECS = ("none", "target_only", "rejection")


def workload(model_dir: Path, n: int = 16) -> list[list[int]]:
    """n held-out prompts, story and arithmetic alternating (high and low entropy)."""
    from tokenizers import Tokenizer

    from bebop.training.tasks import held_out_prompts

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
) -> dict:
    """Decode every prompt to EOS or ``new_tokens``, ``batch`` at a time (a finished row's place is
    refilled at once, as in the scheduler); tokens/s over the whole workload."""
    runner = ModelRunner(model, batch, max(len(p) for p in prompts) + new_tokens + 8, spec, draft_steps)
    params = SamplingParams(temperature=temperature, max_new_tokens=new_tokens)
    eos = model.config.eos_token_id
    todo = list(enumerate(prompts))
    running: list[tuple] = []  # (state, produced, done?)
    tokens = verify_steps = verify_tokens = proposed = accepted = 0
    start = time.perf_counter()
    while todo or running:
        while todo and len(running) < batch:
            i, prompt = todo.pop(0)
            state, out = runner.prefill(prompt, params, seed=i)
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
    elapsed = time.perf_counter() - start
    return {
        "spec": spec,
        "batch": batch,
        "temperature": temperature,
        "tokens_per_s": tokens / elapsed,
        "accept_length": verify_tokens / verify_steps if verify_steps else None,
        "acceptance": (accepted / proposed) if proposed else None,
    }


def run_hf(
    model_dir: Path,
    prompts: list[list[int]],
    batch: int,
    temperature: float,
    new_tokens: int,
    assisted: bool,
    draft_steps: int = 3,
) -> dict | None:
    """transformers ``generate`` on the same checkpoint; None when transformers is missing."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
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
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
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


def run_engine_bench(
    model_dir: Path,
    batches: tuple[int, ...] = (1, 16),
    temperatures: tuple[float, ...] = (1.0, 0.6),
    new_tokens: int = 96,
    draft_steps: int = 3,
    with_hf: bool = True,
) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(model_dir)
    prompts = workload(model_dir)
    rows = []
    for batch in batches:
        for temperature in temperatures:
            for spec in SPECS:
                run_config(model, spec, prompts[:2], batch, temperature, 8, draft_steps)  # warm-up
                rows.append(run_config(model, spec, prompts, batch, temperature, new_tokens, draft_steps))
            if with_hf:
                for assisted in (False, True):
                    run_hf(
                        model_dir, prompts[:batch], batch, temperature, 8, assisted, draft_steps
                    )  # warm-up
                    row = run_hf(model_dir, prompts, batch, temperature, new_tokens, assisted, draft_steps)
                    if row is not None:
                        rows.append(row)

    def rate(spec: str, batch: int) -> float:
        return next(
            r["tokens_per_s"]
            for r in rows
            if r["spec"] == spec and r["batch"] == batch and r["temperature"] == 1.0
        )

    speedup = {f"b{b}": rate("rejection", b) / rate("none", b) for b in batches if 1.0 in temperatures}
    return {
        "model": str(model_dir),
        "new_tokens": new_tokens,
        "draft_steps": draft_steps,
        "rows": rows,
        "speedup": speedup,
    }
