"""Chat results -> what goes out and what is kept: the ChatCompletion JSON of a ranked answer, a pass-through answer
with its log id, a finished completion as `chat.completion.chunk` payloads, and the store's candidate records of
every kind of answer (one builder for all of them). Pure: no I/O. Must not import starlette or gateway.api.

Budgeted best-of-N (op-bon): `usage.rewardgate` says what the strategy generated and saved, each choice's
`rewardgate.tokens` its completion tokens, and a rejected one's `rewardgate.rejected_at` the tokens of the partial
answer it carries (finish_reason "rejected"); without op-bon none of these keys is present.

Streamed best-of-N: ranking needs every candidate whole, so the chunks come once all are scored: per choice (in
rank order) one delta with the whole message, then one with its finish_reason and the choice's other fields (such
as `criteria_results`); usage in a last chunk with no choices when the client asked for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from gateway.criteria import Scored
from gateway.protocol import (
    BudgetUsage,
    ChatCompletion,
    Choice,
    ChoiceError,
    ChoiceInfo,
    CompletionInfo,
    CriteriaUsage,
    Usage,
)
from gateway.service.handoffs import BudgetReport, Passthrough, Ranked, Replayed
from gateway.store import CandidateRecord, Latencies
from gateway.upstream.router import Candidate, CandidateError

# ---------------------------------------------------------------- to the client


def chat_completion(result: Ranked | Replayed) -> dict[str, Any]:
    """The ranked completion: choices best first (`index` = rank), each with its criteria_results; only the best
    with op-best-only; the log id and stored metadata when stored. A replayed one is the cached completion."""
    wanted = result.request.best_of_n
    assert wanted is not None, "a ranked result comes from a best-of-N request"
    completion = dict(result.completion) if isinstance(result, Replayed) else ranked_completion(result)
    info = {**completion["rewardgate"], "best_only": wanted.best_only, "cache_hit": isinstance(result, Replayed)}
    if result.log is not None:
        info |= {"log_id": result.log.id, "metadata": result.log.metadata}
    choices = completion["choices"]
    return {**completion, "choices": choices[:1] if wanted.best_only else choices, "rewardgate": info}


def ranked_completion(result: Ranked) -> dict[str, Any]:
    """Every ranked choice and the usage, without what belongs to one request (its log): what the cache keeps."""
    wanted = result.request.best_of_n
    assert wanted is not None, "a ranked result comes from a best-of-N request"
    info = CompletionInfo(criteria=dict(result.versions), n=wanted.n)
    budget = result.budget
    choices = [_choice(result.candidates[k], result.scored[k], rank, budget) for rank, k in enumerate(result.order)]
    usage = _upstream_usage(result.candidates)
    produced = sum(1 for c in result.candidates if isinstance(c, Candidate))
    spent = [r.usage for s in result.scored for r in s.results.values() if r.usage]
    usage.criteria = CriteriaUsage(
        criteria=len(result.versions),
        scored_candidates=produced,
        criterion_calls=produced * len(result.versions),
        prompt_tokens=sum(int(u.get("prompt_tokens", 0)) for u in spent),
        completion_tokens=sum(int(u.get("completion_tokens", 0)) for u in spent),
    )
    completion = ChatCompletion(
        id=result.id,
        created=result.created,
        model=result.request.model,
        choices=choices,
        usage=usage,
        rewardgate=info,
    )
    if budget is None:  # the keys of op-bon are absent, not null, on every other answer
        return completion.model_dump(
            exclude={"usage": {"rewardgate"}, "choices": {"__all__": {"rewardgate": {"tokens", "rejected_at"}}}}
        )
    usage.rewardgate = budget_usage(budget, len(result.candidates))
    return completion.model_dump()


def budget_usage(budget: BudgetReport, candidates: int) -> BudgetUsage:
    """`usage.rewardgate` of an op-bon answer, also what its log keeps (`budget`)."""
    return BudgetUsage(
        strategy=budget.strategy,
        requested_strategy=budget.requested,
        generated_tokens=budget.generated_tokens,
        plain_tokens=budget.plain_tokens,
        tokens_saved=budget.tokens_saved,
        candidates=candidates,
        rejected=len(budget.rejected_at),
        checkpoints=list(budget.checkpoints),
        rounds=budget.rounds,
        fallback=budget.fallback,
        keep=budget.keep,
        setting=budget.setting,
    )


def passthrough_completion(result: Passthrough) -> dict[str, Any]:
    """The upstream's completion as it came, plus `rewardgate.log_id` and the stored metadata when stored (and
    `rewardgate.cache_hit` when the response cache answered)."""
    if result.log is None and not result.cache_hit:
        return dict(result.response)
    info = CompletionInfo(cache_hit=result.cache_hit)
    if result.log is not None:
        info = info.model_copy(update={"log_id": result.log.id, "metadata": result.log.metadata})
    return {**result.response, "rewardgate": info.model_dump()}


def completion_chunks(completion: Mapping[str, Any], *, include_usage: bool) -> Iterator[dict[str, Any]]:
    """A finished chat completion as the chunk payloads a streaming client expects (without [DONE])."""
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"]}
    head["model"] = completion["model"]
    extras = {k: v for k, v in completion.items() if k not in {"id", "object", "created", "model", "choices", "usage"}}
    for choice in completion["choices"]:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
        if message.get("refusal") is not None:
            delta["refusal"] = message["refusal"]
        yield {**head, "choices": [{"index": choice["index"], "delta": delta, "finish_reason": None}]}
        rest = {k: v for k, v in choice.items() if k not in {"index", "message", "finish_reason"}}
        last = {"index": choice["index"], "delta": {}, "finish_reason": choice.get("finish_reason"), **rest}
        yield {**head, "choices": [last], **extras}
    if include_usage:
        yield {**head, "choices": [], "usage": completion.get("usage")}


def _choice(candidate: Candidate | CandidateError, scored: Scored, rank: int, budget: BudgetReport | None) -> Choice:
    info = ChoiceInfo(
        candidate_index=candidate.index,
        score=scored.score,
        criteria_errors=scored.criteria_errors,
        model=candidate.model,
    )
    if budget is not None:
        info.tokens = budget.tokens.get(candidate.index)
        info.rejected_at = budget.rejected_at.get(candidate.index)
    if isinstance(candidate, CandidateError):
        error = ChoiceError(message=candidate.message, code=candidate.code, status=candidate.status)
        message = {"role": "assistant", "content": None}
        return Choice(index=rank, message=message, finish_reason="error", rewardgate=info, error=error)
    extra = {k: v for k, v in candidate.choice.items() if k not in Choice.model_fields}
    return Choice(
        index=rank,
        message=candidate.choice.get("message") or {},
        finish_reason=candidate.choice.get("finish_reason"),
        criteria_results=scored.criteria_results(),
        rewardgate=info,
        **extra,
    )


def _upstream_usage(candidates: Sequence[Candidate | CandidateError]) -> Usage:
    # Candidates of one native-n call share their response's usage object: count each response once.
    responses = {id(c.usage): c.usage for c in candidates if isinstance(c, Candidate) and c.usage}

    def total(key: str) -> int:
        return sum(int(u.get(key) or 0) for u in responses.values())

    return Usage(
        prompt_tokens=total("prompt_tokens"),
        completion_tokens=total("completion_tokens"),
        total_tokens=total("total_tokens"),
    )


# ---------------------------------------------------------------- to the store


def candidate_record(
    index: int,
    message: dict[str, Any] | None,
    *,
    rank: int,
    finish_reason: str | None = None,
    error: str | None = None,
    scored: Scored | None = None,
) -> CandidateRecord:
    """The one way a candidate becomes a record: "error" status exactly when there is an error to keep."""
    return CandidateRecord(
        index,
        message,
        "ok" if error is None else "error",
        finish_reason,
        error,
        score=None if scored is None else scored.score,
        rank=rank,
        criteria_results={} if scored is None else scored.criteria_results(),
    )


def best_of_n_records(
    candidates: Sequence[Candidate | CandidateError], scored: Sequence[Scored], order: Sequence[int]
) -> list[CandidateRecord]:
    """Every candidate in rank order: produced ones with their scores, failed ones with the provider's error."""
    records = []
    for rank, k in enumerate(order):
        candidate = candidates[k]
        if isinstance(candidate, CandidateError):
            error = f"{candidate.code}: {candidate.message}"
            records.append(candidate_record(candidate.index, None, rank=rank, finish_reason="error", error=error))
        else:
            choice = candidate.choice
            records.append(
                candidate_record(
                    candidate.index,
                    choice.get("message"),
                    rank=rank,
                    finish_reason=choice.get("finish_reason"),
                    scored=scored[k],
                )
            )
    return records


def replayed_records(completion: Mapping[str, Any]) -> list[CandidateRecord]:
    """A cached ranked completion's choices (in rank order) as records, with the scores they were ranked by."""
    records = []
    for choice in completion["choices"]:
        info, error = choice.get("rewardgate") or {}, choice.get("error")
        record = candidate_record(
            info.get("candidate_index", choice["index"]),
            None if error else choice.get("message"),
            rank=choice["index"],
            finish_reason=choice.get("finish_reason"),
            error=f"{error['code']}: {error['message']}" if error else None,
        )
        records.append(replace(record, score=info.get("score"), criteria_results=choice.get("criteria_results") or {}))
    return records


def reported_records(response: object, error: str | None) -> list[CandidateRecord]:
    """A completion made elsewhere (OpenPipe's /report): its choices in order (whatever shape a client sent), and
    the failure when the call failed; none when it reported no response."""
    choices = response.get("choices") if isinstance(response, Mapping) else None
    records = []
    for i, c in enumerate(choices if isinstance(choices, list) else []):
        if isinstance(c, Mapping):
            message = c.get("message") if isinstance(c.get("message"), dict) else None
            reason = c.get("finish_reason") if isinstance(c.get("finish_reason"), str) else None
            records.append(candidate_record(i, message, rank=i, finish_reason=reason, error=error))
    return records or ([candidate_record(0, None, rank=0, error=error)] if error else [])


def passthrough_records(response: Mapping[str, Any]) -> list[CandidateRecord]:
    """The upstream's choices, in its order."""
    return [
        candidate_record(int(c.get("index", i)), c.get("message"), rank=i, finish_reason=c.get("finish_reason"))
        for i, c in enumerate(response["choices"])
        if isinstance(c, dict)
    ]


def stream_records(choices: Sequence[Mapping[str, Any]], failure: str | None, unparsable: int) -> list[CandidateRecord]:
    """The choices a stream rebuilt; a choice the stream did not finish is an error with what it had. A 200 whose
    body held no chunk was relayed as it came and is stored as a failure."""
    if not choices:
        empty = failure or f"the stream held no chat.completion.chunk events ({unparsable} unparsable)"
        return [candidate_record(0, None, rank=0, error=empty)]
    records = []
    for rank, choice in enumerate(choices):
        finished = choice["finish_reason"] is not None and failure is None
        error = None if finished else failure or "the stream ended before this choice finished"
        records.append(
            candidate_record(
                choice["index"], choice["message"], rank=rank, finish_reason=choice["finish_reason"], error=error
            )
        )
    return records


def latencies(upstream_s: float, scoring_s: float | None, total_s: float) -> Latencies:
    """Seconds -> the stored milliseconds."""
    return Latencies(upstream_s * 1000, None if scoring_s is None else scoring_s * 1000, total_s * 1000)
