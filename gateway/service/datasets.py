"""The datasets service (docs/LIFECYCLE.md, "Datasets"): named lists of seed-format preference pairs (DESIGN
contract 1), or of rated responses (a response with a scalar reward: formats' pointwise records), filled by
uploads and by stored best-of-N logs (and, through gateway.service.feedback, by users' feedback and ratings), and
exported as the JSONL the trainer reads. A dataset holds one kind: the first entry decides. Owns the pair-from-a-log
rule both use. Used by gateway.api.datasets. Must not import starlette, torch, trainer or reward_serving.

Decisions where LIFECYCLE.md is silent:
- Every pair is normalised by gateway.formats (any accepted shape is stored in the seed shape) and its split is
  fixed when stored: the record's own, else the prompt-hash split. Uploads report bad entries by 0-based index and
  1-based line (for a JSON `entries` list, line = index + 1); an empty upload is a 400.
- Dataset names follow the slug rule and may not look like a dataset id (`ds_` + 26 ULID characters), so a
  `{dataset}` reference is never ambiguous.
- from-logs adds each log at most once per dataset (running it again adds only new logs; the rest are reported as
  skipped "already in the dataset"); unknown log ids are skipped, not fatal.
- A log's "choices" are its candidates in rank order (what the client got back, `index` = rank); a log's best
  response is its best-ranked candidate the provider produced.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from gateway.criteria import SLUG
from gateway.errors import InvalidRequestError
from gateway.formats import (
    LineError,
    PairError,
    PreferencePair,
    RatedResponse,
    is_rated,
    iter_records,
    parse_pair,
    parse_record,
)
from gateway.store import (
    MAX_PAGE,
    CandidateRecord,
    DatasetRecord,
    EntryError,
    EntryPage,
    EntrySource,
    InvalidEntriesError,
    LogNotFoundError,
    LogQuery,
    LogRecord,
    LogStore,
    NewEntry,
    preference_pair,
)

DATASET_ID = re.compile(r"ds_[0-9A-HJKMNP-TV-Z]{26}")


@dataclass(frozen=True)
class Upload:
    """An upload, validated: the good records (preference pairs or rated responses) and every bad entry."""

    pairs: tuple[PreferencePair | RatedResponse, ...]
    invalid: tuple[EntryError, ...]


Record = TypeVar("Record", bound=PreferencePair | RatedResponse)


def storable(pair: Record) -> Record:
    # JSON readers accept NaN and Infinity (e.g. inside metadata); the store and the trainer's files do not.
    try:
        json.dumps(pair.to_json(), allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise PairError(f"not storable as JSON ({exc})") from None
    return pair


def read_jsonl(body: bytes) -> Upload:
    """A JSONL body: one pair (or rated response) per non-blank line."""
    pairs: list[PreferencePair | RatedResponse] = []
    invalid: list[EntryError] = []
    for index, (line, item) in enumerate(iter_records(body.splitlines())):
        try:
            if isinstance(item, LineError):
                raise PairError(item.reason)
            pairs.append(storable(item))
        except PairError as exc:
            invalid.append(EntryError(index, line, str(exc)))
    return Upload(tuple(pairs), tuple(invalid))


def read_entries(entries: object) -> Upload:
    """The `entries` list of a JSON body."""
    if not isinstance(entries, list):
        raise InvalidRequestError('entries: expected {"entries": [pair, ...]} or a JSONL body', param="entries")
    pairs: list[PreferencePair | RatedResponse] = []
    invalid: list[EntryError] = []
    for index, raw in enumerate(entries):
        try:
            pairs.append(storable(parse_record(raw)))
        except PairError as exc:
            invalid.append(EntryError(index, index + 1, str(exc)))
        except RecursionError:
            invalid.append(EntryError(index, index + 1, "record nested too deeply"))
    return Upload(tuple(pairs), tuple(invalid))


@dataclass(frozen=True)
class Added:
    """What an upload, from-logs or feedback call added; `skipped` pairs a log id or choice with the reason."""

    dataset: DatasetRecord
    added: int
    invalid: tuple[EntryError, ...] = ()
    skipped: tuple[tuple[int | str, str], ...] = ()


def produced(log: LogRecord) -> list[CandidateRecord]:
    """The candidates the provider produced, best-ranked first."""
    return [c for c in log.candidates if c.status == "ok" and c.message is not None]


def pair_entry(
    log: LogRecord, chosen: CandidateRecord, rejected: CandidateRecord, meta: dict[str, Any], source: EntrySource
) -> NewEntry:
    """The log's prompt (request messages, tools, tool_choice) with `chosen` over `rejected`, as a dataset entry of
    `source`; PairError if the format refuses the pair."""
    messages = log.request.get("messages")
    if not isinstance(messages, list):
        raise PairError("the logged request has no messages list")
    record: dict[str, Any] = {
        "messages": [*messages, chosen.message],
        "rejected_message": rejected.message,
        "metadata": meta,
    }
    record.update({key: log.request[key] for key in ("tools", "tool_choice") if log.request.get(key) is not None})
    return NewEntry(storable(parse_pair(record)).to_json(), source, log.id)


def _why_no_pair(log: LogRecord) -> str:
    """Why gateway.store.preference_pair made nothing of this log."""
    scored = [c for c in produced(log) if c.score is not None]
    if len(scored) < 2:
        return f"fewer than two scored candidates ({len(scored)})"
    best = max(scored, key=lambda c: c.score or 0.0)
    worst = min(scored, key=lambda c: c.score or 0.0)
    if best.score == worst.score:
        return f"the best and worst candidates tie (score {best.score})"
    try:
        pair_entry(log, best, worst, {}, "log")
    except PairError as exc:
        return f"no valid pair: {exc}"
    return "no valid pair"


def _when(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(f"{name}: expected an ISO 8601 datetime, got {value!r}", param=name) from None
    if parsed.tzinfo is None:
        raise InvalidRequestError(f"{name}: the datetime needs a timezone (e.g. Z)", param=name)
    return parsed


async def check_kind(store: LogStore, dataset: str, rated: Iterable[bool]) -> None:
    """A dataset holds one kind of record (the trainer reads one kind per file): the first entry decides; 400
    when adding records (`rated`: whether each is a rated response) would mix pairs and rated responses."""
    kinds = set(rated)
    page = await store.list_entries(dataset, limit=1)
    if page.entries:
        kinds.add(is_rated(page.entries[0].pair))
    if len(kinds) > 1:
        raise InvalidRequestError(
            "a dataset holds either preference pairs or rated responses, not both (the first entry decides): "
            "put the other kind in another dataset",
            param="entries",
            code="mixed_kinds",
        )


class DatasetService:
    def __init__(self, store: LogStore) -> None:
        self._store = store

    # ------------------------------------------------------------ datasets and entries

    async def create(self, *, name: object, description: object = "", display_name: bool = False) -> DatasetRecord:
        """A new dataset. `display_name`: OpenPipe's free-form names ("Test Dataset": 1 to 128 printable characters,
        no surrounding space), for the /api/v1 mount, which addresses datasets by id; still unique."""
        if display_name:
            valid = isinstance(name, str) and 0 < len(name) <= 128 and name.isprintable() and name.strip() == name
            rule = "1 to 128 printable characters without surrounding space"
        else:
            valid = isinstance(name, str) and SLUG.fullmatch(name) is not None
            rule = "1 to 128 letters, digits, '.', '_' or '-' starting with a letter or digit"
        if not valid or not isinstance(name, str) or DATASET_ID.fullmatch(name):
            raise InvalidRequestError(f"name: {name!r} is not {rule} (and not shaped like a dataset id)", param="name")
        if not isinstance(description, str):
            raise InvalidRequestError("description: must be a string", param="description")
        return await self._store.create_dataset(name=name, description=description)

    async def get(self, dataset: str) -> DatasetRecord:
        return await self._store.get_dataset(dataset)

    async def list_datasets(self) -> Sequence[DatasetRecord]:
        return await self._store.list_datasets()

    async def delete(self, dataset: str) -> str:
        return await self._store.delete_dataset(dataset)

    async def upload(self, dataset: str, upload: Upload, *, skip_invalid: bool) -> Added:
        """Store the good pairs; any bad one rejects the whole upload (InvalidEntriesError) unless skip_invalid."""
        await self._store.get_dataset(dataset)  # an unknown dataset is a 404 before any report on the entries
        if not upload.pairs and not upload.invalid:
            raise InvalidRequestError("the upload has no entries", param="entries")
        if upload.invalid and not skip_invalid:
            raise InvalidEntriesError(upload.invalid)
        await check_kind(self._store, dataset, (isinstance(p, RatedResponse) for p in upload.pairs))
        result = await self._store.add_entries(dataset, [NewEntry(p.to_json()) for p in upload.pairs])
        return Added(result.dataset, result.added, upload.invalid)

    async def entries(self, dataset: str, *, limit: int, cursor: str | None, split: str | None) -> EntryPage:
        return await self._store.list_entries(dataset, limit=limit, cursor=cursor, split=split)

    async def delete_entry(self, dataset: str, entry_id: str) -> None:
        await self._store.delete_entry(dataset, entry_id)

    async def export(self, dataset_id: str, split: str | None = None) -> AsyncIterator[str]:
        """The pairs as seed-format JSONL lines, `split` included, read from the store a page at a time."""
        cursor = None
        while True:
            page = await self._store.list_entries(dataset_id, limit=MAX_PAGE, cursor=cursor, split=split)
            for entry in page.entries:
                yield json.dumps(entry.pair, ensure_ascii=False, separators=(",", ":")) + "\n"
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # ------------------------------------------------------------ pairs from logs

    async def from_logs(self, dataset: str, body: Mapping[str, Any]) -> Added:
        """`{"log_ids": [...]}` or `{"metadata": {...}, "model"?, "since"?, "before"?}`: best vs worst candidate of
        each log by combined score (gateway.store.preference_pair); the logs that make no pair are `skipped`."""
        await self._store.get_dataset(dataset)
        skipped: list[tuple[int | str, str]] = []
        entries: list[NewEntry] = []
        async for log_id, log in self._logs(body):
            pair = None if log is None else preference_pair(log)
            if pair is not None:
                entries.append(NewEntry(parse_pair(pair).to_json(), "log", log_id))  # parsed again: the hash split
            else:
                skipped.append((log_id, "no log with that id" if log is None else _why_no_pair(log)))
        await check_kind(self._store, dataset, [False] if entries else [])
        result = await self._store.add_entries(dataset, entries)
        skipped += [(log_id, "already in the dataset") for log_id in result.duplicates]
        return Added(result.dataset, result.added, skipped=tuple(skipped))

    async def _logs(self, body: Mapping[str, Any]) -> AsyncIterator[tuple[str, LogRecord | None]]:
        log_ids = body.get("log_ids")
        if log_ids is not None:
            if set(body) != {"log_ids"}:
                raise InvalidRequestError(
                    "log_ids: give either log_ids or a metadata filter, not both", param="log_ids"
                )
            if not isinstance(log_ids, list) or not log_ids or not all(isinstance(i, str) for i in log_ids):
                raise InvalidRequestError("log_ids: expected a non-empty list of log ids", param="log_ids")
            for log_id in dict.fromkeys(log_ids):  # each log once, in the order given
                try:
                    yield log_id, await self._store.get_log(log_id)
                except LogNotFoundError:
                    yield log_id, None
            return
        metadata = body.get("metadata")
        unknown = sorted(set(body) - {"metadata", "model", "since", "before"})
        if unknown:
            raise InvalidRequestError(f"unknown field {unknown[0]!r}", param=unknown[0])
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise InvalidRequestError(
                'expected {"log_ids": [...]} or {"metadata": {key: string}, "model"?, "since"?, "before"?}',
                param="metadata",
            )
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequestError("model: must be a string", param="model")
        query = LogQuery(metadata, model, _when(body.get("since"), "since"), _when(body.get("before"), "before"))
        cursor = None
        while True:
            page = await self._store.list_logs(query, limit=MAX_PAGE, cursor=cursor)
            for log in page.logs:
                yield log.id, log
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
