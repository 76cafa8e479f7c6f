"""The store's exception tree (drawn in gateway/store/__init__.py); gateway/errors.py maps it to responses.

Imports only the stdlib: every other store module may import this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class StoreError(Exception):
    """Base of every error the store raises."""


class StoreBusyError(StoreError):
    """Another connection held the database locked longer than the busy timeout."""


class StoreClosedError(StoreError):
    """The store was used after aclose()."""


class LogNotFoundError(StoreError):
    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        super().__init__(f"no log with id {log_id!r}")


class InvalidInputError(StoreError, ValueError):
    """The caller passed something the store cannot take; the message says what."""


class MetadataError(InvalidInputError):
    def __init__(self, key: str | None, reason: str) -> None:
        self.key = key
        super().__init__(f"metadata[{key!r}]: {reason}" if key is not None else f"metadata: {reason}")


class CriterionNotFoundError(StoreError):
    def __init__(self, criterion_id: str) -> None:
        super().__init__(f"no criterion {criterion_id!r}")
        self.criterion_id = criterion_id


class CriterionExistsError(InvalidInputError):
    """A create names a slug that exists, or a new version would change the slug's kind."""


class DatasetNotFoundError(StoreError):
    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(f"no dataset {dataset!r} (by id or name)")


class JobNotFoundError(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no training job {job_id!r}")
        self.job_id = job_id


class EntryNotFoundError(StoreError):
    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(f"no entry {entry_id!r} in that dataset")


class DatasetExistsError(InvalidInputError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a dataset named {name!r} exists")


@dataclass(frozen=True)
class EntryError:
    """One bad entry of an upload: its 0-based position among the entries, its 1-based line, and why."""

    index: int
    line: int
    error: str


class InvalidEntriesError(InvalidInputError):
    def __init__(self, invalid: Sequence[EntryError]) -> None:
        self.invalid = tuple(invalid)
        shown = "; ".join(f"entry {e.index} (line {e.line}): {e.error}" for e in self.invalid[:5])
        more = f"; and {len(self.invalid) - 5} more" if len(self.invalid) > 5 else ""
        super().__init__(f"{len(self.invalid)} invalid entry(ies), nothing added: {shown}{more}")
