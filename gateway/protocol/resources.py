"""The stored things as the API returns them (logs, datasets, entries, training jobs), the answers built on them
(uploads, deletions, list envelopes), the error envelope and /health. The store's records (frozen dataclasses in
gateway.store) render through these models, `render(Model, record)`, and the OpenAPI document is generated from
them: each shape is written once. Pure pydantic; imports nothing from the project.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, computed_field

from .chat import BudgetUsage

Item = TypeVar("Item", bound=BaseModel)

# The store's records (gateway.store.records, frozen dataclasses) render through these models, and the OpenAPI
# document is generated from them: one definition of each shape.

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed-width UTC, as the store writes it: sorts as text


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIME_FORMAT)


Timestamp = Annotated[datetime, PlainSerializer(_utc_text, return_type=str)]
# Built from the store's dataclasses by attribute; every key is always written, so the document requires them all.
_RECORD = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)
_ANSWER = ConfigDict(json_schema_serialization_defaults_required=True)


class Latencies(BaseModel):
    model_config = _RECORD

    upstream_ms: float | None
    scoring_ms: float | None
    total_ms: float | None


class StoredCandidate(BaseModel):
    """One candidate of a log: its message or the provider's failure, its combined score, rank and results."""

    model_config = _RECORD

    index: int  # the provider's choice index
    message: dict[str, Any] | None  # None when the provider failed
    status: Literal["ok", "error"]
    finish_reason: str | None
    error: str | None
    score: float | None
    rank: int | None  # 0 = best
    criteria_results: dict[str, Any]


class Log(BaseModel):
    """A stored chat completion: the request as received, every candidate in rank order, latencies, metadata."""

    model_config = _RECORD

    id: str
    created_at: Timestamp
    model: str
    request: dict[str, Any]
    latencies: Latencies
    metadata: dict[str, str]
    criteria_versions: dict[str, str]  # {slug: version} of every criterion that scored
    candidates: list[StoredCandidate]
    completion_id: str | None  # the `id` of the completion the client got
    cache_hit: bool  # answered from the response cache (op-cache): no upstream call
    budget: BudgetUsage | None = None  # op-bon: what the strategy generated and saved (usage.rewardgate)


class SplitCounts(BaseModel):
    TRAIN: int
    TEST: int


class Dataset(BaseModel):
    model_config = _RECORD

    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    description: str
    created_at: Timestamp
    train: int = Field(exclude=True)
    test: int = Field(exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def entries(self) -> int:
        return self.train + self.test

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counts(self) -> SplitCounts:
        return SplitCounts(TRAIN=self.train, TEST=self.test)


class Entry(BaseModel):
    """One preference pair of a dataset, in the seed format with its split."""

    model_config = _RECORD

    id: str
    dataset_id: str
    created_at: Timestamp
    split: Literal["TRAIN", "TEST"]
    source: Literal["upload", "log", "feedback"]
    source_ref: str | None  # the log id of "log" and "feedback" entries
    pair: dict[str, Any]


class Job(BaseModel):
    """A reward-model training job (docs/LIFECYCLE.md); `model` is the slug@version it deployed."""

    model_config = _RECORD

    id: str
    object: Literal["reward_model.job"] = "reward_model.job"
    slug: str
    version: str | None
    dataset_id: str
    base_model: str
    hyperparameters: dict[str, Any]
    state: Literal["PENDING", "QUEUED", "TRAINING", "DEPLOYED", "ERROR"]
    error: str | None
    progress: dict[str, Any] | None  # {step, total, loss, accuracy}
    metrics: dict[str, Any] | None  # the TEST metrics of rewardgate.json
    reward_stats: dict[str, Any] | None
    created_at: Timestamp
    updated_at: Timestamp
    resumed: int  # times a gateway restart resumed it
    kind: Literal["train", "import"] = "train"  # import: a published reward model (base_model is its source)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model(self) -> str | None:
        return f"{self.slug}@{self.version}" if self.version else None


def render(model: type[BaseModel], record: object) -> dict[str, Any]:
    """A store record as the JSON object `model` describes."""
    return model.model_validate(record).model_dump(mode="json")


class EntryError(BaseModel):
    """One bad entry of an upload: its 0-based position among the entries, its 1-based line, and why."""

    model_config = _RECORD

    index: int
    line: int
    error: str


class Uploaded(BaseModel):
    model_config = _ANSWER

    added: int
    invalid: list[EntryError]  # reported, not added (with ?skip_invalid=true)
    dataset: Dataset


class AddedPairs(BaseModel):
    model_config = _ANSWER

    added: int
    skipped: list[dict[str, Any]]  # {"log_id" | "choice_index": ..., "reason": ...}
    dataset: Dataset


class Deleted(BaseModel):
    model_config = _ANSWER

    id: str
    deleted: Literal[True] = True


class BaseModelAlias(BaseModel):
    """An offline base-model alias of the trainer."""

    model_config = _RECORD

    id: str
    description: str
    default: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error envelope; an upload's bad entries come with it under `invalid`."""

    error: ErrorDetail
    invalid: list[EntryError] | None = None


class Health(BaseModel):
    model_config = _ANSWER

    status: Literal["ok"] = "ok"
    pid: int | None = None  # the process that answered: one of several with `rewardgate serve --workers N`


class ListOf(BaseModel, Generic[Item]):
    """A list answer; paged lists add `next_cursor` and `has_more` (Page)."""

    model_config = _ANSWER

    object: Literal["list"] = "list"
    data: list[Item]


class Page(ListOf[Item], Generic[Item]):
    next_cursor: str | None  # pass as ?cursor= for the next page; null on the last one
    has_more: bool
