"""The request bodies of the resource APIs (criteria, datasets, feedback, logs, training jobs, imports and
distillations), as closed objects: an unknown field is a 400. The handlers check these rules themselves, field
by field, with messages that name the field; these models describe the same bodies for the OpenAPI document.
Pure pydantic; imports nothing from the project.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_CLOSED = ConfigDict(extra="forbid")


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str


class MetadataPatch(BaseModel):
    model_config = _CLOSED

    metadata: dict[str, str | None]  # null removes the key


class JudgeInput(BaseModel):
    messages: list[MessageIn] = Field(default_factory=list)


class JudgeRequest(BaseModel):
    model_config = _CLOSED

    criterion_id: str  # "slug" or "slug@vN"
    criterion_version: str | int | None = None  # "vN" or N, with an unversioned criterion_id
    input: JudgeInput | None = None
    output: MessageIn


class CriterionCreate(BaseModel):
    model_config = _CLOSED

    slug: str
    kind: str = Field(description="a kind defined by stored definitions: rule or llm_judge")
    spec: dict[str, Any] = Field(description="the kind's definition: see the README's Criteria section")
    description: str = ""


class VersionCreate(BaseModel):
    model_config = _CLOSED

    spec: dict[str, Any]
    description: str = ""


class LabelledRowIn(BaseModel):
    input: list[MessageIn] = Field(min_length=1)
    output: str | MessageIn
    label: Literal["PASS", "FAIL"]
    id: str | None = None


class AlignmentRequest(BaseModel):
    model_config = _CLOSED

    rows: list[LabelledRowIn] = Field(min_length=1)
    threshold: float = Field(default=0.5, ge=0, le=1)


class DatasetCreate(BaseModel):
    model_config = _CLOSED

    name: str
    description: str = ""


class EntriesUpload(BaseModel):
    model_config = _CLOSED

    entries: list[dict[str, Any]]  # seed-format pairs (DESIGN contract 1)


class PairsFromLogIds(BaseModel):
    model_config = _CLOSED

    log_ids: list[str] = Field(min_length=1)


class PairsFromLogFilter(BaseModel):
    model_config = _CLOSED

    metadata: dict[str, str]
    model: str | None = None
    since: str | None = None  # ISO 8601 with a timezone
    before: str | None = None


class ChoiceFeedback(BaseModel):
    model_config = _CLOSED

    log_id: str
    choice_index: int = Field(ge=0)  # 0 = the best
    dataset: str


class ThreadFeedback(BaseModel):
    model_config = _CLOSED

    thread: str
    accepted_log_id: str | None = None
    dataset: str


class Hyperparameters(BaseModel):
    model_config = _CLOSED

    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = "auto"
    learning_rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    epochs: Annotated[int, Field(ge=1, le=100)] | None = None


class JobCreate(BaseModel):
    model_config = _CLOSED

    dataset: str  # its id or name
    slug: str = Field(pattern="^[a-z0-9][a-z0-9._-]{0,127}$")
    base_model: str = ""
    hyperparameters: Hyperparameters | None = None


class RatingFeedback(BaseModel):
    """A user's rating of one choice: a rated response (reward = rating) for a pointwise reward model."""

    model_config = _CLOSED

    log_id: str
    choice_index: int = Field(ge=0)
    rating: float  # stars, a score, or 1 / 0 for thumbs up / down
    dataset: str


class ImportCreate(BaseModel):
    """Import a published reward model (a *ForSequenceClassification with one label) as the slug's next version."""

    model_config = _CLOSED

    source: str  # a local model directory, or a hub id where the worker has network
    slug: str = Field(pattern="^[a-z0-9][a-z0-9._-]{0,127}$")
    calibration_dataset: str | None = None  # pairs or rated responses: reward_stats (and accuracy on pairs)


class DistillCreate(BaseModel):
    """Distil a criterion (an LLM judge) from its stored scores: the rows become a dataset and a training job."""

    model_config = _CLOSED

    criterion: str  # slug (its newest version) or slug@vN
    slug: str = Field(pattern="^[a-z0-9][a-z0-9._-]{0,127}$")
    metadata: dict[str, str] | None = None  # log filter
    model: str | None = None  # log filter
    limit: int = Field(default=1000, ge=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    dataset: str | None = None  # default: <slug>-distill
    base_model: str = ""
    hyperparameters: Hyperparameters | None = None
