"""Distilling a criterion into a reward model (`rewardgate distill`, POST /v1/reward-models/distill): the stored
candidates that an LLM judge (or any criterion scoring 0..1, a rule included) scored, in best-of-N logs and in
`rewardgate eval logs` runs, become rated responses whose reward is the judge's normalized score; a held-back slice
of prompts becomes TEST; the trainer (a subprocess, through service.training) fits a pointwise reward model to the
rest; and the report sets the model beside the judge: agreement on the held-back slice (Spearman, and the PASS/FAIL
accuracy at the judge's threshold, from the model card's TEST metrics) and the cost and latency per candidate of
each. Must not import starlette, torch or trainer.

Decisions: only results of the judge version being distilled count (`JUDGE` = its newest version; results of other
versions are skipped and counted). The held-back slice is whole prompts (every candidate of a prompt on one side),
the `test_fraction` of distinct prompts with the smallest hash, at least one; fewer than two prompts is an error.
The reward model's latency is measured through the criterion the gateway serves (the reward server, embedded or
remote): the held-back candidates scored one prompt's candidates per call, as best-of-N sends them, after one
warm-up call that loads the model; its provider cost is 0 (it runs on the gateway's own hardware). The judge's is
measured by judging `judge_sample` held-back candidates again, one call each, its cost from the tokens the provider
reported and LiteLLM's bundled price map (null for a model the map does not price).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import GatewaySettings
from gateway.criteria import CriteriaError, Criterion
from gateway.errors import InvalidRequestError
from gateway.formats import Message, PairError, RatedResponse, parse_rated
from gateway.service.criteria import CriteriaService
from gateway.service.datasets import DatasetService, storable
from gateway.service.jobs import JobService
from gateway.service.training import CARD_FILE, JobRunner, JobSpec, JobState, JobUpdate
from gateway.store import MAX_PAGE, JobRecord, LogQuery, LogRecord, LogStore, NewEntry
from gateway.upstream.prices import cost_usd

DEFAULT_TEST_FRACTION = 0.2
DEFAULT_LIMIT = 1000


@dataclass(frozen=True)
class JudgedRows:
    """The rated responses made from one judge's stored results, split TRAIN / held-back TEST by prompt."""

    judge: str  # slug@vN
    rows: tuple[RatedResponse, ...]
    logs: int  # logs read
    skipped: Mapping[str, int]  # candidates left out, by reason

    def split(self, name: str) -> list[RatedResponse]:
        return [r for r in self.rows if r.split == name]

    def to_json(self) -> dict[str, Any]:
        test = self.split("TEST")
        return {"judge": self.judge, "logs": self.logs, "rows": len(self.rows), "train": len(self.rows) - len(test),
                "test": len(test), "skipped": dict(self.skipped)}  # fmt: skip

    def jsonl(self) -> str:
        return "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in self.rows)


def _prompt_key(row: RatedResponse) -> str:
    canonical = json.dumps([m.to_dict() for m in row.prompt], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def hold_back(rows: Sequence[RatedResponse], fraction: float) -> list[RatedResponse]:
    """Every row with its split: the `fraction` of distinct prompts (at least one) with the smallest prompt hash are
    TEST, the rest TRAIN. Deterministic: the same rows give the same slice."""
    keys = sorted({_prompt_key(r) for r in rows})
    if len(keys) < 2:
        raise InvalidRequestError(
            f"{len(keys)} distinct prompt(s) among the judged candidates: distilling needs at least two, one to hold "
            "back for the comparison with the judge",
            param="criterion",
            code="not_enough_data",
        )
    held = set(keys[: max(1, min(len(keys) - 1, round(fraction * len(keys))))])
    return [dataclasses.replace(r, split="TEST" if _prompt_key(r) in held else "TRAIN") for r in rows]


def judged_candidates(log: LogRecord, judge: Criterion, skipped: Counter[str]) -> list[RatedResponse]:
    """The log's produced candidates that `judge` (its slug at its version) scored, as rated responses."""
    messages = log.request.get("messages")
    out = []
    for candidate in log.candidates:
        if candidate.status != "ok" or candidate.message is None:
            continue
        result = candidate.criteria_results.get(judge.slug)
        if not isinstance(result, dict):
            skipped[f"not scored by {judge.slug}"] += 1
        elif result.get("version") != judge.version:
            skipped[f"scored by another version ({result.get('version')})"] += 1
        elif result.get("status") != "success":
            skipped["the judge errored"] += 1
        elif not isinstance(score := result.get("score"), int | float) or not 0.0 <= score <= 1.0:
            skipped["a score outside 0..1"] += 1
        else:
            record: dict[str, Any] = {
                "messages": [*messages, candidate.message] if isinstance(messages, list) else None,
                "reward": float(score),
                "split": "TRAIN",  # hold_back decides
                "metadata": {"log_id": log.id, "candidate": candidate.index, "judge": f"{judge.slug}@{judge.version}"},
            }
            record |= {key: log.request[key] for key in ("tools", "tool_choice") if log.request.get(key) is not None}
            try:
                out.append(storable(parse_rated(record)))
            except PairError:
                skipped["not a valid rated response"] += 1
    return out


async def judged_rows(
    store: LogStore, judge: Criterion, query: LogQuery, *, limit: int, test_fraction: float = DEFAULT_TEST_FRACTION
) -> JudgedRows:
    """The rated responses of up to `limit` stored logs (newest first) matching `query`."""
    page = await store.list_logs(query, limit=min(limit, MAX_PAGE))
    logs = list(page.logs)
    while page.next_cursor is not None and len(logs) < limit:
        page = await store.list_logs(query, limit=min(limit - len(logs), MAX_PAGE), cursor=page.next_cursor)
        logs.extend(page.logs)
    skipped: Counter[str] = Counter()
    rows = [row for log in logs for row in judged_candidates(log, judge, skipped)]
    if not rows:
        why = "; ".join(f"{reason}: {count}" for reason, count in skipped.most_common()) or "no candidates"
        raise InvalidRequestError(
            f"no stored candidate was scored by {judge.slug}@{judge.version} ({len(logs)} log(s) read; {why})",
            param="criterion",
            code="not_enough_data",
        )
    return JudgedRows(f"{judge.slug}@{judge.version}", tuple(hold_back(rows, test_fraction)), len(logs), skipped)


# ---------------------------------------------------------------- cost and latency


def _groups(rows: Sequence[RatedResponse]) -> list[tuple[tuple[Message, ...], list[Message]]]:
    groups: dict[str, tuple[tuple[Message, ...], list[Message]]] = {}
    for row in rows:
        groups.setdefault(_prompt_key(row), (row.prompt, []))[1].append(row.response)
    return list(groups.values())


async def reward_model_cost(
    model: Criterion, rows: Sequence[RatedResponse], clock: Callable[[], float] = time.perf_counter
) -> dict[str, Any]:
    """Latency per candidate of the served reward model: one call per prompt with all its candidates (as best-of-N
    sends them), after one warm-up call (which loads the model)."""
    groups = _groups(rows)
    if not groups:
        return {"candidates": 0, "latency_ms_per_candidate": None, "usd_per_candidate": 0.0}
    await model.score(*groups[0])
    start = clock()
    results = [r for prompt, candidates in groups for r in await model.score(prompt, candidates)]
    elapsed = clock() - start
    return {
        "candidates": len(results),
        "errors": sum(1 for r in results if not r.ok),
        "latency_ms_per_candidate": round(1000 * elapsed / len(results), 3),
        "usd_per_candidate": 0.0,
    }


async def judge_cost(
    judge: Criterion,
    model: str | None,
    rows: Sequence[RatedResponse],
    sample: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The judge on `sample` candidates again, one call each: latency, tokens and (with a priced `model`) dollars
    per candidate. `model` is the judge's provider model (its spec's `model`), None for a kind that calls none."""
    if sample <= 0 or not rows:
        return {"model": model, "candidates": 0, "latency_ms_per_candidate": None, "usd_per_candidate": None}
    latencies: list[float] = []
    prompt_tokens = completion_tokens = errors = 0
    for row in rows[:sample]:
        start = clock()
        (result,) = await judge.score(row.prompt, [row.response])
        latencies.append(clock() - start)
        errors += not result.ok
        usage = result.usage or {}
        prompt_tokens += int(usage.get("prompt_tokens", 0))
        completion_tokens += int(usage.get("completion_tokens", 0))
    n = len(latencies)
    usd = cost_usd(model, prompt_tokens, completion_tokens) if model else 0.0
    return {
        "model": model,
        "candidates": n,
        "errors": errors,
        "latency_ms_per_candidate": round(1000 * sum(latencies) / n, 3),
        "tokens_per_candidate": {"prompt": prompt_tokens / n, "completion": completion_tokens / n},
        "usd_per_candidate": None if usd is None else usd / n,
    }


def agreement(card: Mapping[str, Any]) -> dict[str, Any]:
    """The held-back comparison from the model card's TEST metrics (the trainer scored the TEST split)."""
    test = card.get("metrics", {}).get("test", {})
    keys = ("count", "spearman", "pearson", "pass_threshold", "pass_accuracy", "auc", "rmse", "length_spearman")
    return {k: test.get(k) for k in keys}


# ---------------------------------------------------------------- the flows


OnProgress = Callable[[JobUpdate], Awaitable[None]]


class DistillService:
    """Rows from a judge's stored results, and a reward model trained on them (the CLI runs the trainer here and
    measures; the API stores the rows as a dataset and creates a training job)."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        store: LogStore,
        criteria: CriteriaService,
        datasets: DatasetService,
        jobs: JobService,
    ) -> None:
        self._settings = settings
        self._store = store
        self._criteria = criteria
        self._datasets = datasets
        self._jobs = jobs

    async def judge(self, criterion_id: str) -> tuple[Criterion, str | None]:
        """The criterion to distil and its provider model (None for a kind that calls none). A reward model is
        refused: it is a reward model already."""
        judge = await self._criteria.resolve_id(criterion_id, param="criterion")
        if judge.kind == "reward_model":
            raise InvalidRequestError(
                f"{criterion_id} is a reward model already: distil an LLM judge (or a rule)", param="criterion"
            )
        definition = await self._criteria.get(f"{judge.slug}@{judge.version}")
        model = definition.spec.get("model")
        return judge, model if isinstance(model, str) else None

    async def rows(
        self,
        judge: Criterion,
        query: LogQuery,
        *,
        limit: int = DEFAULT_LIMIT,
        test_fraction: float = DEFAULT_TEST_FRACTION,
    ) -> JudgedRows:
        if not 0 < test_fraction < 1:
            raise InvalidRequestError("test_fraction: a number between 0 and 1", param="test_fraction")
        if limit < 1:
            raise InvalidRequestError("limit: at least 1", param="limit")
        return await judged_rows(self._store, judge, query, limit=limit, test_fraction=test_fraction)

    async def distil(
        self,
        criterion_id: str,
        slug: str,
        query: LogQuery,
        *,
        limit: int = DEFAULT_LIMIT,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        threshold: float = 0.5,
        judge_sample: int = 8,
        base_model: str = "",
        epochs: int = 0,
        out: str | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> dict[str, Any]:
        """The whole flow of `rewardgate distill`, training here (a trainer subprocess, not the job queue): rows ->
        `out` (default JOBS_DIR/distill/SLUG-<time>.jsonl) -> trainer -> the model served at once -> the report
        (`state` DEPLOYED, or ERROR with the trainer's `error`)."""
        judge, judge_model = await self.judge(criterion_id)
        rows = await self.rows(judge, query, limit=limit, test_fraction=test_fraction)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        path = Path(out or Path(self._settings.jobs_dir) / "distill" / f"{slug}-{stamp}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rows.jsonl(), encoding="utf-8")
        log(f"{json.dumps(rows.to_json())} -> {path}")
        trainer_args = (*self._settings.trainer_args, f"--pass-threshold={threshold}")
        trainer_args += (f"--epochs={epochs}",) if epochs else ()

        shown: set[int] = set()

        async def progress(update: JobUpdate) -> None:
            if (p := update.progress) is not None and p.step not in shown:
                shown.add(p.step)
                log(f"training: step {p.step}/{p.total or '?'}, loss {p.loss}")

        done = await train_rows(path, slug, self._settings.models_dir, base_model=base_model,
                                trainer_args=trainer_args, on_progress=progress)  # fmt: skip
        report: dict[str, Any] = {
            "state": str(done.state),
            "criterion": {"slug": judge.slug, "version": judge.version, "kind": judge.kind},
            "data": {"path": str(path), **rows.to_json()},
        }
        if done.state != JobState.DEPLOYED or done.directory is None:
            return report | {"error": done.error}
        card = json.loads((done.directory / CARD_FILE).read_text(encoding="utf-8"))
        name = f"{slug}@{done.version}"
        model = await self._served(name)
        held_back = rows.split("TEST")
        return report | {
            "model": name,
            "directory": str(done.directory),
            "objective": card.get("objective"),
            "agreement": agreement(card),
            "cost_and_latency": {
                "judge": await judge_cost(judge, judge_model, held_back, judge_sample),
                "reward_model": await reward_model_cost(model, held_back),
            },
        }

    async def _served(self, criterion_id: str, wait_s: float = 10.0) -> Criterion:
        """The new version as a criterion, once the reward-model listing (cached for a moment) shows it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await self._criteria.resolve_id(criterion_id)
            except CriteriaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def create(self, body: Mapping[str, Any]) -> JobRecord:
        """POST /v1/reward-models/distill `{criterion, slug, metadata?, model?, limit?, test_fraction?, dataset?,
        base_model?, hyperparameters?}`: the rows as a new dataset (`dataset`, default `<slug>-distill`), then a
        training job on it, returned. Its TEST metrics are the agreement with the judge on the held-back slice."""
        allowed = {"criterion", "slug", "metadata", "model", "limit", "test_fraction", "dataset", "base_model",
                   "hyperparameters"}  # fmt: skip
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise InvalidRequestError(f"unknown field {unknown[0]!r}", param=unknown[0])
        if not isinstance(body.get("criterion"), str) or not isinstance(body.get("slug"), str):
            raise InvalidRequestError("criterion and slug: required strings", param="criterion")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise InvalidRequestError("metadata: an object of strings", param="metadata")
        model, limit, fraction = body.get("model"), body.get("limit", DEFAULT_LIMIT), body.get("test_fraction")
        if model is not None and not isinstance(model, str):
            raise InvalidRequestError("model: a string", param="model")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidRequestError("limit: an integer", param="limit")
        fraction = DEFAULT_TEST_FRACTION if fraction is None else fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
            raise InvalidRequestError("test_fraction: a number between 0 and 1", param="test_fraction")
        judge, _ = await self.judge(body["criterion"])
        rows = await self.rows(judge, LogQuery(metadata, model), limit=limit, test_fraction=float(fraction))
        name = body.get("dataset") or f"{body['slug']}-distill"
        dataset = await self._datasets.create(name=name, description=f"distilled from {rows.judge}")
        await self._store.add_entries(dataset.id, [NewEntry(r.to_json(), "upload") for r in rows.rows])
        job = {"dataset": dataset.id, "slug": body["slug"]}
        job |= {k: body[k] for k in ("base_model", "hyperparameters") if k in body}
        return await self._jobs.create(job)


async def train_rows(
    data_path: Path,
    slug: str,
    models_dir: str,
    *,
    base_model: str = "",
    trainer_args: Sequence[str] = (),
    on_progress: OnProgress | None = None,
) -> JobUpdate:
    """`rewardgate-train train` on the rows in a subprocess (service.training's runner): the final update, DEPLOYED
    with the version and directory, or ERROR with the trainer's message."""
    finished: asyncio.Future[JobUpdate] = asyncio.get_running_loop().create_future()

    async def on_update(job_id: str, update: JobUpdate) -> None:
        if on_progress is not None:
            await on_progress(update)
        if update.state in (JobState.DEPLOYED, JobState.ERROR) and not finished.done():
            finished.set_result(update)

    async with JobRunner(models_dir, on_update, trainer_args=trainer_args) as runner:
        await runner.submit(JobSpec(f"distill-{slug}", slug, str(data_path), base_model))
        return await finished
