"""``Engine``: everything one engine process serves with, built once from its ``EngineConfig``."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from ...model import Qwen3Model, load_model
from .config import EngineConfig
from .metrics import EngineMetrics
from .protocol import GenerateInput, generate_response, parse_generate
from .runner import ModelRunner, default_device
from .sampling import SamplingParams
from .scheduler import Request, Scheduler
from .stops import StopStrings
from .weight_receiver import WeightReceiver
from .weight_update import WeightUpdater

SEED_BITS = 63  # a request without sampling_seed draws one in [0, 2**63): the counter RNG's int64 key


class Engine:
    """The model, its runner and scheduler, the tokenizer, the weight updater and the metrics."""

    def __init__(self, cfg: EngineConfig):
        from tokenizers import Tokenizer

        self.cfg = cfg
        self.model: Qwen3Model = load_model(str(Path(cfg.model_path).resolve()))
        tok_file = Path(cfg.model_path).resolve() / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(tok_file)) if tok_file.is_file() else None
        device = torch.device(cfg.device) if cfg.device else default_device()
        self.runner = ModelRunner(
            self.model, cfg.max_running, cfg.max_len, cfg.spec, cfg.draft_steps, device=device
        )
        self.scheduler = Scheduler(
            self.runner, self.model.config.eos_token_id, cfg.max_queue, cfg.weight_version
        )
        self.metrics = EngineMetrics()
        self.scheduler.on_tokens = self.metrics.observe_tokens
        self.weights = WeightUpdater(
            self.model,
            self.scheduler,
            self.metrics,
            cfg.model_path,
            cfg.weights_roots,
            WeightReceiver(cfg.weight_group_timeout_s),
        )

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def model_path(self) -> str:
        """The checkpoint now serving (it changes with each update from disk)."""
        return self.weights.model_path

    def parse_generate(self, body: dict) -> GenerateInput:
        """The whole ``/generate`` body against this model and config; raises BadRequest."""
        return parse_generate(
            body,
            vocab_size=self.vocab_size,
            max_len=self.cfg.max_len,
            max_prompts=self.cfg.max_prompts,
            tokenizer=self.tokenizer,
        )

    def new_request(
        self,
        prompt: list[int],
        rid: str | None,
        params: SamplingParams,
        on_event: Callable[[Request, bool], None],
    ) -> Request:
        """A scheduler request for a prompt ``parse_generate`` accepted (nothing here refuses it)."""
        seed = params.sampling_seed if params.sampling_seed is not None else random.getrandbits(SEED_BITS)
        stop_check = None
        if params.stop:
            tokenizer = self.tokenizer
            assert tokenizer is not None  # parse_generate refuses stop strings without a tokenizer
            stop_check = StopStrings(
                params.stop, lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
            )
        return Request(
            rid=rid or uuid.uuid4().hex,
            prompt=prompt,
            params=params,
            seed=seed,
            on_event=on_event,
            stop_check=stop_check,
        )

    def response(self, req: Request, return_logprob: bool, return_entropy: bool) -> dict:
        return generate_response(
            req,
            tokenizer=self.tokenizer,
            speculative=bool(self.runner.G),
            weight_version=self.scheduler.weight_version,
            return_logprob=return_logprob,
            return_entropy=return_entropy,
        )
