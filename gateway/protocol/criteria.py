"""Criteria on the wire: a stored criterion definition (the store's record, the resolvers' input and the JSON of
GET /v1/criteria/{id} at once), and the answers of the offline judge and of an alignment run. Pure pydantic;
imports nothing from the project.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field, field_serializer

_ANSWER = ConfigDict(json_schema_serialization_defaults_required=True)  # every key is always written


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
