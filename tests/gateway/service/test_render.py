"""gateway.service.render as pure code: every kind of answer becomes store records through one builder (rank order,
"error" exactly when there is an error to keep), and a ranked result becomes the ChatCompletion a client reads."""

from __future__ import annotations

from gateway.criteria import CriterionRef, CriterionResult, Scored
from gateway.formats import Message
from gateway.service import render
from gateway.service.handoffs import BestOfN, ChatRequest, Ranked
from gateway.upstream.router import Candidate, CandidateError

MESSAGE = {"role": "assistant", "content": "Open settings."}
USAGE = {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


def ranked(best_only: bool = False) -> Ranked:
    produced = Candidate(
        0, {"index": 0, "message": MESSAGE, "finish_reason": "stop", "logprobs": None}, "m", USAGE, 0.1
    )
    also = Candidate(
        1, {"index": 1, "message": {**MESSAGE, "content": "No."}, "finish_reason": "stop"}, "m", USAGE, 0.1
    )
    failed = CandidateError(2, "upstream_error", "boom", 500, "m")
    results = {"rm": CriterionResult.success(1.5, version="v2", normalized=0.8)}
    weaker = {"rm": CriterionResult.success(-0.5, version="v2", normalized=0.3)}
    scored = (Scored(0, 0.8, results), Scored(1, 0.3, weaker), Scored(2, None, {}, failed=True))
    request = ChatRequest(
        model="m",
        raw={"model": "m", "messages": [{"role": "user", "content": "q"}]},
        upstream={},
        stream=False,
        include_usage=False,
        metadata=None,
        started=0.0,
        best_of_n=BestOfN((CriterionRef("rm"),), 3, best_only, (Message("user", "q"),)),
    )
    return Ranked(
        "chatcmpl-rg-1", 5, request, (produced, also, failed), scored, (1, 0, 2), {"rm": "v2"}, 0.1, 0.2, None
    )


def test_best_of_n_records_keep_rank_order_scores_and_the_providers_failure() -> None:
    result = ranked()
    records = render.best_of_n_records(result.candidates, result.scored, result.order)
    assert [(r.index, r.rank, r.status) for r in records] == [(1, 0, "ok"), (0, 1, "ok"), (2, 2, "error")]
    assert records[1].score == 0.8 and records[1].criteria_results["rm"]["score"] == 1.5
    assert records[2].message is None and records[2].error == "upstream_error: boom"
    assert records[2].finish_reason == "error" and records[2].criteria_results == {}


def test_passthrough_and_stream_records() -> None:
    response = {"choices": [{"index": 3, "message": MESSAGE, "finish_reason": "stop"}, "not a choice"]}
    [record] = render.passthrough_records(response)
    assert (record.index, record.rank, record.status, record.message) == (3, 0, "ok", MESSAGE)
    choices = [
        {"index": 0, "message": MESSAGE, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "Hal"}, "finish_reason": None},
    ]
    done, cut = render.stream_records(choices, None, 0)
    assert done.status == "ok" and cut.status == "error" and cut.message is not None
    assert cut.error == "the stream ended before this choice finished"
    failed = render.stream_records(choices, "timeout: late", 0)
    assert [r.error for r in failed] == ["timeout: late", "timeout: late"]
    [empty] = render.stream_records([], None, 2)
    assert empty.status == "error" and "(2 unparsable)" in (empty.error or "")


def test_a_ranked_result_renders_choices_best_first_with_results_usage_and_info() -> None:
    completion = render.chat_completion(ranked())
    assert [c["index"] for c in completion["choices"]] == [0, 1, 2]
    assert [c["rewardgate"]["candidate_index"] for c in completion["choices"]] == [1, 0, 2]
    first, second, failed = completion["choices"]
    assert first["criteria_results"]["rm"]["score"] == -0.5  # the order given: candidate 1 first
    assert second["criteria_results"]["rm"] == {"status": "success", "score": 1.5, "explanation": None, "version": "v2"}
    assert "logprobs" in second  # the upstream's other choice fields are kept
    assert failed["finish_reason"] == "error" and failed["error"]["code"] == "upstream_error"
    usage = completion["usage"]
    assert usage["total_tokens"] == 11  # the two candidates share one response's usage: counted once
    assert usage["criteria"] == {"criteria": 1, "scored_candidates": 2, "criterion_calls": 2, "prompt_tokens": 0,
                                 "completion_tokens": 0}  # fmt: skip
    assert completion["rewardgate"]["criteria"] == {"rm": "v2"} and completion["rewardgate"]["log_id"] is None
    assert [c["rewardgate"]["candidate_index"] for c in render.chat_completion(ranked(True))["choices"]] == [1]
