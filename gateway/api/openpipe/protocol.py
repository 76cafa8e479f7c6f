"""OpenPipe's wire shapes for the /api/v1 mount, as its Python SDK (openpipe 5.0.0, `openpipe/api_client/types/`)
sends and parses them: camelCase where OpenPipe uses it (`datasetId`, `trainingConfig`, `reqPayload`), snake_case
where it does not (`dataset_entry_count`, `entries_created`). Request bodies are strict and closed, so what the
handlers accept is exactly what the OpenAPI document (generated from these models) says. Pure pydantic: imports
nothing of the project.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

_IN = ConfigDict(extra="forbid", strict=True)
_OUT = ConfigDict(json_schema_serialization_defaults_required=True)
TagValue = StrictStr | StrictInt | StrictFloat | StrictBool | None  # numbers and booleans are stored as their text


# ---------------------------------------------------------------- request bodies


class ReportRequest(BaseModel):
    """POST /report: a call the SDK made to OpenAI directly (times in Unix milliseconds)."""

    model_config = _IN

    requested_at: StrictInt | StrictFloat | None = Field(default=None, alias="requestedAt")
    received_at: StrictInt | StrictFloat | None = Field(default=None, alias="receivedAt")
    req_payload: dict[str, Any] | None = Field(default=None, alias="reqPayload")
    resp_payload: Any = Field(default=None, alias="respPayload")
    status_code: StrictInt | StrictFloat | None = Field(default=None, alias="statusCode")
    error_message: StrictStr | None = Field(default=None, alias="errorMessage")
    tags: dict[str, TagValue] | None = None  # deprecated by OpenPipe for reqPayload.metadata; merged under it


class LogsFilter(BaseModel):
    model_config = _IN

    field: StrictStr = Field(description="model, completionId, metadata.KEY or tags.KEY")
    equals: StrictStr | StrictInt | StrictFloat | StrictBool


class UpdateMetadataRequest(BaseModel):
    """POST /logs/update-metadata: merge `metadata` (null removes a key) into every log all `filters` match."""

    model_config = _IN

    filters: list[LogsFilter]
    metadata: dict[str, TagValue]


class UpdateTagsRequest(BaseModel):
    """POST /logs/update-tags: the deprecated spelling of update-metadata."""

    model_config = _IN

    filters: list[LogsFilter]
    tags: dict[str, TagValue]


class DatasetCreateRequest(BaseModel):
    model_config = _IN

    name: StrictStr = Field(min_length=1, max_length=128)


class EntriesCreateRequest(BaseModel):
    model_config = _IN

    entries: list[dict[str, Any]] = Field(description="seed-format preference pairs: messages, rejected_message, "
                                          "split?, metadata?, tools?, tool_choice?")  # fmt: skip


class RewardHyperparameters(BaseModel):
    model_config = _IN

    batch_size: Literal["auto"] | Annotated[StrictInt, Field(ge=1, le=4096)] | None = None
    learning_rate_multiplier: Annotated[StrictInt | StrictFloat, Field(gt=0, le=1000)] | None = None
    num_epochs: Annotated[StrictInt, Field(ge=1, le=100)] | None = None


class RewardTrainingConfig(BaseModel):
    """The one trainingConfig rewardgate trains: a reward model (OpenPipe's provider `openpipeReward`)."""

    model_config = _IN

    provider: Literal["openpipeReward"]
    base_model: StrictStr = Field(alias="baseModel", description="an offline alias, a local directory or a hub id")
    hyperparameters: RewardHyperparameters | None = None


class ModelCreateRequest(BaseModel):
    model_config = _IN

    dataset_id: StrictStr = Field(alias="datasetId")
    slug: StrictStr
    training_config: RewardTrainingConfig = Field(alias="trainingConfig")
    pruning_rule_ids: list[StrictStr] | None = Field(default=None, alias="pruningRuleIds", max_length=0)
    default_temperature: StrictInt | StrictFloat | None = Field(default=None, alias="defaultTemperature")


# ---------------------------------------------------------------- answers


class ReportInfo(BaseModel):
    model_config = _OUT

    log_id: str


class ReportAnswer(BaseModel):
    model_config = _OUT

    status: Literal["ok"] = "ok"
    rewardgate: ReportInfo


class MatchedLogs(BaseModel):
    model_config = _OUT

    matched_logs: int = Field(serialization_alias="matchedLogs")


class JudgementUsage(BaseModel):
    model_config = _OUT

    total_tokens: int
    prompt_tokens: int
    completion_tokens: int


class OpenPipeJudgement(BaseModel):
    """POST /criteria/judge: `score` as criteria_results report it (a judge's 0..1, a reward model's raw reward)."""

    model_config = _OUT

    score: float
    explanation: str | None  # null for reward models, as OpenPipe's
    usage: JudgementUsage
    normalized: float | None  # rewardgate's 0..1 (the combination rule's)
    criterion: dict[str, str | None]  # {slug, version, kind}


class OpenPipeDataset(BaseModel):
    model_config = _OUT

    object: Literal["dataset"] = "dataset"
    id: str
    name: str
    created: str  # ISO 8601
    updated: str  # the creation time: rewardgate datasets keep no update time
    dataset_entry_count: int
    fine_tune_count: int  # training jobs trained on it


class OpenPipeDatasetList(BaseModel):
    model_config = _OUT

    object: Literal["list"] = "list"
    data: list[OpenPipeDataset]


class OpenPipeDeleted(BaseModel):
    model_config = _OUT

    id: str
    object: Literal["dataset", "model"]
    deleted: Literal[True] = True


class EntryCreationError(BaseModel):
    model_config = _OUT

    object: Literal["dataset.entries.creation.error"] = "dataset.entries.creation.error"
    entry_index: int
    message: str


class EntryCreationErrors(BaseModel):
    model_config = _OUT

    object: Literal["list"] = "list"
    data: list[EntryCreationError]


class EntriesCreated(BaseModel):
    model_config = _OUT

    object: Literal["dataset.entries.creation"] = "dataset.entries.creation"
    entries_created: int
    errors: EntryCreationErrors


Status = Literal["PENDING", "QUEUED", "PROVISIONING", "TRAINING", "DEPLOYED", "ERROR"]


class ModelTraining(BaseModel):
    model_config = _OUT

    base_model: str = Field(serialization_alias="baseModel")
    hyperparameters: dict[str, Any]  # batch_size, learning_rate_multiplier, num_epochs
    status: Status
    dataset_id: str = Field(serialization_alias="datasetId")  # "" for a model trained outside the API
    error_message: str | None = Field(serialization_alias="errorMessage")


class Pricing(BaseModel):
    model_config = _OUT

    chat_in: float = Field(default=0.0, serialization_alias="chatIn")
    chat_out: float = Field(default=0.0, serialization_alias="chatOut")


class ModelInfo(BaseModel):
    model_config = _OUT

    job_id: str | None  # the training job behind the status (GET /v1/reward-models/{id})
    version: str | None  # the newest deployed version: `slug` in op-criteria means it


class OpenPipeModel(BaseModel):
    """A reward model as OpenPipe lists a fine-tuned model: `id` is the slug op-criteria takes."""

    model_config = _OUT

    id: str
    name: str
    object: Literal["model"] = "model"
    description: str
    created: str
    updated: str
    openpipe: ModelTraining
    context_window: int = Field(serialization_alias="contextWindow")  # the reward model's max tokens (0: not deployed)
    max_completion_tokens: int = Field(default=0, serialization_alias="maxCompletionTokens")  # it only scores
    capabilities: list[str] = Field(default_factory=list)  # none of chat, tools, json: a reward model
    pricing: Pricing = Field(default_factory=Pricing)
    owned_by: str = "rewardgate"
    rewardgate: ModelInfo


class OpenPipeModelList(BaseModel):
    model_config = _OUT

    object: Literal["list"] = "list"
    data: list[OpenPipeModel]


class LoggedCall(BaseModel):
    """GET /local-testing-only-get-latest-logged-call: the newest log as OpenPipe's SDK tests read it."""

    model_config = _OUT

    created_at: str = Field(serialization_alias="createdAt")
    cache_hit: bool = Field(serialization_alias="cacheHit")
    status_code: int | None = Field(serialization_alias="statusCode")
    error_message: str | None = Field(serialization_alias="errorMessage")
    req_payload: dict[str, Any] = Field(serialization_alias="reqPayload")
    resp_payload: dict[str, Any] | None = Field(serialization_alias="respPayload")
    tags: dict[str, str]
    metadata: dict[str, str]


class OpenPipeErrorBody(BaseModel):
    """An /api/v1 error: OpenPipe's `message` and tRPC `code`, with OpenAI's envelope beside them (`invalid` only
    for an upload's bad entries)."""

    message: str
    code: str
    error: dict[str, Any]
    invalid: list[dict[str, Any]] | None = None
