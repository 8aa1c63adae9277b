"""The gateway's API schemas (pydantic): what trainers send and get back."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..text import has_lone_surrogate
from ..wire_dtypes import WireDtype

MAX_SAMPLES_PER_PROMPT = 1024
MAX_PROMPTS = 4096
MAX_NEW_TOKENS = 1 << 16
MAX_TOKEN_ID = (1 << 31) - 1  # no vocabulary is larger; the engine checks its own
MAX_TOP_K = (1 << 31) - 1  # SGLang's top_k is int32; a top_k beyond the vocabulary means "off"
MAX_STOP_TOKEN_IDS = 1024
MAX_TENSOR_DIMS = 8
MAX_TENSOR_DIM = 1 << 40


def _unicode(text: str) -> str:
    if has_lone_surrogate(text):
        raise ValueError("holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
    return text


Text = Annotated[str, AfterValidator(_unicode)]  # every free-text field: JSON allows lone surrogates
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]


class SamplingParamsIn(BaseModel):
    """SGLang's sampling parameters, checked here so bad values never reach an engine."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=MAX_TOP_K)
    max_new_tokens: int = Field(128, ge=1, le=MAX_NEW_TOKENS)
    stop_token_ids: list[TokenId] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _top_k_not_zero(self) -> SamplingParamsIn:
        if self.top_k == 0:
            raise ValueError("top_k must be -1 (off) or >= 1")
        return self


class PromptIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["input_ids"]}]},
    )
    text: Text | None = Field(None, min_length=1)
    input_ids: list[TokenId] | None = Field(None, min_length=1)
    n: int = Field(1, ge=1, le=MAX_SAMPLES_PER_PROMPT)
    session_id: Text | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _one_input(self) -> PromptIn:
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of text or input_ids")
        return self


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[PromptIn] = Field(min_length=1, max_length=MAX_PROMPTS)
    sampling_params: SamplingParamsIn = Field(default_factory=SamplingParamsIn)
    seed: int | None = Field(None, ge=0, lt=2**62, description="sample k of a prompt uses seed + k")
    return_logprobs: bool = False
    task: Text | None = Field(None, max_length=128, description="label for metrics (a configured set)")
    stream: bool = False


class SpecStats(BaseModel):
    accept_length: float | None = None
    accept_rate: float | None = None
    accept_per_position: list[float | None] = Field(default_factory=list)


class RolloutResult(BaseModel):
    prompt_index: int
    sample_index: int
    output_ids: list[int]
    output_logprobs: list[float | None] | None = None
    finish_reason: dict | None = None
    weight_version: str | None = None
    weight_version_spans: list[list] = Field(default_factory=list)
    spec: SpecStats = Field(default_factory=SpecStats)
    entropy_mean: float | None = None
    text: str | None = None


class RolloutResponse(BaseModel):
    results: list[RolloutResult]


class WeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_path: Text = Field(min_length=1, max_length=4096)
    version: Text = Field(min_length=1, max_length=128)
    pause_mode: Literal["abort", "retract", "in_place"] = "retract"
    continue_aborted: bool = False


class WeightGroupRequest(BaseModel):
    """The trainer's process group for the distributed push; the trainer is rank 0."""

    model_config = ConfigDict(extra="forbid")
    master_address: Text = Field(min_length=1, max_length=255)
    master_port: int = Field(ge=1, le=65535)
    world_size: int = Field(ge=2, le=65536, description="1 + the engines' ranks (GET /v1/weights/group)")
    group_name: Text = Field(default="bebop_weights", min_length=1, max_length=128)
    backend: Literal["gloo", "nccl"] = "gloo"


class WeightPushRequest(BaseModel):
    """What the trainer is about to broadcast, in order; the engines stage it, then all commit."""

    model_config = ConfigDict(extra="forbid")
    names: list[Annotated[Text, Field(max_length=1024)]] = Field(min_length=1, max_length=100_000)
    dtypes: list[WireDtype] = Field(max_length=100_000)
    shapes: list[
        Annotated[list[Annotated[int, Field(ge=0, le=MAX_TENSOR_DIM)]], Field(max_length=MAX_TENSOR_DIMS)]
    ] = Field(max_length=100_000)
    group_name: Text = Field(default="bebop_weights", min_length=1, max_length=128)
    version: Text = Field(min_length=1, max_length=128)
    pause_mode: Literal["abort", "retract", "in_place"] = "retract"
    continue_aborted: bool = False

    @model_validator(mode="after")
    def same_lengths(self) -> WeightPushRequest:
        if not (len(self.names) == len(self.dtypes) == len(self.shapes)):
            raise ValueError("names, dtypes and shapes must have the same length")
        return self


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["abort", "retract", "in_place"] = "retract"


class EngineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Text = Field(min_length=8, max_length=512)
