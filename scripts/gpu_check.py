"""One GPU check of everything that only a GPU can show, in under 5 minutes on one card.

    bash scripts/gpu_check.sh [OUT_DIR]      # what a session with a GPU runs first

Runs with the GPU machine's own python3 (its torch and triton), importing Bebop from this checkout
through a temporary package tree (setup.py's PACKAGE_ROOTS mapping) since nothing is installed there.
Each part is timed and guarded on its own, so one failure still leaves the others' results:

  env         card, driver-visible memory, torch and triton versions
  kernels     compiled Triton kernels against their torch twins on the same CUDA tensors:
              chain_rejection_sample (rejection and target-only, odd and 151936 vocabularies) and
              sample_from_probs must give the same tokens; the fused TV losses the same values
  bench       ``bebop bench kernels`` on CUDA: ours against SGLang 0.5.23's kernel (when its
              reject_sampling.py is carried, .cache/sglang-0.5.23/) and the fused TV loss
  engine      the embedded engine on CUDA: greedy identical in every spec mode, eager against
              CUDA graphs and CPU against CUDA (token agreement), then ``bebop bench engine
              --device cuda`` (components, ceiling, efficiency) with and without CUDA graphs

Writes OUT_DIR/gpu_check.json and prints it. GPU_CHECK_PARTS=env,engine (say) runs only those parts.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_roots() -> dict[str, str]:
    """setup.py's PACKAGE_ROOTS (top-level folder -> bebop subpackage), read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "PACKAGE_ROOTS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError("setup.py has no PACKAGE_ROOTS")


def import_bebop_from_checkout() -> None:
    site = Path(tempfile.mkdtemp()) / "bebop"
    site.mkdir()
    (site / "__init__.py").write_text("")
    for folder, package in package_roots().items():
        (site / package.removeprefix("bebop.")).symlink_to(REPO / folder, target_is_directory=True)
    sys.path.insert(0, str(site.parent))


def part_env() -> dict:
    import torch
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }


def part_kernels() -> dict:
    import torch

    from bebop.bench.kernels import chain_problem
    from bebop.kernels import chain_rejection_sample, sample_from_probs, tv_loss
    from bebop.kernels.tv_loss import e2e_tv_loss, e2e_tv_loss_reference, tv_loss_reference

    dev = torch.device("cuda")
    rows = []
    for B, G, V in [
        (1, 3, 151936),
        (8, 3, 151936),
        (64, 3, 32000),
        (5, 2, 1000),
        (256, 3, 151936),
        (3, 4, 777),
    ]:
        problem = chain_problem(B, G, V, dev, seed=B + V)
        for mode in ("rejection", "target_only"):
            q = problem["draft_probs"] if mode == "rejection" else None
            args = (
                problem["target_probs"],
                q,
                problem["draft_tokens"],
                problem["seeds"],
                problem["positions"],
            )
            triton_out = chain_rejection_sample(*args, backend="triton")
            twin_out = chain_rejection_sample(*args, backend="torch")
            rows.append(
                {
                    "op": f"chain_rejection_sample[{mode}]",
                    "B": B,
                    "G": G,
                    "V": V,
                    "same_tokens": bool(torch.equal(triton_out.tokens, twin_out.tokens)),
                    "same_accepted": bool(torch.equal(triton_out.num_accepted, twin_out.num_accepted)),
                    "entropy_max_abs_diff": float((triton_out.entropy - twin_out.entropy).abs().max()),
                }
            )
        probs = problem["target_probs"][:, 0].contiguous()
        a = sample_from_probs(probs, problem["seeds"], problem["positions"], backend="triton")
        b = sample_from_probs(probs, problem["seeds"], problem["positions"], backend="torch")
        rows.append({"op": "sample_from_probs", "B": B, "V": V, "same_tokens": bool(torch.equal(a, b))})
    g = torch.Generator(device=dev).manual_seed(0)
    for N, V in [(64, 151936), (37, 1000)]:
        draft = (torch.randn(N, V, device=dev, generator=g) * 2).requires_grad_()
        target = torch.randn(N, V, device=dev, generator=g) * 2
        fused = tv_loss(draft, target, backend="triton")
        fused.sum().backward()
        grad_fused, draft.grad = draft.grad.clone(), None
        ref = tv_loss_reference(draft, target)
        ref.sum().backward()
        rows.append(
            {
                "op": "tv_loss",
                "N": N,
                "V": V,
                "loss_max_abs_diff": float((fused - ref).abs().max()),
                "grad_max_abs_diff": float((grad_fused - draft.grad).abs().max()),
            }
        )
    draft = (torch.randn(4, 3, 5000, device=dev, generator=g) * 2).requires_grad_()
    target = torch.randn(4, 3, 5000, device=dev, generator=g) * 2
    mask = torch.ones(4, 3, dtype=torch.bool, device=dev)
    diff = float(
        (
            e2e_tv_loss(draft, target, mask, backend="triton") - e2e_tv_loss_reference(draft, target, mask)
        ).abs()
    )
    rows.append({"op": "e2e_tv_loss", "loss_abs_diff": diff})
    ok = all(r.get("same_tokens", True) and r.get("same_accepted", True) for r in rows) and all(
        r.get("loss_max_abs_diff", 0) < 1e-4 and r.get("grad_max_abs_diff", 0) < 1e-5 for r in rows
    )
    return {"all_agree": ok, "rows": rows}


def part_bench_kernels() -> dict:
    from bebop.bench.kernels import run_kernel_bench

    kernel = REPO / ".cache" / "sglang-0.5.23" / "reject_sampling.py"
    return run_kernel_bench(
        [1, 8, 64, 256], 3, 151936, None, 20, str(kernel) if kernel.is_file() else None, "cuda"
    )


def part_engine() -> dict:
    import torch

    from bebop.bench.engine import run_engine_bench, workload
    from bebop.model import load_model
    from bebop.model.demo_path import demo_model_dir
    from bebop.service.engine.runner import ModelRunner
    from bebop.service.engine.sampling import SamplingParams

    model_dir = demo_model_dir()
    prompts = workload(model_dir)[:8]

    def decode(device, spec, temperature, graphs=None, n_tokens=48):
        model = load_model(model_dir)
        runner = ModelRunner(model, len(prompts), 256, spec, 3, device=device, cuda_graphs=graphs)
        params = SamplingParams(temperature=temperature)
        pairs = [runner.prefill(p, params, seed=i) for i, p in enumerate(prompts)]
        states, outs = [s for s, _ in pairs], [list(o.tokens) for _, o in pairs]
        while min(len(o) for o in outs) < n_tokens:
            for out, step in zip(outs, runner.step(states), strict=True):
                out += step.tokens
        return [o[:n_tokens] for o in outs]

    def agreement(a, b):
        same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
        return same / sum(len(r) for r in a)

    report: dict = {}
    greedy = {spec: decode("cuda", spec, 0.0, graphs=False) for spec in ("none", "target_only", "rejection")}
    report["greedy_same_in_every_spec_mode"] = greedy["none"] == greedy["target_only"] == greedy["rejection"]
    eager = decode("cuda", "rejection", 1.0, graphs=False)
    graphed = decode("cuda", "rejection", 1.0, graphs=True)
    report["cuda_graphs_vs_eager_token_agreement"] = agreement(eager, graphed)
    report["cpu_vs_cuda_token_agreement"] = agreement(decode("cpu", "rejection", 1.0), eager)
    torch.cuda.synchronize()
    started = time.time()
    report["bench_graphs"] = run_engine_bench(
        model_dir, (1, 16, 64), (1.0,), 96, 3, with_hf=True, device="cuda", prompts=16, rounds=1
    )
    report["bench_eager"] = run_engine_bench(
        model_dir,
        (1, 16),
        (1.0,),
        96,
        3,
        with_hf=False,
        device="cuda",
        cuda_graphs=False,
        prompts=16,
        rounds=1,
    )
    report["bench_seconds"] = round(time.time() - started, 1)
    return report


def main() -> int:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.pop("TRITON_INTERPRET", None)
    import_bebop_from_checkout()
    report: dict = {}
    chosen = os.environ.get("GPU_CHECK_PARTS", "env,kernels,bench_kernels,engine").split(",")
    parts = [("env", part_env), ("kernels", part_kernels), ("bench_kernels", part_bench_kernels)]
    for name, part in [*parts, ("engine", part_engine)]:
        if name not in chosen:
            continue
        started = time.time()
        try:
            report[name] = part()
        except Exception:
            report[name] = {"error": traceback.format_exc()}
        report[name + "_seconds"] = round(time.time() - started, 1)
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
        print(f"[gpu_check] {name}: {report[name + '_seconds']} s", flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
