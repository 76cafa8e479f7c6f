"""OpenAI's chat completions as the gateway reads and returns them (DESIGN contract 4): the request body checked
against OpenAI's own rules (roles, content shapes, parameter ranges; unknown fields pass through), the ranked
ChatCompletion with `criteria_results`, and the model listing. Pure pydantic; imports nothing from the project.
The request keeps every field it does not know (`extra="allow"`), so vendor extensions reach the upstream
untouched. `store` and `metadata` are the gateway's: OpenAI accepts both itself, but our log store is ours, so
they are removed before the body goes upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GATEWAY_FIELDS = frozenset({"store", "metadata"})  # read by the gateway, never forwarded


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
    # op-bon only (absent otherwise): the completion tokens generated for it, and for a candidate early rejection
    # cancelled (finish_reason "rejected") the tokens it had when the partial answer it carries was scored
    tokens: int | None = None
    rejected_at: int | None = None


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


class BudgetUsage(BaseModel):
    """`usage.rewardgate` of an op-bon request: what the strategy generated against plain best-of-N."""

    strategy: str  # the strategy that ran: early_rejection, adaptive, or best_of_n (a fallback)
    requested_strategy: str
    generated_tokens: int  # completion tokens generated, rejected candidates included
    plain_tokens: int  # plain best-of-N's estimate: n x mean completion tokens of the candidates that finished
    tokens_saved: int  # max(0, plain_tokens - generated_tokens)
    candidates: int  # candidates started
    rejected: int  # candidates cancelled part-way
    checkpoints: list[int] = Field(default_factory=list)  # early rejection's checkpoints, after calibration
    rounds: int = 1  # adaptive N's rounds
    fallback: str | None = None  # why plain best-of-N ran instead
    keep: float | None = None  # early rejection's keep fraction
    setting: str | None = None  # early rejection's setting: request, calibration <slug@version> or default


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    criteria: CriteriaUsage | None = None
    rewardgate: BudgetUsage | None = None  # op-bon only (absent otherwise)


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
