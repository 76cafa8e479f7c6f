"""`rewardgate eval`: offline evaluation of any criterion (reward model, LLM judge, rule) from the command line.

    rewardgate eval pairs  --criterion ID --data PAIRS.jsonl [--split all|TRAIN|TEST] [--skip-invalid]
    rewardgate eval replay --criterion ID --data ROWS.jsonl [--max-candidates K] [--labels-field labels] [--out PICKS]
    rewardgate eval logs   --criterion ID [--metadata K=V ...] [--model M] [--limit N]

Each prints one JSON report on stdout. The criterion is resolved exactly as the gateway resolves op-criteria
(`slug` or `slug@vN`), with the gateway's settings (flags, REWARDGATE_* environment, --config): the reward server
embedded from --models-dir or at --reward-server-url, definitions from --store-url, judges through the providers.
`logs` writes each candidate's result back into its stored log (criteria_results[slug], marked "offline").
Exit status: 0, 1 when the input has bad lines (reported, unless --skip-invalid), 2 for a bad criterion id.
Must not import starlette, torch or trainer.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from gateway.criteria import CriteriaError
from gateway.criteria_service import CriteriaService
from gateway.evaluation import pairwise_accuracy, parse_replay_rows, replay, replay_report
from gateway.formats import DatasetError, load_pairs
from gateway.store import LogQuery

Backend = Callable[[], AbstractAsyncContextManager[CriteriaService]]


def add_eval_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a criterion offline (pairs, best-of-N replay, stored logs)")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)
    pairs = kinds.add_parser("pairs", help="pairwise accuracy on a preference JSONL, beside the length baseline")
    pairs.add_argument("--data", required=True, help="preference JSONL (contract 1; .gz works)")
    pairs.add_argument("--split", default="all", choices=("all", "TRAIN", "TEST"))
    pairs.add_argument("--skip-invalid", action="store_true", help="evaluate the valid lines of a file with bad ones")
    rows = kinds.add_parser("replay", help="best-of-N replay over stored candidates, beside random/longest/oracle")
    rows.add_argument("--data", required=True, help="JSONL rows: messages, candidates, optional labels (.gz works)")
    rows.add_argument("--max-candidates", type=int, default=0, help="consider the first K candidates (0 = all)")
    rows.add_argument("--labels-field", default="labels", help="the per-candidate label list of each row")
    rows.add_argument("--out", help="write one JSON line per row: id and pick")
    rows.add_argument("--skip-invalid", action="store_true")
    logs = kinds.add_parser("logs", help="score stored logs' candidates and write the results into the store")
    logs.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="filter; repeatable")
    logs.add_argument("--model", help="filter by the requested model")
    logs.add_argument("--limit", type=int, default=1000, help="at most this many logs, newest first")
    for command in (pairs, rows, logs):
        command.add_argument("--criterion", required=True, help="'slug' or 'slug@vN' of any kind")
        command.add_argument("--concurrency", type=int, default=8, help="scoring calls in flight")
        settings_flags(command)


async def run_eval(args: dict[str, Any], backend: Backend) -> int:
    try:
        async with backend() as service:
            criterion = await service.resolve_id(args["criterion"])
            if args["eval_command"] == "pairs":
                return await _pairs(args, service, criterion)
            if args["eval_command"] == "replay":
                return await _replay(args, criterion)
            return await _logs(args, service, criterion)
    except CriteriaError as exc:
        print(f"rewardgate eval: {exc}", file=sys.stderr)
        return 2


def _print(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2))


async def _pairs(args: dict[str, Any], service: CriteriaService, criterion: Any) -> int:
    try:
        loaded = load_pairs(args["data"], skip_invalid=args["skip_invalid"])
    except DatasetError as exc:
        print("\n".join(str(e) for e in exc.errors), file=sys.stderr)
        print(f"rewardgate eval: {exc} (--skip-invalid evaluates the rest)", file=sys.stderr)
        return 1
    pairs = loaded.pairs if args["split"] == "all" else loaded.split(args["split"])
    report = await pairwise_accuracy(criterion, pairs, concurrency=args["concurrency"])
    _print({"criterion": _name(criterion), "data": args["data"], "split": args["split"],
            "skipped_lines": len(loaded.skipped), **report.to_json()})  # fmt: skip
    return 0


async def _replay(args: dict[str, Any], criterion: Any) -> int:
    path = Path(args["data"])
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        rows, errors = parse_replay_rows(fh, labels_field=args["labels_field"], max_candidates=args["max_candidates"])
    if errors and not args["skip_invalid"]:
        print("\n".join(str(e) for e in errors), file=sys.stderr)
        return 1
    picks = await replay(criterion, rows, concurrency=args["concurrency"])
    if args.get("out"):
        with open(args["out"], "w", encoding="utf-8") as out:
            out.writelines(json.dumps({"id": r.id, "pick": p}) + "\n" for r, p in zip(rows, picks, strict=True))
    _print({"criterion": _name(criterion), "data": args["data"], "skipped_lines": len(errors),
            **replay_report(rows, picks)})  # fmt: skip
    return 0


async def _logs(args: dict[str, Any], service: CriteriaService, criterion: Any) -> int:
    metadata = dict(item.partition("=")[::2] for item in args["metadata"])
    report = await service.score_logs(
        criterion,
        LogQuery(metadata=metadata, model=args["model"]),
        limit=args["limit"],
        concurrency=args["concurrency"],
    )
    _print({"criterion": _name(criterion), **report})
    return 0


def _name(criterion: Any) -> dict[str, Any]:
    return {"slug": criterion.slug, "version": criterion.version, "kind": criterion.kind}
