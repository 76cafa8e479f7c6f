"""OpenAI chat-completions wire models the gateway reads and returns (DESIGN contract 4), plus `criteria_results`.

Pure pydantic at the edge; imports nothing from the project. The request keeps every field it does not know
(`extra="allow"`), so vendor extensions reach the upstream untouched. `store` and `metadata` are the gateway's:
OpenAI accepts both itself, but our log store is ours, so they are removed before the body goes upstream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, computed_field, field_serializer

GATEWAY_FIELDS = frozenset({"store", "metadata"})  # read by the gateway, never forwarded


class ChatCompletionRequest(BaseModel):
    """The fields the gateway reads; everything else passes through as received."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    n: StrictInt | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    metadata: dict[str, Any] | None = None  # validated by gateway.store.validate_metadata

    def upstream_body(self) -> dict[str, Any]:
        """The body to forward: as received (unset fields stay unset), minus the gateway-only fields."""
        return self.model_dump(exclude=set(GATEWAY_FIELDS), exclude_unset=True)


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
