"""The loss comparison where a one-layer MTP head is capacity-limited: ``chain``, ``hop``, ``pairsum``(10).

    python examples/capacity_heads.py --out runs/chain            # the full budgets below
    python examples/capacity_heads.py --out /tmp/chain --quick    # a smoke-sized run (seconds)

Builds a model the way ``make demo-model`` does (tokenizer, backbone, a CE warm-up of the head,
then each loss fine-tunes that head for the same number of iterations), but on one task (``--task``) and
with the CE and e2e-TV heads, then scores every head on the task's held-out prompts at T = 1 with
``bebop eval-mtp``'s analytic acceptance (``sum min(p, q)`` per draft position, G = 3). Writes
``results.json`` and prints a markdown table. The goal (issue 14): CE acceptance at most 0.85 (the
head is capacity-limited) and e2e TV at least 3 points above CE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bebop.training.demo import DemoRecipe, build_demo_model
from bebop.training.mtp_eval import evaluate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/chain")
    p.add_argument(
        "--task",
        choices=("chain", "hop", "pairsum", "pairsum10"),
        default="chain",
        help="the capacity-limited task",
    )
    p.add_argument(
        "--aux-task",
        nargs="*",
        default=[],
        help="tasks trained beside it but not scored (sumdrill: the sum pairsum10 needs, as its answer)",
    )
    p.add_argument("--backbone-iters", type=int, default=1500)
    p.add_argument("--head-iters", type=int, default=400, help="CE warm-up of the head")
    p.add_argument("--finetune-iters", type=int, default=400, help="per loss: the equal budget")
    p.add_argument("--losses", nargs="+", default=["ce", "e2e_tv"])
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke-sized budgets")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = DemoRecipe(
        seed=args.seed,
        tasks=[args.task, *args.aux_task],
        backbone_iters=args.backbone_iters,
        head_iters=args.head_iters,
        finetune_iters=args.finetune_iters,
        losses=tuple(args.losses),
    )
    prompts = args.prompts
    if args.quick:
        recipe.corpus_size, recipe.backbone_iters, recipe.head_iters, recipe.finetune_iters = 300, 30, 6, 4
        recipe.max_len, prompts = 48, 8
    out = Path(args.out).resolve()
    model = build_demo_model(out / "model", recipe, progress=not args.quick)
    report = evaluate(model, [args.task], gamma=3, temperature=1.0, prompts_per_task=prompts, seed=args.seed)
    report["recipe"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = {r["loss"]: r for r in report["rows"]}
    print("| loss | RS acceptance | per position | target-only | accept length | entropy |")
    print("|---|---|---|---|---|---|")
    for loss, r in rows.items():
        per = ", ".join(f"{x:.3f}" for x in r["per_position"])
        print(
            f"| {loss} | {r['rs_acceptance']:.3f} | {per} | {r['target_only_acceptance']:.3f} "
            f"| {r['accept_length']:.2f} | {r['entropy']:.3f} |"
        )
    if "ce" in rows and "e2e_tv" in rows:
        gap = 100 * (rows["e2e_tv"]["rs_acceptance"] - rows["ce"]["rs_acceptance"])
        limited = rows["ce"]["rs_acceptance"] <= 0.85
        print(f"e2e TV - CE: {gap:+.1f} points; CE capacity-limited (<= 0.85): {limited}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
