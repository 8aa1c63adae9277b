"""An external GRPO trainer on the demo arithmetic task that talks to Bebop only through the SDK.

    python examples/grpo_arith.py --steps 30 --out runs/grpo                  # one run (spec rejection)
    python examples/grpo_arith.py --steps 30 --modes none target_only rejection:ce rejection:e2e_tv \\
        --out runs/compare                                                   # the comparison + plot

Each step: sample GRPO groups through ``RolloutClient.rollouts`` (prompt token ids in, completions
with the engine's log-probs, acceptance and entropy out), score them with the task's verifiable
reward, take one clipped policy-gradient step on group-normalised advantages (GRPO without the KL
term), write a checkpoint, and hot-reload the engines: from disk (``update_weights``) on even steps,
by a torch.distributed push from this process's memory (``push_weights``) on odd steps. The next
step's rollouts must carry the new weight version.

The trainer is external: it starts ``bebop serve`` (or uses ``--url``), keeps its own copy of the
policy (the checkpoint format is Hugging Face qwen3; ``bebop.model`` reads and writes it,
as ``transformers`` would) and never calls the engines directly. The MTP draft head is not
trained: it stays the pre-RL head, as in the paper, and its acceptance is what the modes compare.

Tasks (``--task``): ``arith`` (default; T = 1.2, entropy about 0.1 nats) or ``story`` (T = 1.0,
about 1.5 nats; the story task's checks plus a bonus for words no other sample of the GRPO group
uses), where the acceptance/entropy comparison of the modes has room to show.

Modes (``--modes``): ``none`` (no speculation), ``target_only`` (argmax drafts), ``rejection:<loss>``
(sampled drafts verified by rejection sampling, with the head trained by ``<loss>``, one of the
demo model's ``heads/<loss>.safetensors``). Every mode runs with the same seeds. Per step, a JSON
line in ``<out>/<mode>/metrics.jsonl``: reward, entropy, acceptance, accept length, rollout time,
update time, checkpoint time, reload time and kind, step time. With several modes: ``summary.json``,
``summary.md`` and ``acceptance_vs_entropy.png`` (matplotlib) with fitted slopes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bebop.model import load_model, save_model
from bebop.service.client import Prompt, RolloutClient, SamplingParams
from bebop.service.ports import free_port
from bebop.training.tasks import ArithmeticTask, StoryTask, Task, is_held_out
from bebop.training.tokenizer import EOS_TOKEN, decode, encode, load_tokenizer

CLIP_EPS = 0.2  # PPO/GRPO ratio clip
NOVELTY_WEIGHT = 0.5  # story: the bonus for words no sibling completion uses, beside validity's 0..1
BOOTSTRAP_DRAWS = 1000  # resamples of the steps for the slope ratio's interval
ADV_EPS = 1e-4  # groups whose rewards are all equal get advantage 0, not a division by zero
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def demo_model_dir() -> Path:
    bebop = Path(sys.executable).parent / "bebop"
    out = subprocess.run([str(bebop), "demo-model", "--path"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def initial_checkpoint(source: Path, head: str | None, out: Path) -> Path:
    """The demo model with its ``mtp.*`` head replaced by ``heads/<head>.safetensors`` (or kept)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        shutil.copy(source / name, out / name)
    state = load_file(str(source / "model.safetensors"))
    if head is not None:
        state.update(load_file(str(source / "heads" / f"{head}.safetensors")))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@contextlib.contextmanager
def bebop_serve(
    model: Path, spec: str, weights_root: Path, engines: int, max_running: int, log: Path
) -> Iterator[str]:
    port = free_port()
    bebop = Path(sys.executable).parent / "bebop"
    cmd = [str(bebop), "serve", "--port", str(port), "--engines", str(engines), "--model", str(model)]
    cmd += ["--spec", spec, "--weights-root", str(weights_root), "--max-running", str(max_running)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"bebop serve exited {proc.returncode}; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("bebop serve not ready")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def sequence_logprobs(
    policy: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [N, Lc] of each completion under the policy, and their mask [N, Lc]."""
    N = len(prompts)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    Lc = max(len(c) for c in completions)
    ids = torch.zeros(N, max(lengths), dtype=torch.int64)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
    logits = policy(ids).logits / temperature  # [N, L, V]; right padding never reaches real tokens
    logp_all = torch.log_softmax(logits, dim=-1)
    out = torch.zeros(N, Lc)
    mask = torch.zeros(N, Lc)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)  # the logits that predict each completion token
        out[i, : len(c)] = logp_all[i, pos, torch.tensor(c)]
        mask[i, : len(c)] = 1.0
    return out, mask


def grpo_loss(
    new_logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """Clipped surrogate, averaged over each sequence's tokens, then over sequences (GRPO)."""
    ratio = torch.exp(new_logp - old_logp)  # [N, Lc]
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS) * adv)
    per_seq = (surrogate * mask).sum(1) / mask.sum(1).clamp(min=1)
    return -per_seq.mean()


def training_prompts(task: Task, seed: int, n: int = 4096) -> list[str]:
    """Distinct prompts from the training side of the task's prompt space (never a held-out one);
    fewer than ``n`` where the space is smaller (``story`` has a few hundred)."""
    rng = random.Random(f"grpo_arith/{seed}")
    prompts: set[str] = set()
    misses = 0
    while len(prompts) < n and misses < 20 * n:  # stop once new prompts have become rare
        size = len(prompts)
        prompt = task.sample_prompt(rng)
        if not is_held_out(prompt):
            prompts.add(prompt)
        misses += len(prompts) == size
    return sorted(prompts)


def novelty(texts: list[str], group: int) -> list[float]:
    """Per completion, the share of its words that no other completion of its GRPO group uses (0 to
    1; 0 for an empty one). ``texts`` are ordered by prompt, ``group`` per prompt. Added to the
    story task's reward (times ``NOVELTY_WEIGHT``), it favours valid stories that differ from their
    siblings, meant to raise the policy's entropy as RL on open-ended tasks does (24 steps at lr
    3e-4 did not move it: docs/results.md)."""
    shares = []
    for start in range(0, len(texts), group):
        word_sets = [set(t.replace(",", " ").replace(".", " ").split()) for t in texts[start : start + group]]
        for i, words in enumerate(word_sets):
            others = set().union(*(w for j, w in enumerate(word_sets) if j != i))
            shares.append(len(words - others) / len(words) if words else 0.0)
    return shares


def group_advantages(rewards: list[float], group: int) -> torch.Tensor:
    r = torch.tensor(rewards).view(-1, group)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + ADV_EPS)
    return adv.flatten()


def save_checkpoint(policy: torch.nn.Module, source: Path, out: Path) -> Path:
    save_model(policy, out)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def train(args: argparse.Namespace, mode: str, out: Path) -> list[dict]:
    """One GRPO run with the engines in ``mode``; returns the per-step records."""
    spec, _, head = mode.partition(":")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    source = Path(args.model) if args.model else demo_model_dir()
    init = initial_checkpoint(source, head or None, out / "ckpt" / "step-0")
    tok = load_tokenizer(init)
    eos = tok.token_to_id(EOS_TOKEN)
    temperature = args.temperature if args.temperature is not None else (1.0 if args.task == "story" else 1.2)
    task: Task = (
        StoryTask()
        if args.task == "story"
        else ArithmeticTask(min_operands=args.operands[0], max_operands=args.operands[-1])
    )
    pool = training_prompts(task, args.seed)
    policy = load_model(init)
    policy.train()
    trainable = [p for n, p in policy.named_parameters() if not n.startswith("mtp.")]
    optim = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    records: list[dict] = []
    metrics = (out / "metrics.jsonl").open("w")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(
            bebop_serve(init, spec, out, args.engines, args.max_running, out / "serve.log")
        )
        client = stack.enter_context(RolloutClient(url))
        if args.push_every:
            client.init_weights_group(master_port=free_port())
            stack.callback(client.close_weights_group)
        version = client.weights()
        for step in range(1, args.steps + 1):
            t_step = time.monotonic()
            examples = rng.sample(pool, args.prompts)
            prompt_ids = [encode(tok, prompt) for prompt in examples]
            sampling = SamplingParams(temperature=temperature, max_new_tokens=args.max_new_tokens)
            t0 = time.monotonic()
            results = client.rollouts(
                [Prompt(input_ids=ids, n=args.group) for ids in prompt_ids],
                sampling,
                seed=args.seed * 1_000_003 + step * 1000,
                return_logprobs=True,
                task=f"grpo-{args.task}",
            )
            rollout_s = time.monotonic() - t0
            results.sort(key=lambda r: (r.prompt_index, r.sample_index))
            completions = [r.output_ids for r in results]
            texts = [decode(tok, [t for t in r.output_ids if t != eos]) for r in results]
            valid = [task.reward(examples[r.prompt_index], t) for r, t in zip(results, texts, strict=True)]
            rewards = list(valid)
            if args.task == "story":
                bonus = novelty(texts, args.group)
                rewards = [v + NOVELTY_WEIGHT * b for v, b in zip(valid, bonus, strict=True)]
            versions = sorted({r.weight_version for r in results})

            t0 = time.monotonic()
            advantages = group_advantages(rewards, args.group)
            prompts_flat = [prompt_ids[r.prompt_index] for r in results]
            old_logp = torch.zeros(len(results), max(len(c) for c in completions))
            for i, r in enumerate(results):
                old_logp[i, : len(r.output_ids)] = torch.tensor(r.output_logprobs, dtype=torch.float32)
            for epoch in range(args.epochs):  # the first pass is on-policy; later ones are clipped
                optim.zero_grad()
                new_logp, mask = sequence_logprobs(policy, prompts_flat, completions, temperature)
                if epoch == 0:  # how far the engine's sampling log-probs are from the trainer's
                    gap = (new_logp.detach() - old_logp).abs() * mask
                    logp_gap = gap.sum().item() / mask.sum().item()
                loss = grpo_loss(new_logp, old_logp, mask, advantages)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optim.step()
            update_s = time.monotonic() - t0

            t0 = time.monotonic()
            tag = f"step-{step}"
            ckpt = save_checkpoint(policy, init, out / "ckpt" / tag)
            save_s = time.monotonic() - t0
            t0 = time.monotonic()
            push = bool(args.push_every) and step % args.push_every == 0
            if push:
                named = {n: p.detach() for n, p in policy.named_parameters() if not n.startswith("mtp.")}
                client.push_weights(named, version=tag)
            else:
                client.update_weights(str(ckpt), version=tag)
            reload_s = time.monotonic() - t0
            version = client.weights()
            if args.keep_checkpoints == 0 and step > 1:
                shutil.rmtree(out / "ckpt" / f"step-{step - 1}", ignore_errors=True)

            rec = {
                "mode": mode,
                "step": step,
                "reward": statistics.fmean(rewards),
                "solved": sum(v == 1.0 for v in valid) / len(valid),  # the task's own checks, all passed
                "entropy": _mean([r.entropy_mean for r in results]),
                "acceptance": _mean([r.spec.accept_rate for r in results]) if spec != "none" else None,
                "accept_length": _mean([r.spec.accept_length for r in results]) if spec != "none" else None,
                "tokens": sum(len(c) for c in completions),
                "loss": loss.item(),
                "logp_gap": logp_gap,
                "rollout_s": rollout_s,
                "update_s": update_s,
                "save_s": save_s,
                "reload_s": reload_s,
                "reload": "push" if push else "disk",
                "step_s": time.monotonic() - t_step,
                "sampled_versions": versions,
                "served_version": sorted({e.get("weight_version") for e in _engines(version)}),
                "samples": [
                    (r.entropy_mean, r.spec.accept_rate) for r in results if spec != "none"
                ],  # per-sample points for the acceptance/entropy fit
            }
            records.append(rec)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            print(
                f"[{mode}] step {step:3d} reward {rec['reward']:.3f} solved {rec['solved']:.2f} "
                f"entropy {rec['entropy']:.3f} acc {_fmt(rec['acceptance'])} "
                f"len {_fmt(rec['accept_length'])} "
                f"rollout {rollout_s:.2f}s update {update_s:.2f}s reload({rec['reload']}) {reload_s:.2f}s "
                f"step {rec['step_s']:.2f}s versions {versions}",
                flush=True,
            )
    metrics.close()
    return records


def _engines(weights: dict) -> list[dict]:
    engines = weights.get("engines", weights)
    if isinstance(engines, dict):
        return [v if isinstance(v, dict) else {"weight_version": v} for v in engines.values()]
    return list(engines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    return my - b * mx, b


def sample_slope(recs: list[dict], steps: list[int] | None = None) -> float:
    """Least-squares slope of acceptance against entropy over the rollouts of ``steps`` (indices
    into ``recs``, repeats allowed; default all)."""
    chosen = range(len(recs)) if steps is None else steps
    points = [(e, a) for i in chosen for e, a in recs[i]["samples"] if e is not None and a is not None]
    return fit([p[0] for p in points], [p[1] for p in points])[1]


def slope_ratio_ci(
    recs: list[dict], reference: list[dict], draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """95% interval of ``sample_slope(recs) / sample_slope(reference)`` by a bootstrap over steps:
    the same resampled step indices for both runs (every mode sees the same prompts at a step, and
    a step's samples are correlated through its prompts, so steps, not samples, are the units)."""
    n = min(len(recs), len(reference))
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ref = sample_slope(reference, idx)
        if ref != 0:
            ratios.append(sample_slope(recs, idx) / ref)
    ratios.sort()
    return ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


def summarize(runs: dict[str, list[dict]], out: Path, skip_steps: int, task: str = "arith") -> dict:
    """Per mode: reward first/last, mean step and rollout time, acceptance-entropy slopes; a plot."""
    summary = {}
    for mode, recs in runs.items():
        timed = recs[skip_steps:] or recs
        first = recs[: max(1, len(recs) // 5)]
        last = recs[-max(1, len(recs) // 5) :]
        row = {
            "steps": len(recs),
            "reward_first": statistics.fmean(r["reward"] for r in first),
            "reward_last": statistics.fmean(r["reward"] for r in last),
            "entropy_first": statistics.fmean(r["entropy"] for r in first),
            "entropy_last": statistics.fmean(r["entropy"] for r in last),
            "step_s": statistics.fmean(r["step_s"] for r in timed),
            "rollout_s": statistics.fmean(r["rollout_s"] for r in timed),
            "update_s": statistics.fmean(r["update_s"] for r in timed),
            "reload_disk_s": _mean([r["reload_s"] for r in timed if r["reload"] == "disk"]),
            "reload_push_s": _mean([r["reload_s"] for r in timed if r["reload"] == "push"]),
        }
        if recs[0]["acceptance"] is not None:
            row["acceptance"] = statistics.fmean(r["acceptance"] for r in recs)
            row["accept_length"] = statistics.fmean(r["accept_length"] for r in recs)
            a, b = fit([r["entropy"] for r in recs], [r["acceptance"] for r in recs])
            row["slope_per_step"], row["intercept_per_step"] = b, a
            points = [(e, acc) for r in recs for e, acc in r["samples"] if e is not None and acc is not None]
            a, b = fit([p[0] for p in points], [p[1] for p in points])
            row["slope_per_sample"], row["intercept_per_sample"] = b, a
        summary[mode] = row
    if "target_only" in runs:  # the goal: a rejection mode's slope at most half of target-only's
        for mode, recs in runs.items():
            if mode.startswith("rejection"):
                ratio = summary[mode]["slope_per_sample"] / summary["target_only"]["slope_per_sample"]
                summary[mode]["slope_ratio_vs_target_only"] = ratio
                summary[mode]["slope_ratio_ci95"] = slope_ratio_ci(recs, runs["target_only"])
    if "none" in summary:
        for row in summary.values():
            row["speedup_vs_none"] = summary["none"]["step_s"] / row["step_s"]
            row["rollout_speedup_vs_none"] = summary["none"]["rollout_s"] / row["rollout_s"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(runs, summary, out / "acceptance_vs_entropy.png", task)
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [
        "| mode | reward first -> last | entropy first -> last | step s | rollout s | step speed-up vs none "
        "| acceptance | accept length | slope per step | slope per sample | per-sample slope / target-only's "
        "[95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in summary.items():
        ratio = "-"
        if "slope_ratio_vs_target_only" in r:
            lo, hi = r["slope_ratio_ci95"]
            ratio = f"{r['slope_ratio_vs_target_only']:.2f} [{lo:.2f}, {hi:.2f}]"
        lines.append(
            f"| {mode} | {r['reward_first']:.3f} -> {r['reward_last']:.3f} "
            f"| {r['entropy_first']:.3f} -> {r['entropy_last']:.3f} | {r['step_s']:.2f} "
            f"| {r['rollout_s']:.2f} | {_fmt(r.get('speedup_vs_none'))} | {_fmt(r.get('acceptance'))} "
            f"| {_fmt(r.get('accept_length'))} "
            f"| {_fmt(r.get('slope_per_step'))} | {_fmt(r.get('slope_per_sample'))} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict]], summary: dict, path: Path, task: str = "arith") -> None:
    """Left: each step's mean acceptance against its mean entropy, with the per-step fit. Right:
    every rollout's pair, as means over entropy deciles, with the per-sample fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (per_step, per_sample) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, recs in runs.items():
        if recs[0]["acceptance"] is None:
            continue
        row = summary[mode]
        xs = [r["entropy"] for r in recs]
        ys = [r["acceptance"] for r in recs]
        dots = per_step.scatter(xs, ys, s=14, label=f"{mode} (slope {row['slope_per_step']:+.3f})")
        colour = dots.get_facecolor()[0]
        a, b = row["intercept_per_step"], row["slope_per_step"]
        per_step.plot([min(xs), max(xs)], [a + b * min(xs), a + b * max(xs)], color=colour, lw=1)
        points = sorted((e, a) for r in recs for e, a in r["samples"] if e is not None and a is not None)
        tenth = max(1, len(points) // 10)
        deciles = [points[i : i + tenth] for i in range(0, len(points), tenth)]
        bx = [statistics.fmean(p[0] for p in d) for d in deciles]
        by = [statistics.fmean(p[1] for p in d) for d in deciles]
        label = f"{mode} (slope {row['slope_per_sample']:+.3f})"
        per_sample.plot(bx, by, "o", color=colour, ms=4, label=label)
        a, b = row["intercept_per_sample"], row["slope_per_sample"]
        per_sample.plot([bx[0], bx[-1]], [a + b * bx[0], a + b * bx[-1]], color=colour, lw=1)
    per_step.set_xlabel("mean target entropy of the step's rollouts (nats)")
    per_step.set_title(f"GRPO on {task}: one point per RL step")
    per_sample.set_xlabel("a rollout's mean target entropy (nats), decile means")
    per_sample.set_title(f"GRPO on {task}: every rollout, by entropy decile")
    for ax in (per_step, per_sample):
        ax.set_ylabel("draft acceptance")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--modes", nargs="+", default=["rejection"], help="none, target_only, rejection[:<head loss>]"
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt (GRPO group)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--operands", type=int, nargs="+", default=[3], help="operand count, or min max")
    p.add_argument(
        "--task",
        choices=("arith", "story"),
        default="arith",
        help="arith: verifiable sums (low entropy); story: valid and novel stories (high, rising entropy)",
    )
    p.add_argument("--temperature", type=float, default=None, help="default 1.2 for arith, 1.0 for story")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=4, help="policy updates per batch of rollouts (GRPO's mu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--max-running", type=int, default=128, help="KV slots per engine (a step's samples)")
    p.add_argument(
        "--push-every", type=int, default=2, help="push by torch.distributed every k-th step (0: never)"
    )
    p.add_argument("--keep-checkpoints", type=int, default=0, help="1 keeps every step's checkpoint")
    p.add_argument("--skip-steps", type=int, default=1, help="steps left out of the timing means (warm-up)")
    p.add_argument("--model", default=None, help="starting checkpoint (default: the shipped demo model)")
    p.add_argument("--url", default=None, help="use a running gateway (its weights roots must hold --out)")
    p.add_argument("--out", default="runs/grpo_arith")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    runs = {}
    for mode in args.modes:
        runs[mode] = train(args, mode, out / mode.replace(":", "-"))
    if len(runs) > 1 or args.steps >= 3:
        summary = summarize(runs, out, args.skip_steps, args.task)
        print(summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
