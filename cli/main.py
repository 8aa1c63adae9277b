"""The ``bebop`` command: one sub-command per job, each a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _bench_kernels(args: argparse.Namespace) -> int:
    from ..bench.kernels import format_report, run_kernel_bench

    report = run_kernel_bench(
        batches=args.batch,
        gamma=args.gamma,
        vocab=args.vocab,
        tv_rows=args.tv_rows,
        repeats=args.repeats,
        sglang_kernel=args.sglang_kernel,
        device=args.device,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _engine(args: argparse.Namespace) -> int:
    from ..model.demo_path import demo_model_dir
    from ..service.engine.server import EngineConfig, check_listen, serve_engine

    try:
        cfg = EngineConfig(
            model_path=args.model or str(demo_model_dir()),
            spec=args.spec,
            draft_steps=args.draft_steps,
            max_running=args.max_running,
            max_queue=args.max_queue,
            max_len=args.context_length,
            weight_version=args.weight_version,
            api_token=os.environ.get("BEBOP_ENGINE_TOKEN") or None,
            weights_roots=list(args.weights_root or []),
            device=None if args.device == "auto" else args.device,
            weight_group_timeout_s=args.weight_group_timeout,
        )
    except ValueError as err:
        logging.getLogger("bebop").error("%s", err)
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            logging.getLogger("bebop").error("--device cuda: no CUDA device is visible to this process")
            return 2
    try:
        check_listen(args.host, cfg.api_token)
    except ValueError as err:
        logging.getLogger("bebop").error("%s", err)
        return 2
    serve_engine(cfg, args.host, args.port)
    return 0


def _sglang_server(args: argparse.Namespace) -> int:
    from ..service.sglang.launcher import run_sglang_server

    return run_sglang_server(
        args.sglang_args, python=args.python, check=not args.no_check, dry_run=args.dry_run
    )


def _bench_gateway(args: argparse.Namespace) -> int:
    from ..bench.gateway import Workload, find_smg, run_gateway_bench
    from ..model.demo_path import demo_model_dir

    workloads = [Workload(args.concurrency, args.requests, args.max_new_tokens)]
    if args.short:  # many tiny requests: the gateway's own per-request cost, not the engines'
        workloads.append(Workload(args.short_concurrency, args.requests * 4, 1))
    smg = None if args.no_smg else find_smg(args.smg)
    report = run_gateway_bench(
        Path(args.model) if args.model else demo_model_dir(),
        args.engines,
        workloads,
        args.rounds,
        smg,
        args.max_running,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    keys = ["target", "concurrency", "max_new_tokens", "tokens_per_s", "requests_per_s", "p50_ms", "p99_ms"]
    print(" | ".join([*keys, "throughput_loss", "errors"]))
    for r in report["rows"]:
        cells = [r[k] for k in [*keys, "throughput_loss", "errors"]]
        print(" | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells))
    return 0


def _bench_engine(args: argparse.Namespace) -> int:
    from ..bench.engine import run_engine_bench
    from ..model.demo_path import demo_model_dir

    report = run_engine_bench(
        Path(args.model) if args.model else demo_model_dir(),
        tuple(args.batch),
        tuple(args.temperature),
        args.new_tokens,
        args.draft_steps,
        with_hf=not args.no_hf,
        device=None if args.device == "auto" else args.device,
        prompts=args.prompts,
        rounds=args.rounds,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("spec | batch | temperature | tokens_per_s | accept_length | acceptance")
    for r in report["rows"]:
        cells = [
            r["spec"],
            r["batch"],
            r["temperature"],
            r["tokens_per_s"],
            r["accept_length"],
            r["acceptance"],
        ]
        print(" | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells))
    print("device:", report["device"])
    for key, c in report["components"].items():
        times = ", ".join(f"{name} {c[name + '_ms']:.3f} ms" for name in ("decode", "verify", "mtp"))
        print(f"{key}: {times}")
    for name in ("speedup", "ceiling", "efficiency"):
        print(f"{name} (rejection / none, T = 1.0):", {k: round(v, 3) for k, v in report[name].items()})
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..model.demo_path import demo_model_dir
    from ..service.gateway.launcher import serve
    from ..service.gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings.from_env(
            host=args.host,
            port=args.port,
            engine_urls=list(args.engine_url or []),
            engine_dns=list(args.engine_dns or []),
            weights_roots=[Path(p) for p in args.weights_root or []],
            max_inflight=args.max_inflight,
            request_timeout_s=args.request_timeout,
            routing_policy=args.routing_policy,
        )
    except ValueError as err:
        logging.getLogger("bebop").error("%s", err)
        return 2
    model = args.model or str(demo_model_dir())
    serve(settings, args.engines, model, args.spec, ["--max-running", str(args.max_running)])
    return 0


def _train_mtp(args: argparse.Namespace) -> int:
    from ..training.mtp_train import TrainConfig, train_mtp

    cfg = TrainConfig(
        model=args.model,
        out=args.out or args.model,
        loss=args.loss,
        steps=args.steps,
        iters=args.iters,
        batch_size=args.batch_size,
        max_len=args.max_len,
        lr=args.lr,
        seed=args.seed,
        dtype=args.dtype,
        tasks=args.task,
        data=args.data,
        save_every=args.save_every,
        resume=args.resume,
        init_from=args.init_from,
    )
    print(train_mtp(cfg))
    return 0


def _eval_mtp(args: argparse.Namespace) -> int:
    from ..training.mtp_eval import evaluate

    report = evaluate(
        args.model,
        args.task,
        gamma=args.gamma,
        temperature=args.temperature,
        prompts_per_task=args.prompts,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"gamma {report['gamma']}, temperature {report['temperature']}")
    print("task | loss | rs_acceptance | target_only_acceptance | per_position | accept_length | entropy")
    for r in report["rows"]:
        per = " ".join(f"{a:.3f}" for a in r["per_position"])
        print(
            f"{r['task']} | {r['loss']} | {r['rs_acceptance']:.3f} | {r['target_only_acceptance']:.3f} | "
            f"{per} | {r['accept_length']:.2f} | {r['entropy']:.3f}"
        )
    return 0


def _mtp_results(args: argparse.Namespace) -> int:
    from ..model.demo_path import demo_model_dir
    from ..training.results import write_results

    print(
        write_results(
            Path(args.model) if args.model else demo_model_dir(), Path(args.out), args.prompts, args.seed
        )
    )
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from ..model.demo_path import demo_model_dir

    if args.build:
        from ..training.demo import DemoRecipe, build_demo_model

        recipe = DemoRecipe(seed=args.seed)
        if args.quick:  # a smoke-sized model for tests: same code path, minutes -> seconds
            recipe = DemoRecipe(
                seed=args.seed, corpus_size=400, backbone_iters=20, head_iters=4, finetune_iters=4, max_len=48
            )
        print(build_demo_model(Path(args.out) if args.out else demo_model_dir(), recipe))
        return 0
    path = demo_model_dir()
    if not (path / "config.json").is_file():
        logging.getLogger("bebop").error("the demo model is missing at %s: run `make demo-model`", path)
        return 1
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bebop", description="Bebop rollout service for RL training.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (with embedded engines by default)")
    serve.add_argument("--host", default="127.0.0.1", help="without BEBOP_*_TOKEN only loopback is allowed")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--engines", type=int, default=1, help="embedded engines to start as children")
    serve.add_argument("--engine-url", action="append", help="front an existing engine instead (repeatable)")
    serve.add_argument(
        "--engine-dns", action="append", help="host:port whose addresses are all engines (headless service)"
    )
    serve.add_argument(
        "--model", default=None, help="model for the embedded engines (default: the demo model)"
    )
    serve.add_argument("--spec", default="rejection", choices=["none", "target_only", "rejection"])
    serve.add_argument("--max-running", type=int, default=16, help="per embedded engine")
    serve.add_argument("--weights-root", action="append", help="directories /v1/weights may load from")
    serve.add_argument(
        "--max-inflight", type=int, default=4096, help="rollout samples in flight before 429 + Retry-After"
    )
    serve.add_argument("--request-timeout", type=float, default=600.0, help="seconds per engine call")
    serve.add_argument(
        "--routing-policy",
        default=None,
        help="which engine serves a request: sticky (default: a session keeps its engine, else least "
        "outstanding), least_outstanding or round_robin; also BEBOP_ROUTING_POLICY",
    )
    serve.set_defaults(func=_serve)

    engine = commands.add_parser("engine", help="run the embedded engine (SGLang-compatible HTTP server)")
    engine.add_argument("--model", default=None, help="model directory (default: the shipped demo model)")
    engine.add_argument(
        "--host", default="127.0.0.1", help="without BEBOP_ENGINE_TOKEN only loopback is allowed"
    )
    engine.add_argument("--port", type=int, default=30000)
    engine.add_argument("--spec", default="rejection", choices=["none", "target_only", "rejection"])
    engine.add_argument("--draft-steps", type=int, default=3, help="draft tokens per verify step (G)")
    engine.add_argument("--max-running", type=int, default=16, help="KV slots: requests decoded together")
    engine.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503")
    engine.add_argument("--context-length", type=int, default=512, help="prompt + max_new_tokens limit")
    engine.add_argument("--weight-version", default="default")
    engine.add_argument(
        "--weight-group-timeout",
        type=float,
        default=120.0,
        help="seconds a weight-update group join or receive waits for the other ranks",
    )
    engine.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available"
    )
    engine.add_argument(
        "--weights-root", action="append", help="directories checkpoints may load from (besides --model)"
    )
    engine.set_defaults(func=_engine)

    sglang = commands.add_parser(
        "sglang-server",
        help="SGLang's server with the Bebop plugin: bebop sglang-server -- <sglang args>",
        description="Checks the speculative flags (one line per problem, exit 2), then runs "
        "`python -m sglang.launch_server <sglang args>` with the plugin allowed.",
    )
    sglang.add_argument("--python", default=None, help="interpreter with sglang (default: this one)")
    sglang.add_argument("--no-check", action="store_true", help="skip the flag checks")
    sglang.add_argument("--dry-run", action="store_true", help="check, print the command, do not run it")
    sglang.add_argument("sglang_args", nargs=argparse.REMAINDER, help="SGLang's arguments, after --")
    sglang.set_defaults(func=_sglang_server)

    train = commands.add_parser("train-mtp", help="train the MTP draft head on a frozen backbone")
    train.add_argument("--model", required=True, help="model directory: ours or any Hugging Face causal LM")
    train.add_argument("--out", default=None, help="output directory (default: --model)")
    train.add_argument("--loss", default="e2e_tv", choices=["ce", "kl", "rkl", "tv", "e2e_tv"])
    train.add_argument("--steps", type=int, default=3, help="draft depth S the head is trained for")
    train.add_argument("--iters", type=int, default=300)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--max-len", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    train.add_argument("--task", nargs="+", default=["arith", "story"], help="demo tasks to train on")
    train.add_argument("--data", default=None, help="text file (one example a line) or .jsonl with 'text'")
    train.add_argument("--save-every", type=int, default=100, help="checkpoint interval (iterations)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--init-from", default=None, help="model directory whose mtp.* weights start the head")
    train.set_defaults(func=_train_mtp)

    evaluate = commands.add_parser("eval-mtp", help="acceptance of the MTP heads on held-out prompts")
    evaluate.add_argument("--model", default=None, help="model directory (default: the demo model)")
    evaluate.add_argument("--task", nargs="+", default=["arith", "story"])
    evaluate.add_argument("--gamma", type=int, default=3)
    evaluate.add_argument("--temperature", type=float, default=1.0)
    evaluate.add_argument("--prompts", type=int, default=64, help="held-out prompts per task")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_eval_mtp)

    results = commands.add_parser(
        "mtp-results", help="write docs/results.md: loss comparison and temperature sweep"
    )
    results.add_argument(
        "--model", default=None, help="model directory with heads/ (default: the demo model)"
    )
    results.add_argument("--out", default="docs", help="directory for results.md, results.json and img/")
    results.add_argument("--prompts", type=int, default=64, help="held-out prompts per task")
    results.add_argument("--seed", type=int, default=0)
    results.set_defaults(func=_mtp_results)

    demo = commands.add_parser("demo-model", help="the shipped demo model")
    demo.add_argument("--path", action="store_true", help="print its directory (the default action)")
    demo.add_argument("--build", action="store_true", help="train it from fixed seeds (make demo-model)")
    demo.add_argument("--out", default=None, help="with --build: where to write it")
    demo.add_argument("--quick", action="store_true", help="with --build: a tiny smoke-test model")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo_model)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    kernels = bench_kinds.add_parser("kernels", help="chain rejection sampling and the fused TV loss")
    kernels.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256], help="batch sizes B")
    kernels.add_argument("--gamma", type=int, default=3, help="drafts per row G")
    kernels.add_argument("--vocab", type=int, default=151936, help="vocabulary size V")
    kernels.add_argument(
        "--tv-rows", type=int, default=None, help="rows N for the TV loss (default 8192 on GPU, 256 on CPU)"
    )
    kernels.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    kernels.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    kernels.add_argument(
        "--sglang-kernel",
        default=None,
        help="path to SGLang 0.5.23's reject_sampling.py for the peer timing (GPU only); "
        "default: the installed sglang, else $BEBOP_SGLANG_KERNEL",
    )
    kernels.add_argument("--json", action="store_true", help="print the report as JSON")
    kernels.set_defaults(func=_bench_kernels)
    engine_bench = bench_kinds.add_parser(
        "engine", help="tokens/s by speculation mode, and transformers generate"
    )
    engine_bench.add_argument("--model", default=None, help="model directory (default: the demo model)")
    engine_bench.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    engine_bench.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.6])
    engine_bench.add_argument("--new-tokens", type=int, default=96)
    engine_bench.add_argument("--draft-steps", type=int, default=3)
    engine_bench.add_argument("--prompts", type=int, default=64, help="held-out prompts per run (refilled)")
    engine_bench.add_argument("--rounds", type=int, default=3, help="rounds, the modes interleaved")
    engine_bench.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    engine_bench.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    engine_bench.add_argument("--json", action="store_true")
    engine_bench.set_defaults(func=_bench_engine)
    gw_bench = bench_kinds.add_parser(
        "gateway", help="throughput/latency through bebop serve and smg against the engines directly"
    )
    gw_bench.add_argument("--model", default=None, help="model directory (default: the demo model)")
    gw_bench.add_argument("--engines", type=int, default=2)
    gw_bench.add_argument("--max-running", type=int, default=32, help="per engine")
    gw_bench.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    gw_bench.add_argument("--requests", type=int, default=256, help="requests per target per round")
    gw_bench.add_argument("--max-new-tokens", type=int, default=32)
    gw_bench.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median reported)")
    gw_bench.add_argument("--short", action="store_true", help="also 1-token requests at --short-concurrency")
    gw_bench.add_argument("--short-concurrency", type=int, default=256)
    gw_bench.add_argument("--smg", default=None, help="smg binary (default: PATH, then .cache/smg-venv)")
    gw_bench.add_argument("--no-smg", action="store_true", help="skip the SGLang model gateway peer")
    gw_bench.add_argument("--json", action="store_true")
    gw_bench.set_defaults(func=_bench_gateway)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call is noise
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "eval-mtp" and args.model is None:
        from ..model.demo_path import demo_model_dir

        args.model = str(demo_model_dir())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
