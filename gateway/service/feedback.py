"""Feedback as preference pairs (docs/LIFECYCLE.md, "Feedback"): a user's choice among a stored best-of-N answer's
choices, or the accepted regeneration of a thread, added to a dataset the trainer reads; or a user's rating of one
choice (`rating`: stars, or 1/0 for thumbs up/down) as a rated response, which trains a pointwise reward model. Used by
gateway.api.datasets. Must not import starlette, torch, trainer or reward_serving.

Decisions where LIFECYCLE.md is silent: (a) the chosen choice over every other produced candidate; choices whose
pair the format refuses (e.g. the same text twice) are reported under `skipped`, and it is a 400 only when no pair
at all can be made. (b) the accepted response over the thread's first one, the prompt taken from the accepted
log's request. The dataset is created when a valid name does not exist yet, once there is a pair to add.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.criteria import SLUG
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.formats import PairError, parse_rated
from gateway.service.datasets import DATASET_ID, Added, check_kind, pair_entry, produced, storable
from gateway.store import MAX_PAGE, DatasetNotFoundError, DatasetRecord, LogQuery, LogRecord, LogStore, NewEntry

THREAD_KEY = "rg_thread"  # the metadata key that groups the regenerations of one answer into a thread


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{name}: required, a non-empty string", param=name)
    return value


class FeedbackService:
    def __init__(self, store: LogStore) -> None:
        self._store = store

    async def add(self, body: Mapping[str, Any]) -> Added:
        """(a) `{"log_id", "choice_index", "dataset"}`: the chosen choice over every other produced candidate;
        (b) `{"thread", "dataset", "accepted_log_id"?}`: the accepted response over the thread's first one;
        (c) `{"log_id", "choice_index", "rating", "dataset"}`: that choice as a rated response (reward = rating)."""
        dataset = _text(body.get("dataset"), "dataset")
        by_choice = "log_id" in body
        if by_choice == ("thread" in body):
            raise InvalidRequestError("give either log_id + choice_index, or thread", param="log_id")
        allowed = (
            {"log_id", "choice_index", "rating", "dataset"} if by_choice else {"thread", "accepted_log_id", "dataset"}
        )
        extra = sorted(set(body) - allowed)
        if extra:
            raise InvalidRequestError(
                f"unknown field {extra[0]!r} (allowed: {', '.join(sorted(allowed))})", param=extra[0]
            )
        skipped: list[tuple[int | str, str]] = []
        if by_choice and "rating" in body:
            entries = [await self._rating(_text(body["log_id"], "log_id"), body.get("choice_index"), body["rating"])]
        elif by_choice:
            entries, skipped = await self._choice(_text(body["log_id"], "log_id"), body.get("choice_index"))
        else:
            accepted = body.get("accepted_log_id")
            accepted_id = None if accepted is None else _text(accepted, "accepted_log_id")
            entries = [await self._thread(_text(body["thread"], "thread"), accepted_id)]
        target = await self._feedback_dataset(dataset)
        await check_kind(self._store, target.id, [by_choice and "rating" in body])
        result = await self._store.add_entries(target.id, entries)
        return Added(result.dataset, result.added, skipped=tuple(skipped))

    async def _feedback_dataset(self, dataset: str) -> DatasetRecord:
        """The named dataset, created when a valid name does not exist yet."""
        try:
            return await self._store.get_dataset(dataset)
        except DatasetNotFoundError:
            if not SLUG.fullmatch(dataset) or DATASET_ID.fullmatch(dataset):
                raise
        return await self._store.create_dataset(name=dataset, exist_ok=True)

    async def _choice(self, log_id: str, choice_index: object) -> tuple[list[NewEntry], list[tuple[int | str, str]]]:
        if isinstance(choice_index, bool) or not isinstance(choice_index, int) or choice_index < 0:
            raise InvalidRequestError("choice_index: required, a choice's index (0 = the best)", param="choice_index")
        log = await self._store.get_log(log_id)
        chosen = next((c for c in log.candidates if c.rank == choice_index), None)
        if chosen is None:
            raise InvalidRequestError(
                f"choice_index: log {log_id} has no choice {choice_index} ({len(log.candidates)} choices)",
                param="choice_index",
            )
        answers = produced(log)
        if chosen not in answers:
            raise InvalidRequestError(
                f"choice {choice_index} of log {log_id} was not produced: {chosen.error}",
                param="choice_index",
                code="no_pair",
            )
        if len(answers) < 2:
            raise InvalidRequestError(
                f"log {log_id} has fewer than two produced candidates: no pair to make", param="log_id", code="no_pair"
            )
        entries: list[NewEntry] = []
        skipped: list[tuple[int | str, str]] = []
        for other in answers:
            if other is chosen:
                continue
            meta = {
                "log_id": log_id,
                "feedback": "choice",
                "chosen_choice": choice_index,
                "rejected_choice": other.rank,
            }
            try:
                entries.append(pair_entry(log, chosen, other, meta, "feedback"))
            except PairError as exc:
                skipped.append((other.rank if other.rank is not None else other.index, str(exc)))
        if not entries:
            reasons = "; ".join(f"choice {ref}: {why}" for ref, why in skipped)
            raise InvalidRequestError(f"no valid pair from log {log_id}: {reasons}", param="log_id", code="no_pair")
        return entries, skipped

    async def _rating(self, log_id: str, choice_index: object, rating: object) -> NewEntry:
        if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
            raise InvalidRequestError(
                "rating: a finite number (stars, a score, or 1 / 0 for thumbs up / down)", param="rating"
            )
        if isinstance(choice_index, bool) or not isinstance(choice_index, int) or choice_index < 0:
            raise InvalidRequestError("choice_index: required, a choice's index (0 = the best)", param="choice_index")
        log = await self._store.get_log(log_id)
        chosen = next((c for c in produced(log) if c.rank == choice_index), None)
        if chosen is None:
            raise InvalidRequestError(
                f"choice_index: log {log_id} has no produced choice {choice_index}", param="choice_index"
            )
        messages = log.request.get("messages")
        record: dict[str, Any] = {
            "messages": [*messages, chosen.message] if isinstance(messages, list) else None,
            "reward": rating,
            "metadata": {"log_id": log_id, "feedback": "rating", "choice": choice_index},
        }
        record.update({key: log.request[key] for key in ("tools", "tool_choice") if log.request.get(key) is not None})
        try:
            return NewEntry(storable(parse_rated(record)).to_json(), "feedback", log_id)
        except PairError as exc:
            raise InvalidRequestError(f"log {log_id}: no valid rated response: {exc}", param="log_id") from None

    async def _thread(self, thread: str, accepted_id: str | None) -> NewEntry:
        logs: list[LogRecord] = []  # newest first
        cursor = None
        while True:
            page = await self._store.list_logs(LogQuery({THREAD_KEY: thread}), limit=MAX_PAGE, cursor=cursor)
            logs += page.logs
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        if not logs:
            raise NotFoundError(
                f"no stored log has metadata {THREAD_KEY}={thread!r}", param="thread", code="thread_not_found"
            )
        first, accepted = logs[-1], logs[0]
        if accepted_id is not None:
            found = next((log for log in logs if log.id == accepted_id), None)
            if found is None:
                await self._store.get_log(accepted_id)  # 404 when there is no such log at all
                raise InvalidRequestError(
                    f"accepted_log_id: log {accepted_id} is not in thread {thread!r}", param="accepted_log_id"
                )
            accepted = found
        if accepted.id == first.id:
            why = "has one log" if len(logs) == 1 else "is accepted at its first response"
            raise InvalidRequestError(f"thread {thread!r} {why}: no pair to make", param="thread", code="no_pair")
        for log in (accepted, first):
            if not produced(log):
                raise InvalidRequestError(f"log {log.id} has no produced response", param="thread", code="no_pair")
        meta = {"thread": thread, "feedback": "thread", "accepted_log_id": accepted.id, "first_log_id": first.id}
        try:
            return pair_entry(accepted, produced(accepted)[0], produced(first)[0], meta, "feedback")
        except PairError as exc:
            raise InvalidRequestError(
                f"thread {thread!r}: no valid pair: {exc}", param="thread", code="no_pair"
            ) from None
