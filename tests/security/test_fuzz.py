"""Bad input, property-tested: the readers and parsers that see client bytes raise only their documented error, and
no body, header or query value makes either app answer 5xx.

Already covered elsewhere, not repeated: one JSONL line of any text, bytes or JSON never makes `iter_pairs` raise
(tests/test_formats.py, the property tests); hand-picked malformed op-criteria headers name the problem
(tests/gateway/criteria/test_base.py). Added here: op-criteria headers of any text and of near-valid JSON,
whole multi-line JSONL bodies (the dataset upload, the alignment set, `load_pairs`), the `{"entries": [...]}` form,
the reward server's /v1/score parser, and hostile values sent to every route of both apps over ASGI.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.openapi import gateway_spec
from gateway.criteria import MAX_CRITERIA, SLUG, CriteriaHeaderError, CriterionRef, parse_criteria_header
from gateway.criteria.alignment import LabelledSetError, parse_labelled_set
from gateway.errors import InvalidRequestError
from gateway.formats import DatasetError, LineError, PreferencePair, iter_pairs, load_pairs
from gateway.reward_serving.errors import InvalidRequestError as ScoreInputError
from gateway.reward_serving.openapi import reward_server_spec
from gateway.reward_serving.server import ScoreCall, parse_score_request
from gateway.service.datasets import read_entries, read_jsonl
from tests.gateway.fakes import MESSAGES, Gateway, fake_upstream, running_gateway

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=24)  # lone surrogates included
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT
JSON = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=12
)
GOOD_PAIR = {
    "messages": [{"role": "user", "content": "Where is QB-1?"}, {"role": "assistant", "content": "It ships today."}],
    "rejected_message": {"role": "assistant", "content": "No idea."},
}
HUGE_INT = "9" * 5000  # json.loads: a ValueError (Python's 4300-digit limit), not a JSONDecodeError


# ---------------------------------------------------------------- the op-criteria header

IDS = st.sampled_from(["rm", "support-rm", "a.b_c", "rm@v2", "rm@v0", "rm@2", "-rm", "", "x@v1@v2"]) | ANY_TEXT
ENTRY = IDS | st.fixed_dictionaries(
    {}, optional={"id": IDS | JSON, "weight": st.integers() | st.floats() | JSON, "extra": JSON}
)
HEADERS = st.one_of(
    st.text(),
    st.lists(ENTRY, max_size=MAX_CRITERIA + 2).map(json.dumps),
    JSON.map(lambda value: json.dumps(value)),
)


def check_header(value: str) -> None:
    """The property: a list of valid references, or CriteriaHeaderError (a 400); nothing else."""
    try:
        refs = parse_criteria_header(value)
    except CriteriaHeaderError as exc:
        assert str(exc).strip()
        return
    assert 1 <= len(refs) <= MAX_CRITERIA
    assert len({r.slug for r in refs}) == len(refs)
    for ref in refs:
        assert isinstance(ref, CriterionRef) and SLUG.fullmatch(ref.slug)
        assert ref.version is None or ref.version >= 0
        assert math.isfinite(ref.weight) and ref.weight > 0


@PROPERTY
@given(HEADERS)
def test_property_op_criteria_header_of_any_text(value: str) -> None:
    check_header(value)


@PROPERTY
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255)))
def test_property_op_criteria_header_as_http_delivers_it(value: str) -> None:
    check_header(value)  # header values arrive latin-1 decoded


def test_op_criteria_header_with_a_huge_integer_is_a_header_error() -> None:
    check_header('[{"id": "rm", "weight": ' + HUGE_INT + "}]")


# ---------------------------------------------------------------- JSONL bodies

LINES = st.lists(
    st.one_of(
        st.just(json.dumps(GOOD_PAIR)), JSON.map(json.dumps), ANY_TEXT, st.binary(max_size=24).map(repr), st.just("")
    ),
    max_size=8,
)
SEPARATORS = st.sampled_from(["\n", "\r\n", "\r"])


def blank(raw: bytes) -> bool:
    """A blank line as the reader sees it: UTF-8 text that is all whitespace (str's idea of it)."""
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


@PROPERTY
@given(LINES, SEPARATORS)
def test_property_dataset_upload_accounts_for_every_line(lines: list[str], sep: str) -> None:
    body = sep.join(lines).encode("utf-8", "surrogatepass")
    upload = read_jsonl(body)
    non_blank = [n for n, raw in enumerate(body.splitlines(), start=1) if not blank(raw)]
    assert len(upload.pairs) + len(upload.invalid) == len(non_blank)
    assert sorted(e.line for e in upload.invalid) == [e.line for e in upload.invalid]
    assert all(e.line in non_blank and e.error.strip() for e in upload.invalid)


@PROPERTY
@given(st.binary(max_size=200))
def test_property_dataset_upload_of_any_bytes(body: bytes) -> None:
    upload = read_jsonl(body)
    assert len(upload.pairs) + len(upload.invalid) == sum(1 for raw in body.splitlines() if not blank(raw))


@PROPERTY
@given(LINES)
def test_property_load_pairs_raises_only_dataset_error(lines: list[str]) -> None:
    try:
        loaded = load_pairs(lines)
    except DatasetError as exc:
        assert exc.errors and all(isinstance(e, LineError) for e in exc.errors)
        return
    assert all(isinstance(p, PreferencePair) for p in loaded.pairs)
    assert len(loaded.pairs) == sum(1 for line in lines if line.strip())


@PROPERTY
@given(JSON | st.lists(JSON | st.just(GOOD_PAIR), max_size=6))
def test_property_entries_form_raises_only_a_400(entries: Any) -> None:
    try:
        upload = read_entries(entries)
    except InvalidRequestError as exc:
        assert exc.status == 400 and not isinstance(entries, list)
        return
    assert len(upload.pairs) + len(upload.invalid) == len(entries)


@PROPERTY
@given(LINES)
def test_property_alignment_set_raises_only_labelled_set_error(lines: list[str]) -> None:
    try:
        rows = parse_labelled_set(line.encode("utf-8", "surrogatepass") for line in lines)
    except LabelledSetError as exc:
        assert exc.errors
        return
    assert rows


def test_every_line_of_a_huge_integer_is_a_line_error() -> None:
    (_, item), *_ = iter_pairs([HUGE_INT])
    assert isinstance(item, LineError)
    assert read_jsonl(HUGE_INT.encode()).invalid[0].line == 1


def test_alignment_set_with_a_huge_integer_is_a_line_error() -> None:
    with pytest.raises(LabelledSetError):
        parse_labelled_set([HUGE_INT.encode()])


# ---------------------------------------------------------------- the reward server's score request

CONVERSATION = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "tool", "robot"]) | JSON},
        optional={"content": ANY_TEXT | JSON, "tool_calls": JSON},
    ),
    max_size=3,
)
SCORE_BODIES = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["rm", "rm@v1", "../rm", ""]) | JSON},
        optional={"conversations": st.lists(CONVERSATION, max_size=3) | JSON, "tools": JSON},
    ).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
)


@PROPERTY
@given(SCORE_BODIES)
def test_property_score_request_parser_raises_only_a_4xx(body: bytes) -> None:
    try:
        call = parse_score_request(body, max_conversations=2)
    except ScoreInputError as exc:  # RequestTooLargeError (413) is one
        assert exc.status in (400, 413) and exc.message.strip()
        return
    assert isinstance(call, ScoreCall) and 1 <= len(call.conversations) <= 2
    assert all(c[-1].role == "assistant" for c in call.conversations)


def test_score_request_with_a_huge_integer_is_a_400() -> None:
    with pytest.raises(ScoreInputError):
        parse_score_request(b'{"model": "rm", "n": ' + HUGE_INT.encode() + b"}", max_conversations=2)


# ---------------------------------------------------------------- hostile values on every route, over ASGI

HOSTILE_BODIES = {
    "empty": b"",
    "not JSON": b"{not json",
    "invalid UTF-8": b'{"model": "\xff\xfe"}',
    "UTF-16": json.dumps({"model": "m"}).encode("utf-16"),
    "a JSON array": b"[]",
    "a JSON string": b'"x"',
    "null": b"null",
    "NaN": b'{"model": NaN, "n": Infinity}',
    "1e400": b'{"model": "m", "n": 1e400, "threshold": 1e400}',
    "a huge integer": b'{"model": "m", "n": ' + HUGE_INT.encode() + b"}",
    "a 70-bit integer": b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 21 + b"}",
    "a lone surrogate": b'{"model": "m", "name": "\\udfff", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "deep nesting": b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nesting under the parser limit": b'{"model": "m", "spec": '
    + b"[" * 1000
    + b"]" * 1000
    + b', "entries": '
    + b"[" * 1000
    + b"]" * 1000
    + b', "messages": [{"role": "user", "content": "hi", "x": '
    + b"[" * 1000
    + b"]" * 1000
    + b"}]}",
    "wrong types everywhere": json.dumps(
        {
            k: {"x": [1]}
            for k in (
                "model",
                "messages",
                "n",
                "slug",
                "kind",
                "spec",
                "name",
                "dataset",
                "rows",
                "entries",
                "log_ids",
                "metadata",
                "log_id",
                "thread",
                "criterion_id",
                "output",
            )
        }
    ).encode(),
}
HOSTILE_HEADERS = {
    "op-criteria": ['["rm", ', "[" * 100_000, '["\\ud800"]', '[{"id": "rm", "weight": 1e400}]', "\xff\xfe", ""],
    "op-best-only": ["\x00", "TRUE "],
    "content-type": ["application/x-ndjson", "application/x-ndjson; charset=latin-1", "text/jsonl", "\xff"],
    "content-length": ["\xb2", "-1", "99999999999999999999999"],
    "authorization": ["Bearer \xff", "Bearer", "Basic Og==", "bearer  "],
}
# Raw query strings, already percent-encoded (%ED%A0%80 is a surrogate's would-be UTF-8: invalid).
HOSTILE_QUERIES = [
    "limit=%C2%B2",  # '²': str.isdigit() says yes, int() says no
    "limit=%D9%A3",  # an Arabic-Indic digit: int() reads it
    "limit=-1",
    "limit=0",
    "limit=1e3",
    "limit=99999999999999999999",
    "cursor=%00",
    "cursor=%ED%A0%80",
    "cursor=%%%",
    "cursor=Zm9vfGJhcg%3D%3D",
    "cursor=" + "%3D" * 3000,
    "since=2020-13-45",
    "since=%ED%A0%80",
    "since=9999-12-31T23:59:59%2B23:59",
    "before=yesterday",
    "split=train",
    "split=%00",
    "skip_invalid=maybe",
    "metadata.app=%ED%A0%80",
    "metadata.=x",
    "model=%00",
    "limit=1&limit=2&cursor=a&cursor=b",
]
PATH_VALUES = [
    "..",
    "%2e%2e",
    "%00",
    "%ED%A0%80",
    "%C2%B2",
    "a" * 5000,
    "ds_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "rm@v99999999999",
    "rm@v1",
    "job_%FF",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-models")  # no reward model: scoring paths answer 404/400, never 5xx


@pytest.fixture
async def gw(tmp_path: Path, models_dir: Path) -> AsyncIterator[Gateway]:
    from gateway.config import GatewaySettings

    settings = GatewaySettings(upstream_models=("fake:ok",), jobs_dir=str(tmp_path / "jobs"), training_worker=False)
    async with fake_upstream() as upstream, running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        yield gw


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(path, method.upper()) for path, item in spec["paths"].items() for method in item]


def concrete(path: str, value: str) -> str:
    return "/".join(value if part.startswith("{") else part for part in path.split("/"))


async def send(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 500, (method, path, kwargs.get("headers"), response.status_code, response.text)
    return response


@pytest.mark.anyio
async def test_a_superscript_digit_limit_is_a_400(gw: Gateway) -> None:
    await make_dataset(gw, "d")
    for url in ("/v1/logs", "/v1/datasets/d/entries"):
        await send(gw.client, "GET", url + "?limit=%C2%B2")


async def make_dataset(gw: Gateway, name: str) -> None:
    assert (await gw.client.post("/v1/datasets", json={"name": name})).status_code == 201


@pytest.mark.anyio
async def test_no_hostile_body_header_or_query_gets_a_5xx_from_the_gateway(gw: Gateway) -> None:
    await make_dataset(gw, "d")
    chat = json.dumps({"model": "m", "messages": MESSAGES}).encode()
    for path, method in operations(gateway_spec()):
        url = concrete(path, "d")
        for body in HOSTILE_BODIES.values():
            await send(gw.client, method, url, content=body, headers={"content-type": "application/json"})
            await send(gw.client, method, url, content=body, headers={"content-type": "application/x-ndjson"})
        for header, values in HOSTILE_HEADERS.items():
            for value in values:
                raw = value.encode("latin-1")  # as a server hands them over: bytes, decoded as latin-1
                await send(gw.client, method, url, content=chat, headers={header: raw})
        for query in HOSTILE_QUERIES:
            await send(gw.client, method, f"{url}?{query}")
        for value in PATH_VALUES:
            await send(gw.client, method, concrete(path, value))


@pytest.mark.anyio
async def test_no_hostile_body_header_or_query_gets_a_5xx_from_the_reward_server(gw: Gateway) -> None:
    for path, method in operations(reward_server_spec()):
        for body in HOSTILE_BODIES.values():
            await send(gw.reward, method, path, content=body)
        for value in (b"-1", b"99999999999999999999999", b"\xb2"):  # b"\xb2": '²' decoded as latin-1
            await send(gw.reward, method, path, content=b"{}", headers={"content-length": value})


@pytest.mark.anyio
async def test_a_superscript_content_length_is_a_400_at_the_reward_server(gw: Gateway) -> None:
    await send(gw.reward, "POST", "/v1/score", content=b"{}", headers={"content-length": b"\xb2"})
