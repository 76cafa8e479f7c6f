"""Reading JSONL files of pairs or rated responses (plain or .gz, or any iterable of lines): every non-blank line
yields one record or one LineError, so a caller sees every bad line; a file's first record decides its kind; a
UTF-8 byte-order mark at the start of a file is accepted. Imports only the stdlib and its sibling modules.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .messages import DatasetError, LineError, PairError, Split, is_rated
from .pairs import PreferencePair, parse_line
from .rated import RatedResponse, parse_rated_line, parse_record_line


def _raw_lines(source: str | os.PathLike[str] | Iterable[bytes | str]) -> Iterator[bytes | str]:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            yield from fh
    else:
        yield from source


def without_bom(text: str, number: int) -> str:
    """Line `number` of a JSONL file without the UTF-8 byte-order mark an editor (Notepad) may put at its start."""
    return text.removeprefix("\ufeff") if number == 1 else text


def _iter_records(source: str | os.PathLike[str] | Iterable[bytes | str], parse: Any) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(_raw_lines(source), start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, LineError(number, f"not UTF-8 text (byte {exc.start})")
                continue
        else:
            text = raw
        text = without_bom(text, number)
        if not text.strip():
            continue
        try:
            yield number, parse(text)
        except PairError as exc:
            yield number, LineError(number, str(exc))


def iter_pairs(
    source: str | os.PathLike[str] | Iterable[bytes | str],
) -> Iterator[tuple[int, PreferencePair | LineError]]:
    """Stream (line number, pair or error) over a JSONL file (plain or .gz) or an iterable of lines.

    Blank lines are skipped; every other line yields exactly one result, so a caller sees every
    bad line, never only the first.
    """
    yield from _iter_records(source, parse_line)


def iter_rated(
    source: str | os.PathLike[str] | Iterable[bytes | str],
) -> Iterator[tuple[int, RatedResponse | LineError]]:
    """`iter_pairs` for rated responses: (line number, rated response or error) for every non-blank line."""
    yield from _iter_records(source, parse_rated_line)


def iter_records(
    source: str | os.PathLike[str] | Iterable[bytes | str],
) -> Iterator[tuple[int, PreferencePair | RatedResponse | LineError]]:
    """`iter_pairs` for lines of either kind, each line parsed as what it is (`parse_record`)."""
    yield from _iter_records(source, parse_record_line)


@dataclass(frozen=True)
class PairSet:
    pairs: tuple[PreferencePair, ...]
    skipped: tuple[LineError, ...] = ()  # bad lines left out (only with skip_invalid=True)

    def split(self, name: Split) -> list[PreferencePair]:
        return [p for p in self.pairs if p.split == name]

    def summary(self) -> str:
        train, test = len(self.split("TRAIN")), len(self.split("TEST"))
        text = f"{len(self.pairs)} pairs (TRAIN {train}, TEST {test})"
        return f"{text}, {len(self.skipped)} invalid line(s) skipped" if self.skipped else text


def load_pairs(source: str | os.PathLike[str] | Iterable[bytes | str], *, skip_invalid: bool = False) -> PairSet:
    """Load a preference JSONL. Bad lines reject the whole file (DatasetError with every bad line)
    unless `skip_invalid`, which loads the good ones and reports the skipped ones."""
    pairs: list[PreferencePair] = []
    errors: list[LineError] = []
    for _, item in iter_pairs(source):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            pairs.append(item)
    if errors and not skip_invalid:
        raise DatasetError(str(source) if isinstance(source, str | os.PathLike) else "<lines>", errors)
    return PairSet(tuple(pairs), tuple(errors))


@dataclass(frozen=True)
class RatedSet:
    """A file of rated responses; `binary` when every reward is 0 or 1 (thumbs up/down, PASS/FAIL)."""

    rows: tuple[RatedResponse, ...]
    skipped: tuple[LineError, ...] = ()

    def split(self, name: Split) -> list[RatedResponse]:
        return [r for r in self.rows if r.split == name]

    @property
    def binary(self) -> bool:
        return bool(self.rows) and all(r.reward in (0.0, 1.0) for r in self.rows)

    def summary(self) -> str:
        train, test = len(self.split("TRAIN")), len(self.split("TEST"))
        labels = ", 0/1 labels" if self.binary else ""
        text = f"{len(self.rows)} rated responses (TRAIN {train}, TEST {test}{labels})"
        return f"{text}, {len(self.skipped)} invalid line(s) skipped" if self.skipped else text


def load_rated(source: str | os.PathLike[str] | Iterable[bytes | str], *, skip_invalid: bool = False) -> RatedSet:
    """`load_pairs` for rated responses: every bad line reported, the file refused unless `skip_invalid`."""
    rows: list[RatedResponse] = []
    errors: list[LineError] = []
    for _, item in iter_rated(source):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            rows.append(item)
    if errors and not skip_invalid:
        raise DatasetError(str(source) if isinstance(source, str | os.PathLike) else "<lines>", errors)
    return RatedSet(tuple(rows), tuple(errors))


DataKind = Literal["pairs", "rated"]


def data_kind(source: str | os.PathLike[str] | Iterable[bytes | str]) -> DataKind:
    """What a file holds, decided by its first record that decodes to a JSON object (`is_rated`); pairs when
    none does (the pair reader then reports every line)."""
    for raw in _raw_lines(source):
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return "rated" if is_rated(obj) else "pairs"
    return "pairs"


def load_data(
    source: str | os.PathLike[str] | Sequence[bytes | str], *, skip_invalid: bool = False
) -> PairSet | RatedSet:
    """Preference pairs or rated responses, whichever the file holds (`data_kind`); a line of the other kind is
    a bad line, reported like any other."""
    if data_kind(source) == "rated":
        return load_rated(source, skip_invalid=skip_invalid)
    return load_pairs(source, skip_invalid=skip_invalid)
