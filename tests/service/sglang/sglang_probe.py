"""Runs inside the SGLang 0.5.23 venv (started by conftest.py; not collected by pytest).

The plugin is loaded the way SGLang loads it (``sglang.srt.plugins.load_plugins`` over the
``sglang.srt.plugins`` entry points), the verify inputs are built with SGLang's own helpers as
``eagle_sample`` builds them for a topk-1 chain (sglang/srt/speculative/eagle_utils.py:631-756),
and the last stdout line is ``RESULT <json>`` for the tests to judge. Usage: ``python sglang_probe.py``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import multiprocessing
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SGLANG_PLUGINS", "bebop")

import torch

# Every module that binds SGLang's chain kernel by name (grep of sglang 0.5.23).
KERNEL_MODULES = [
    "sglang.kernels.ops.speculative.reject_sampling",
    "sglang.kernels.ops.speculative.verify_sampling",
    "sglang.srt.speculative.eagle_utils",
    "sglang.srt.speculative.uno_utils",
    "sglang.kernels.ops.speculative.dspark.dspark_accept",
]
KERNEL_NAME = "chain_speculative_sampling_triton"
STAT_ROWS = 20000  # rows of the statistical run (torch twin: seconds)


def reaches_bebop(fn: object) -> bool:
    """Whether ``fn`` is Bebop's function or SGLang's REPLACE wrapper around it."""
    from bebop.service.sglang.kernel import chain_speculative_sampling

    if fn is chain_speculative_sampling:
        return True
    try:
        return inspect.getclosurevars(fn).nonlocals.get("hook") is chain_speculative_sampling
    except TypeError:
        return False


def bindings(import_first: bool) -> dict[str, bool]:
    """Load the plugins as an SGLang process does; say which kernel bindings reach Bebop's function."""
    from sglang.srt.plugins import load_plugins

    if import_first:  # the modules hold stale copies: the registry must rebind them
        modules = [importlib.import_module(name) for name in KERNEL_MODULES]
        load_plugins()
    else:  # the modules are imported after the patch: they must pick up the patched name
        load_plugins()
        modules = [importlib.import_module(name) for name in KERNEL_MODULES]
    return {module.__name__: reaches_bebop(getattr(module, KERNEL_NAME)) for module in modules}


def _spawned(queue) -> None:
    queue.put(bindings(import_first=False))


def spawned_bindings() -> dict[str, bool]:
    """The same check in a spawned child, as SGLang starts its scheduler."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_spawned, args=(queue,))
    child.start()
    result = queue.get(timeout=300)
    child.join(60)
    return result


# ----------------------------------------------------------------------------- verify inputs
def verify_kwargs(
    target_logits: torch.Tensor, temperature: float, draft_probs: torch.Tensor, gen: torch.Generator
) -> dict[str, object]:
    """SGLang's keyword arguments for one chain verify, built as eagle_sample builds them.

    target_logits [bs * N, V] (the verify forward's next_token_logits), draft_probs [bs, N-1, V].
    """
    from sglang.kernels.ops.sampling import softmax as sampling_softmax
    from sglang.srt.speculative import eagle_utils

    bs, G, V = draft_probs.shape
    N = G + 1
    drafts = torch.multinomial(draft_probs.reshape(-1, V), 1, generator=gen).view(bs, G)
    candidates = torch.cat([torch.randint(0, V, (bs, 1), generator=gen), drafts], 1)  # root, drafts
    temperatures = torch.full((bs, 1), temperature)
    target_probs = sampling_softmax(
        target_logits, temperatures=torch.repeat_interleave(temperatures, N, dim=0)
    ).reshape(bs, N, V)
    next_token = torch.arange(1, N + 1).repeat(bs, 1)
    next_token[:, -1] = -1
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))  # _verify_coins uses torch.rand
    coins, final = eagle_utils._verify_coins(
        sampling_info=SimpleNamespace(sampling_seed=None),
        seq_lens=torch.full((bs,), 7),
        draft_token_num=N,
        candidates=candidates,
        device="cpu",
    )
    return {
        "predicts": torch.zeros(bs * N, dtype=torch.int32),
        "accept_index": torch.full((bs, N), -1, dtype=torch.int32),
        "accept_token_num": torch.full((bs,), -5, dtype=torch.int32),
        "candidates": candidates,
        "retrive_index": torch.arange(bs * N).view(bs, N),
        "retrive_next_token": next_token,
        "retrive_next_sibling": torch.full((bs, N), -1),
        "uniform_samples": coins,
        "uniform_samples_for_final_sampling": final,
        "target_probs": target_probs,
        "draft_probs": draft_probs,
        "threshold_single": 1.0,
        "threshold_acc": 1.0,
        "deterministic": True,
    }


OUTPUTS = ("predicts", "accept_index", "accept_token_num")


def run(fn, kwargs: dict, **extra) -> dict[str, torch.Tensor]:
    """Call ``fn`` on fresh copies of the in-place outputs; return the outputs."""
    call = dict(kwargs)
    for name in OUTPUTS:
        call[name] = kwargs[name].clone()
    fn(**call, **extra)
    return {name: call[name] for name in OUTPUTS}


def as_lists(outputs: dict[str, torch.Tensor]) -> dict[str, list]:
    return {name: t.tolist() for name, t in outputs.items()}


def verify_cases() -> dict[str, object]:
    """Patched (through eagle_utils' binding) against SGLang's original kernel on the same inputs."""
    from sglang.srt.speculative import eagle_utils

    from bebop.bench.sglang_peer import find_sglang_kernel, load_sglang_kernel
    from bebop.service.sglang.kernel import take_last_result

    patched = eagle_utils.chain_speculative_sampling_triton
    original = load_sglang_kernel(str(find_sglang_kernel())).chain_speculative_sampling_triton
    gen = torch.Generator().manual_seed(2026)
    cases: dict[str, object] = {}

    def compare(name, kwargs, **extra):
        ours, theirs = run(patched, kwargs, **extra), run(original, kwargs, **extra)
        cases[name] = {
            "ours": as_lists(ours),
            "sglang": as_lists(theirs),
            "retrive_index": kwargs["retrive_index"].tolist(),
            "candidates": kwargs["candidates"].tolist(),
            "target_probs": kwargs["target_probs"].tolist(),
        }
        return ours

    bs, N, V = 24, 4, 37  # V odd and not a multiple of any tile
    q = torch.softmax(torch.randn(bs, N - 1, V, generator=gen) * 1.5, -1)
    logits = torch.randn(bs * N, V, generator=gen) * 1.5
    kwargs = verify_kwargs(logits, 0.8, q, gen)
    compare("random", kwargs)
    last = take_last_result()
    cases["entropy_from_kernel"] = None if last is None else last.entropy.tolist()
    # The torch twin on the same inputs: the same outputs (TRITON_INTERPRET=0 selects it).
    os.environ["TRITON_INTERPRET"] = "0"
    cases["twin"] = as_lists(run(patched, kwargs))
    os.environ["TRITON_INTERPRET"] = "1"

    # p == q at every draft: every draft is accepted, the bonus token comes from p_N.
    same = verify_kwargs(logits, 1.0, q, gen)
    same["draft_probs"] = same["target_probs"][:, : N - 1].contiguous()
    drafts = torch.multinomial(same["draft_probs"].reshape(-1, V), 1, generator=gen).view(bs, N - 1)
    same["candidates"][:, 1:] = drafts
    compare("p_equals_q", same)

    # A one-hot target that the drafts miss: rejected at once, the token is the target's.
    one_hot = verify_kwargs(logits * 0 + torch.where(torch.arange(V) == 3, 60.0, 0.0), 1.0, q, gen)
    one_hot["candidates"][:, 1:] = torch.where(
        one_hot["candidates"][:, 1:] == 3, 4, one_hot["candidates"][:, 1:]
    )
    compare("one_hot_target", one_hot)

    # A draft with q(y) = 0 (not drawn from q): both kernels reject it.
    zero_q = verify_kwargs(logits, 1.0, q.clone(), gen)
    y0 = zero_q["candidates"][:, 1]
    zero_q["draft_probs"][torch.arange(bs), 0, y0] = 0.0
    compare("zero_q_draft", zero_q)

    # Block verification is delegated to SGLang's kernel.
    compare("block_verification", verify_kwargs(logits, 0.8, q, gen), block_verification=True)
    return cases


def statistics() -> dict[str, object]:
    """Many rows with one fixed law: the emitted tokens must follow the target (torch twin path)."""
    from sglang.srt.speculative import eagle_utils

    gen = torch.Generator().manual_seed(7)
    n, N, V = STAT_ROWS, 3, 6
    logits_one = torch.randn(N, V, generator=gen) * 1.2
    logits_one[0, 5] = -1e9  # a token of probability 0 at the first position
    q_one = torch.softmax(torch.randn(N - 1, V, generator=gen), -1)
    kwargs = verify_kwargs(logits_one.repeat(n, 1), 1.0, q_one.expand(n, N - 1, V).contiguous(), gen)
    os.environ["TRITON_INTERPRET"] = "0"
    out = run(eagle_utils.chain_speculative_sampling_triton, kwargs)
    os.environ["TRITON_INTERPRET"] = "1"
    first = out["predicts"].view(n, N)[:, 0]  # the first emitted token: a draft or the residual
    p = kwargs["target_probs"][0]
    return {
        "first_token_counts": torch.bincount(first.long(), minlength=V).tolist(),
        "p": p.tolist(),
        "q": q_one.tolist(),
        "accept_counts": torch.bincount(out["accept_token_num"].long(), minlength=N).tolist(),
    }


def statistics_plumbing() -> dict[str, object]:
    """The statistics path with SGLang's real classes: the verify hook records the kernel's figures,
    the scheduler's output streamer (as the hooked Scheduler chooses it) puts them in
    customized_info, and the hooked TokenizerManager turns them into meta_info fields."""
    from prometheus_client import REGISTRY, generate_latest
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.managers.scheduler_components.output_streamer import SchedulerOutputStreamer
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.speculative import eagle_utils, eagle_worker_common

    from bebop.service.sglang import stats

    def hooked(fn, hook) -> bool:
        try:
            return inspect.getclosurevars(fn).nonlocals.get("hook") is hook
        except TypeError:
            return False

    out: dict[str, object] = {
        "eagle_sample_hooked": [
            hooked(m.eagle_sample, stats.around_eagle_sample) for m in (eagle_utils, eagle_worker_common)
        ]
    }
    streamer_cls = Scheduler.get_output_streamer_class(SimpleNamespace(rust_server=None))
    out["streamer_is_sglangs_subclass"] = issubclass(streamer_cls, SchedulerOutputStreamer) and (
        streamer_cls is not SchedulerOutputStreamer
    )
    streamer = object.__new__(streamer_cls)  # its fields are not needed by the method under test
    reqs = [
        SimpleNamespace(
            rid=rid, sampling_params=SimpleNamespace(custom_params=params), finished=lambda: False
        )
        for rid, params in (("a", {"return_entropy": True}), ("b", None))
    ]
    gen = torch.Generator().manual_seed(11)
    manager = TokenizerManager.__new__(TokenizerManager)
    states = [
        SimpleNamespace(customized_info_accumulated={}, customized_info_reported_keys=set()) for _ in reqs
    ]
    steps = []
    for _ in range(3):  # three verify + output steps
        q = torch.softmax(torch.randn(2, 3, 11, generator=gen), -1)
        kwargs = verify_kwargs(torch.randn(2 * 4, 11, generator=gen), 1.0, q, gen)

        def fake_eagle_sample(verify_input, batch, kwargs=kwargs):
            return run(eagle_utils.chain_speculative_sampling_triton, kwargs)

        result = stats.around_eagle_sample(fake_eagle_sample, None, SimpleNamespace(reqs=reqs))
        fields = streamer.build_additional_customized_info(reqs)
        metas = []
        for i, state in enumerate(states):
            meta: dict = {}
            manager.update_request_meta_info(meta, state, fields, i, None)
            metas.append(copy.deepcopy(meta))  # SGLang's meta_info aliases its growing lists
        steps.append(
            {
                "accept_token_num": result["accept_token_num"].tolist(),
                "entropy": (
                    -torch.special.xlogy(kwargs["target_probs"], kwargs["target_probs"]).sum(-1)
                ).tolist(),
                "meta": metas,
            }
        )
    out["steps"] = steps
    out["metrics"] = [
        line for line in generate_latest(REGISTRY).decode().splitlines() if line.startswith("bebop_engine_")
    ]
    return out


def mtp_plumbing(workdir: str) -> dict[str, object]:
    """Dense Qwen3 MTP drafts with SGLang's real classes and functions, hooked by the plugin."""
    import json as _json
    from pathlib import Path

    from safetensors.torch import save_file
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import loader
    from sglang.srt.models.qwen3 import Qwen3ForCausalLM
    from sglang.srt.models.registry import ModelRegistry
    from torch import nn

    from bebop.service.sglang import qwen3_mtp

    out: dict[str, object] = {}
    # The draft rule: SGLang's own _config_draft_model runs first, then the plugin's.
    config = SimpleNamespace(architectures=["Qwen3ForCausalLM"], num_nextn_predict_layers=1)
    fake = SimpleNamespace(
        is_draft_model=True, speculative_algorithm="EAGLE", hf_config=config, hf_text_config=config
    )
    try:
        ModelConfig._config_draft_model(fake)
        out["draft_arch"] = config.architectures[0]
    except Exception as err:  # SGLang's body needs more of a real ModelConfig
        out["draft_arch_error"] = repr(err)
        qwen3_mtp.after_config_draft_model(None, fake)
        out["draft_arch"] = config.architectures[0]
    resolved, arch = ModelRegistry.resolve_model_cls([qwen3_mtp.DRAFT_ARCH])
    out["draft_class"] = [resolved.__name__, arch, issubclass(resolved, Qwen3ForCausalLM)]
    target_only = SimpleNamespace(
        is_draft_model=False,
        speculative_algorithm="EAGLE",
        hf_config=SimpleNamespace(architectures=["Qwen3ForCausalLM"], num_nextn_predict_layers=1),
    )
    qwen3_mtp.after_config_draft_model(None, target_only)
    out["target_arch"] = target_only.hf_config.architectures[0]

    # The target's load_weights (SGLang's own body) on a checkpoint that carries mtp.* names.
    model = Qwen3ForCausalLM.__new__(Qwen3ForCausalLM)
    nn.Module.__init__(model)
    model.config = SimpleNamespace(tie_word_embeddings=False)
    model.pp_group = SimpleNamespace(is_last_rank=True)
    model.model = nn.Module()
    model.model.norm = nn.Module()
    model.model.norm.weight = nn.Parameter(torch.zeros(4))
    norm = torch.arange(4.0)
    model.load_weights(
        [("model.norm.weight", norm), ("mtp.layers.0.self_attn.q_proj.weight", torch.ones(4, 4))]
    )
    out["target_norm_loaded"] = torch.equal(model.model.norm.weight.detach(), norm)

    # mtp.safetensors beside a sharded checkpoint survives the index filter.
    folder = Path(workdir) / "sharded"
    folder.mkdir(exist_ok=True)
    for shard in ("model-00001-of-00001.safetensors", "mtp.safetensors"):
        save_file({"x": torch.zeros(1)}, str(folder / shard))
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(_json.dumps(index))
    files = sorted(str(p) for p in folder.glob("*.safetensors"))
    kept = loader.filter_duplicate_safetensors_files(files, str(folder), "model.safetensors.index.json")
    out["kept_files"] = sorted(Path(f).name for f in kept)
    return out


def draft_on_cpu() -> dict[str, object]:
    """Bebop's dense-Qwen3 draft class built by SGLang's own layers in a world-size-1 gloo group
    (SGLang's runtime context, model-parallel and dp-attention state, as its scheduler sets them up),
    then fed the demo checkpoint through its ``load_weights``: where each ``mtp.*`` tensor landed,
    fused projections (qkv_proj, gate_up_proj) read back by slice. Runs last: it initialises
    SGLang's process-wide parallel state."""

    import sglang.srt.layers.rotary_embedding.base as rope_base
    from safetensors.torch import load_file
    from sglang.srt.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from sglang.srt.layers.dp_attention import initialize_dp_attention
    from sglang.srt.runtime_context import SpawnRanks, publish
    from sglang.srt.server_args import ServerArgs
    from transformers import AutoConfig

    from bebop.model.demo_path import demo_model_dir
    from bebop.service.ports import free_port
    from bebop.service.sglang.qwen3_mtp import register_draft_class

    model_dir = str(demo_model_dir())
    server_args = ServerArgs(model_path=model_dir, device="cpu")
    publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, dp_rank=None, gpu_id=0))
    port = free_port()
    init_distributed_environment(
        backend="gloo", world_size=1, rank=0, local_rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}"
    )
    initialize_model_parallel()
    initialize_dp_attention(server_args=server_args)
    # A CPU-only test workaround, not the plugin's: with no CUDA (and no CPU build of sgl_kernel),
    # SGLang's RotaryEmbedding falls back to vllm's kernel (layers/rotary_embedding/base.py); its
    # module flag _is_cpu keeps the torch-native rotary path.
    rope_base._is_cpu = True
    cls = register_draft_class()
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("cpu"):
        model = cls(config)
    state = load_file(f"{model_dir}/model.safetensors")
    model.load_weights(list(state.items()))
    params = {name: p.detach() for name, p in model.named_parameters()}
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    fused = {
        "q_proj": ("qkv_proj", 0, [q, kv, kv]),
        "k_proj": ("qkv_proj", 1, [q, kv, kv]),
        "v_proj": ("qkv_proj", 2, [q, kv, kv]),
        "gate_proj": ("gate_up_proj", 0, [config.intermediate_size] * 2),
        "up_proj": ("gate_up_proj", 1, [config.intermediate_size] * 2),
    }
    landed: dict[str, object] = {}
    for name, tensor in state.items():
        if not name.startswith("mtp."):
            continue
        rest = name.removeprefix("mtp.")
        target = "model." + rest if rest.startswith(("layers.", "norm.")) else rest
        part = next((k for k in fused if f".{k}." in target), None)
        if part is None:
            got = params.get(target)
        else:
            fused_name, index, sizes = fused[part]
            got = params[target.replace(part, fused_name)].split(sizes, dim=0)[index]
        landed[name] = got is not None and torch.equal(got, tensor.to(got.dtype))
    return {
        "class": cls.__name__,
        "layers": len(model.model.layers),
        "landed": landed,
        "embed_equal": torch.equal(params["model.embed_tokens.weight"], state["model.embed_tokens.weight"]),
    }


def sglang_parses(args: list[str]) -> dict[str, object]:
    """SGLang's own CLI parser on the flags ``bebop sglang-server`` checks: the names must be real."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    parsed = vars(parser.parse_args(args))
    return {k: v for k, v in parsed.items() if k.startswith("speculative_") or k == "model_path"}


def main() -> None:
    result = {
        "sglang_plugins_env": os.environ.get("SGLANG_PLUGINS"),
        "bindings": bindings(import_first=True),
    }
    result["spawned_bindings"] = spawned_bindings()
    result["verify"] = verify_cases()
    result["statistics"] = statistics()
    result["plumbing"] = statistics_plumbing()
    result["mtp"] = mtp_plumbing(os.getcwd())
    result["parsed_flags"] = sglang_parses(json.loads(os.environ["BEBOP_PROBE_FLAGS"]))
    try:  # last: it sets up SGLang's process-wide parallel state
        result["draft_on_cpu"] = draft_on_cpu()
    except Exception as err:  # reported to the test, which fails with it
        result["draft_on_cpu"] = {"error": f"{type(err).__name__}: {err}"}
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
