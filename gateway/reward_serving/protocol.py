"""Wire models of the reward server (DESIGN contract 3): score request/response, model cards, health.

Pure pydantic at the edge; imports nothing from the project. Message contents are checked later with
`formats.parse_message`, which names the exact field of a bad message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Conversation = Annotated[list[dict[str, Any]], Field(min_length=1)]


class ScoreRequest(BaseModel):
    """`{"model": "slug[@vN]", "conversations": [[message, ...], ...]}`; each last message is scored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    conversations: list[Conversation] = Field(min_length=1)
    # Optional tool definitions rendered into every conversation, as the trainer renders `tools`.
    tools: list[dict[str, Any]] | None = None


class ScoreData(BaseModel):
    index: int
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int  # every token the model read for this request


class ScoreResponse(BaseModel):
    model: str
    version: str
    data: list[ScoreData]
    usage: ScoreUsage


class RewardStats(BaseModel):
    """Raw-score statistics on the TEST split, for normalising: (score - mean) / std."""

    model_config = ConfigDict(extra="allow")

    mean: float
    std: float
    count: int = 0


class ModelCard(BaseModel):
    """One servable version and its `rewardgate.json` summary."""

    id: str  # "slug@vN"
    object: Literal["model"] = "model"
    slug: str
    version: str
    latest: bool
    loaded: bool
    base_model: str | None = None
    created_at: str | None = None
    max_length: int | None = None
    reward_stats: RewardStats | None = None
    metrics: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadedModel(BaseModel):
    model: str
    version: str
    memory_bytes: int
    queue_size: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    models_dir: str
    available_models: int
    loaded: list[LoadedModel]
