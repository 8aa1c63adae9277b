"""``EngineConfig``: every setting of one engine process, validated once when it is built.

The config is frozen: nothing changes it after validation. What changes at run time (the serving
checkpoint's path, the weight version) lives on the engine and its weight updater instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..httpguard import MAX_BODY_BYTES

# The runner's speculation modes (runner.SPEC_MODES), repeated here so the config stays importable
# without torch; test_config checks the two agree.
SPEC_MODES = ("none", "target_only", "rejection")
DEVICES = ("cpu", "cuda")
MAX_WEIGHT_VERSION_CHARS = 128  # the protocol's bound on a weight version, start-up's too


MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: beyond it a timeout is a typo (and timedelta overflows at inf)


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    spec: str = "rejection"
    draft_steps: int = 3
    max_running: int = 16
    max_queue: int = 256
    max_len: int = 512  # context: prompt + max_new_tokens must fit
    weight_version: str = "default"
    api_token: str | None = None  # BEBOP_ENGINE_TOKEN: every route but /health needs it
    weights_roots: tuple[str, ...] = ()  # besides the model directory; a list is taken as a tuple
    device: str | None = None  # cpu or cuda; None: cuda when available
    max_prompts: int = 4096  # prompts in one /generate batch (the gateway's limit per rollout)
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get a 413
    # uvicorn's own defaults, named here so a deployment can see and change them in one place
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this long
    shutdown_grace_s: int = 5  # SIGTERM: requests get this long to finish, then the process exits anyway
    health_generate_timeout_s: float = 30.0  # /health_generate: one token within this long, or 503
    # torch.distributed timeout of the trainer's weight-update group: how long a join or a receive
    # waits for the other ranks (a failed push ends sooner: see weight_receiver.py)
    weight_group_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        # The only write: a frozen dataclass normalises its own field before anyone can read it.
        object.__setattr__(self, "weights_roots", tuple(self.weights_roots))
        self._validate()

    def _validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work. (The token is checked by
        ``server.check_listen`` together with the address it guards.)"""
        if not self.model_path or "\x00" in self.model_path:
            raise ValueError("model_path must be a non-empty path")
        if self.spec not in SPEC_MODES:
            raise ValueError(f"spec must be one of {SPEC_MODES}, got {self.spec!r}")
        if self.device is not None and self.device.partition(":")[0] not in DEVICES:
            raise ValueError(f"device must be cpu, cuda, cuda:<index> or None (auto), got {self.device!r}")
        for name in ("max_running", "max_len", "max_prompts", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("draft_steps", "max_queue"):  # 0 draft steps: plain decoding
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        timeouts = ("keep_alive_s", "shutdown_grace_s", "health_generate_timeout_s", "weight_group_timeout_s")
        for name in timeouts:
            value = getattr(self, name)
            if not 0 < value < MAX_TIMEOUT_S:  # NaN and infinity fail too
                raise ValueError(f"{name} must be positive and under {MAX_TIMEOUT_S:g} s, got {value}")
        if len(self.weight_version) > MAX_WEIGHT_VERSION_CHARS:
            raise ValueError(f"weight_version must be at most {MAX_WEIGHT_VERSION_CHARS} characters")
        if any(not root or "\x00" in root for root in self.weights_roots):
            raise ValueError("weights_roots must be non-empty paths")
