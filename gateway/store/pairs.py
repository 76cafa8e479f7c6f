"""The log -> preference pair rule (DESIGN contract 1): the best vs the worst successful candidate of a log.
Imports only the stdlib, gateway.formats and gateway.store.records."""

from __future__ import annotations

from typing import Any

from gateway.formats import PairError, parse_pair
from gateway.store.records import LogRecord


def preference_pair(log: LogRecord) -> dict[str, Any] | None:
    """The log as one seed-format preference pair: the best vs the worst successful candidate by combined score.

    None when fewer than two candidates succeeded, best and worst tie, or the messages make no valid pair. A
    candidate that op-bon's early rejection cancelled (finish_reason "rejected") takes no part: its answer is cut
    short and its score is a partial one.
    `split` is left out, so the reader's prompt-hash split applies; `metadata` carries the log id.
    """
    scored = [
        (c.score, c)
        for c in log.candidates
        if c.status == "ok" and c.score is not None and c.message and c.finish_reason != "rejected"
    ]
    messages = log.request.get("messages")
    if len(scored) < 2 or not isinstance(messages, list):
        return None
    (best_score, best), (worst_score, worst) = max(scored, key=lambda p: p[0]), min(scored, key=lambda p: p[0])
    if best_score == worst_score:
        return None
    record: dict[str, Any] = {
        "messages": [*messages, best.message],
        "rejected_message": worst.message,
        "metadata": {"log_id": log.id, "chosen_score": best_score, "rejected_score": worst_score},
    }
    record.update({key: log.request[key] for key in ("tools", "tool_choice") if log.request.get(key) is not None})
    try:
        out = parse_pair(record).to_json()  # normalised by the format's own writer
    except PairError:
        return None
    del out["split"]
    return out
