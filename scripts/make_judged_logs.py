"""Stored best-of-N logs made from the bundled preference sample, and a stand-in judge, for the README's "distil a
judge" example: every prompt of trainer/samples/support_pairs.jsonl becomes one log whose candidates are its distinct
answers (metadata source=sample), in the gateway's store; and the rule criterion `points-to-a-page` (PASS when the
answer names a page such as "Account > Orders") is defined there, a judge that needs no provider key.

    python scripts/make_judged_logs.py --store-url runs/gw.db
    rewardgate eval logs --criterion points-to-a-page --metadata source=sample --store-url runs/gw.db \
        --models-dir models
    rewardgate distill --criterion points-to-a-page --slug page-rm --metadata source=sample --store-url runs/gw.db \\
        --models-dir models

With a provider key, define an LLM judge instead (POST /v1/criteria, kind llm_judge) and pass its slug: the same
commands distil it. Running the script again adds the logs again (and keeps the criterion).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.store import CandidateRecord, Latencies, open_store

SAMPLE = Path(__file__).resolve().parents[1] / "trainer" / "samples" / "support_pairs.jsonl"
RULE = {"type": "regex", "pattern": ">", "must": "match"}


def grouped(sample: Path = SAMPLE) -> dict[str, list[dict[str, str]]]:
    """Prompt (as JSON) -> its distinct answers, in the file's order."""
    answers: dict[str, list[dict[str, str]]] = {}
    for line in sample.read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        found = answers.setdefault(json.dumps(pair["messages"][:-1]), [])
        for answer in (pair["messages"][-1], pair["rejected_message"]):
            if answer not in found:
                found.append(answer)
    return answers


async def fill(store_url: str) -> tuple[int, int]:
    store = await open_store(store_url)
    try:
        if not await store.criterion_versions("points-to-a-page"):  # else defined by an earlier run
            await store.create_criterion(
                slug="points-to-a-page", kind="rule", spec=RULE, description="PASS when the answer names a page (A > B)"
            )
        logs = candidates = 0
        for prompt, answers in grouped().items():
            records = [CandidateRecord(i, answer) for i, answer in enumerate(answers)]
            request = {"model": "sample", "messages": json.loads(prompt)}
            await store.create_log(
                model="sample",
                request=request,
                candidates=records,
                latencies=Latencies(),
                metadata={"source": "sample"},
            )
            logs, candidates = logs + 1, candidates + len(records)
        return logs, candidates
    finally:
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-url", required=True, help="the gateway's store: a SQLite path or a postgresql:// URL")
    args = parser.parse_args(argv)
    if "://" not in args.store_url:
        Path(args.store_url).parent.mkdir(parents=True, exist_ok=True)
    logs, candidates = asyncio.run(fill(args.store_url))
    print(f"{args.store_url}: {logs} logs, {candidates} candidates (metadata source=sample); judge: points-to-a-page",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
