"""``docs/results.md``: the loss comparison and the temperature sweep on the demo model, with plots.

Reproduces, on our own small model, the two results of the paper that matter for Bebop:
1. the ordering of draft-head losses under rejection sampling (e2e TV > TV > reverse KL > KL = CE);
2. acceptance against target entropy over a temperature sweep: target-only verify falls with
   entropy, rejection sampling with an e2e-TV head much less.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .mtp_eval import evaluate

SWEEP_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4)
TASKS = ("arith", "story")
LOSS_ORDER = ("ce", "kl", "rkl", "tv", "e2e_tv")
# The three curves of the sweep: (label, head, field of the row).
SWEEP_METHODS = (
    ("target-only (CE head)", "ce", "target_only_acceptance"),
    ("RS + CE head", "ce", "rs_acceptance"),
    ("RS + e2e-TV head", "e2e_tv", "rs_acceptance"),
)


def fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns (a, b)."""
    slope, intercept = np.polyfit(np.asarray(x), np.asarray(y), 1)
    return float(intercept), float(slope)


def sweep(model: Path, prompts: int, seed: int) -> list[dict]:
    """Rows of ``evaluate`` at every sweep temperature, tagged with the temperature."""
    rows = []
    for t in SWEEP_TEMPERATURES:
        report = evaluate(model, list(TASKS), gamma=3, temperature=t, prompts_per_task=prompts, seed=seed)
        rows += [{**r, "temperature": t} for r in report["rows"]]
    return rows


def slopes(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Fitted acceptance-vs-entropy line per method, pooled over tasks and temperatures."""
    out = {}
    for label, head, field in SWEEP_METHODS:
        pts = [(r["entropy"], r[field]) for r in rows if r["loss"] == head]
        a, b = fit_line([e for e, _ in pts], [v for _, v in pts])
        out[label] = {"intercept": a, "slope": b}
    return out


def plot_sweep(rows: list[dict], fits: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = {"arith": "o", "story": "s"}
    for (label, head, field), color in zip(SWEEP_METHODS, ("tab:red", "tab:blue", "tab:green"), strict=True):
        for task in TASKS:
            pts = [(r["entropy"], r[field]) for r in rows if r["loss"] == head and r["task"] == task]
            ax.scatter(*zip(*pts, strict=True), color=color, marker=markers[task], s=22)
        xs = np.linspace(min(r["entropy"] for r in rows), max(r["entropy"] for r in rows), 20)
        fit = fits[label]
        ax.plot(
            xs, fit["intercept"] + fit["slope"] * xs, color=color, label=f"{label}: slope {fit['slope']:.3f}"
        )
    ax.set_xlabel("target entropy (nats per token)")
    ax.set_ylabel("acceptance per draft position")
    ax.set_title("Acceptance vs entropy, temperatures 0.2-1.4 (o arith, s story)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / len(TASKS)
    for k, task in enumerate(TASKS):
        vals = [
            next(r["rs_acceptance"] for r in rows if r["task"] == task and r["loss"] == lo)
            for lo in LOSS_ORDER
        ]
        ax.bar(np.arange(len(LOSS_ORDER)) + k * width, vals, width, label=task)
    ax.set_xticks(np.arange(len(LOSS_ORDER)) + width / 2, LOSS_ORDER)
    ax.set_ylabel("RS acceptance (T = 1.0, G = 3)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(model: Path, out_dir: Path, prompts: int = 64, seed: int = 0) -> Path:
    """Run the evaluation and the sweep, write ``results.md``, the plots and the raw JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    img = out_dir / "img"
    img.mkdir(exist_ok=True)
    main = evaluate(model, list(TASKS), gamma=3, temperature=1.0, prompts_per_task=prompts, seed=seed)
    sweep_rows = sweep(model, prompts, seed)
    fits = slopes(sweep_rows)
    plot_losses(main["rows"], img / "loss_comparison.png")
    plot_sweep(sweep_rows, fits, img / "acceptance_vs_entropy.png")
    (out_dir / "results.json").write_text(
        json.dumps({"main": main, "sweep": sweep_rows, "fits": fits}, indent=1)
    )

    lines = [
        "# Results on the demo model",
        "",
        "Produced by `bebop mtp-results` (defaults: the shipped demo model, 64 held-out prompts per",
        "task, seed 0) on the 2-core CPU machine; raw figures in `docs/results.json`. Acceptance is",
        "rejection sampling's `sum min(p, q)` per draft position (G = 3), averaged over positions, on",
        "completions the backbone sampled at the same temperature; target-only is `p(argmax q)`.",
        "",
        "## Loss comparison (T = 1.0, G = 3)",
        "",
        "| task | " + " | ".join(LOSS_ORDER) + " | e2e TV - CE | target-only (CE head) |",
        "|---|" + "---|" * (len(LOSS_ORDER) + 2),
    ]
    for task in TASKS:
        by_loss = {r["loss"]: r for r in main["rows"] if r["task"] == task}
        cells = [f"{by_loss[lo]['rs_acceptance']:.3f}" for lo in LOSS_ORDER]
        gain = 100 * (by_loss["e2e_tv"]["rs_acceptance"] - by_loss["ce"]["rs_acceptance"])
        lines.append(
            f"| {task} | "
            + " | ".join(cells)
            + f" | {gain:+.1f} pts | {by_loss['ce']['target_only_acceptance']:.3f} |"
        )
    lines += [
        "",
        "Per-position RS acceptance (positions 1, 2, 3) and mean accept length through the kernel:",
        "",
        "| task | loss | per position | empirical per position | accept length | entropy |",
        "|---|---|---|---|---|---|",
    ]
    for r in main["rows"]:
        per = ", ".join(f"{a:.3f}" for a in r["per_position"])
        emp = ", ".join(f"{a:.3f}" for a in r["per_position_empirical"])
        lines.append(
            f"| {r['task']} | {r['loss']} | {per} | {emp} | {r['accept_length']:.2f} | {r['entropy']:.2f} |"
        )
    lines += [
        "",
        "![loss comparison](img/loss_comparison.png)",
        "",
        "## Temperature sweep (0.2 to 1.4)",
        "",
        "Fitted `acceptance = a + b * entropy`, pooled over both tasks and all temperatures:",
        "",
        "| method | slope b | intercept a |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {f['slope']:.4f} | {f['intercept']:.3f} |" for label, f in fits.items()]
    ratio = fits["RS + e2e-TV head"]["slope"] / fits["target-only (CE head)"]["slope"]
    lines += [
        "",
        f"RS + e2e-TV slope / target-only slope = {ratio:.2f}.",
        "",
        "![acceptance vs entropy](img/acceptance_vs_entropy.png)",
        "",
        "| T | task | entropy | target-only | RS + CE | RS + e2e TV |",
        "|---|---|---|---|---|---|",
    ]
    for t in SWEEP_TEMPERATURES:
        for task in TASKS:
            ce = next(
                r for r in sweep_rows if r["temperature"] == t and r["task"] == task and r["loss"] == "ce"
            )
            tv = next(
                r for r in sweep_rows if r["temperature"] == t and r["task"] == task and r["loss"] == "e2e_tv"
            )
            lines.append(
                f"| {t} | {task} | {ce['entropy']:.2f} | {ce['target_only_acceptance']:.3f} | "
                f"{ce['rs_acceptance']:.3f} | {tv['rs_acceptance']:.3f} |"
            )
    path = out_dir / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path
