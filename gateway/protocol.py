"""The gateway's wire models: OpenAI chat completions as the gateway reads and returns them (DESIGN contract 4,
with `criteria_results`), criterion definitions, and the stored things (logs, datasets, entries, training jobs)
as the API returns them. The store's records render through these models and the OpenAPI document is generated
from them, so each shape is written once.

Pure pydantic at the edge; imports nothing from the project. The request keeps every field it does not know
(`extra="allow"`), so vendor extensions reach the upstream untouched. `store` and `metadata` are the gateway's:
OpenAI accepts both itself, but our log store is ours, so they are removed before the body goes upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    field_serializer,
    model_validator,
)

GATEWAY_FIELDS = frozenset({"store", "metadata"})  # read by the gateway, never forwarded
Item = TypeVar("Item", bound=BaseModel)


def _content_part(part: object, where: str) -> None:
    """One part of a message's content list: an object with a string `type`; the known types need their field.
    Other types pass (providers add some)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ValueError(f"{where}: a content part is an object with a string 'type'")
    needed = {"text": ("text", str), "refusal": ("refusal", str), "image_url": ("image_url", dict)}
    needed |= {"input_audio": ("input_audio", dict), "file": ("file", dict)}
    if part["type"] in needed:
        key, kind = needed[part["type"]]
        if not isinstance(part.get(key), kind):
            shape = "a string" if kind is str else "an object"
            raise ValueError(f"{where}: a {part['type']!r} part needs {key!r} ({shape})")
        if key == "image_url" and not isinstance(part["image_url"].get("url"), str):
            raise ValueError(f"{where}: an 'image_url' part needs image_url.url (a string)")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    type: str = "function"
    function: dict[str, Any]


class ChatMessage(BaseModel):
    """One message as OpenAI takes it: a known role; content a string, a list of content parts, or null (an
    assistant's tool calls); a tool message names the call it answers. Other fields pass through."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None  # checked below, with messages that name the part at fault
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_where_needed(self) -> ChatMessage:
        extra = self.model_extra or {}
        if isinstance(self.content, list):
            for i, part in enumerate(self.content):
                _content_part(part, f"content[{i}]")
        elif self.content is None:
            speaks = self.tool_calls or extra.get("function_call") or extra.get("refusal") or extra.get("audio")
            if not (self.role == "assistant" and speaks):
                article = "an" if self.role[0] in "aeiou" else "a"
                raise ValueError(f"content: {article} {self.role} message needs content (a string or a list of parts)")
        elif not isinstance(self.content, str):
            raise ValueError("content: must be a string, a list of content parts, or null")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("tool_call_id: a tool message needs the id of the call it answers")
        return self


Unit = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Positive = Annotated[int, Field(ge=1)]


class ChatCompletionRequest(BaseModel):
    """The body of POST /v1/chat/completions, checked against OpenAI's own rules before any upstream call (a 400
    naming the field). Fields OpenAI does not define pass through as received: providers have their own."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    n: Annotated[int, Field(ge=1, le=128)] | None = None  # OpenAI's range; with op-criteria, max_n caps it
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None  # OpenAI's string map, checked by gateway.store.validate_metadata
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


def upstream_body(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The body to forward: the client's JSON as received, minus the gateway-only fields."""
    return {key: value for key, value in raw.items() if key not in GATEWAY_FIELDS}


class ChoiceInfo(BaseModel):
    """`choice.rewardgate`: where a ranked choice came from and how it scored."""

    candidate_index: int  # the provider's order; `choice.index` is the rank (0 = best)
    score: float | None = None  # combined 0..1 score; null when no criterion scored it
    criteria_errors: int = 0  # criteria that errored on this candidate
    model: str | None = None  # the model that produced it (the requested one or a fallback)


class ChoiceError(BaseModel):
    message: str
    type: str = "upstream_error"
    code: str
    status: int


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")  # logprobs and vendor fields of the upstream's choice

    index: int
    message: dict[str, Any]
    finish_reason: str | None = None
    criteria_results: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rewardgate: ChoiceInfo
    error: ChoiceError | None = None  # set on a candidate the provider failed to produce (finish_reason "error")


class CriteriaUsage(BaseModel):
    criteria: int  # criteria in the header
    scored_candidates: int
    criterion_calls: int  # criteria x scored candidates
    prompt_tokens: int = 0  # what LLM judges spent judging (reward models and rules spend none)
    completion_tokens: int = 0


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    criteria: CriteriaUsage | None = None


class CompletionInfo(BaseModel):
    """`completion.rewardgate`: the stored log and the criteria versions that scored the choices."""

    log_id: str | None = None
    criteria: dict[str, str | None] = Field(default_factory=dict)  # {slug: version}
    metadata: dict[str, str] | None = None  # as stored
    n: int | None = None
    best_only: bool = False
    cache_hit: bool = False  # answered from the response cache (op-cache): no upstream call, no scoring


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    rewardgate: CompletionInfo


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    rewardgate: dict[str, Any] | None = None  # reward models: kind, slug, version, latest


class ModelListing(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class CriterionDefinition(BaseModel):
    """One immutable version of an LLM-judge or rule criterion: the store's record, the resolvers' input and the
    wire shape of GET /v1/criteria/{id} at once. `version` is a number here and "vN" on the wire; `spec` belongs
    to the kind (each kind validates it); `alignment` is this version's latest alignment report."""

    model_config = ConfigDict(frozen=True)

    slug: str
    version: int
    kind: str
    spec: dict[str, Any]
    description: str = ""
    created_at: str = ""  # ISO 8601, UTC
    alignment: dict[str, Any] | None = None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented spelling
    @property
    def id(self) -> str:
        return f"{self.slug}@v{self.version}"

    @property
    def version_name(self) -> str:
        return f"v{self.version}"

    @field_serializer("version")
    def _version_on_the_wire(self, version: int) -> str:
        return f"v{version}"


# ---------------------------------------------------------------- stored things, as the API returns them
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


class CriterionInfo(BaseModel):
    """Which criterion answered: its slug, the version that scored, its kind."""

    slug: str
    version: str | None
    kind: str


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Judgement(BaseModel):
    """POST /v1/criteria/judge: one output scored by one criterion (OpenPipe's offline judge)."""

    model_config = _ANSWER

    score: float | None  # what the criterion reports (a reward model's raw reward, a judge's 0..1)
    normalized: float | None  # the 0..1 value the combination rule uses
    explanation: str | None
    criterion: CriterionInfo
    usage: TokenUsage  # what an LLM judge spent


class Alignment(BaseModel):
    """A criterion's agreement with human PASS/FAIL labels (gateway.criteria.alignment)."""

    model_config = _ANSWER

    criterion: CriterionInfo
    rows: int
    scored: int
    errored: int
    threshold: float
    confusion: dict[str, int]
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float | None
    disagreements: int
    disagreement_rows: list[dict[str, Any]]
    error_rows: list[dict[str, Any]]
    stored: bool  # kept with the criterion's version (definitions only)


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


class ListOf(BaseModel, Generic[Item]):
    """A list answer; paged lists add `next_cursor` and `has_more` (Page)."""

    model_config = _ANSWER

    object: Literal["list"] = "list"
    data: list[Item]


class Page(ListOf[Item], Generic[Item]):
    next_cursor: str | None  # pass as ?cursor= for the next page; null on the last one
    has_more: bool


# ---------------------------------------------------------------- request bodies of the resource APIs
# Closed objects (an unknown field is a 400). The handlers check these rules themselves, field by field, with
# messages that name the field; these models describe the same bodies for the OpenAPI document.

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
