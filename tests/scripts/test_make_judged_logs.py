"""scripts/make_judged_logs.py: the README's "distil a judge" example data: the sample's prompts as stored logs and a
rule criterion that needs no provider key."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

from gateway.store import LogQuery, open_store

ROOT = Path(__file__).resolve().parents[2]


def test_the_sample_becomes_160_logs_and_the_rule_is_defined_once(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_judged_logs", ROOT / "scripts" / "make_judged_logs.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    url = str(tmp_path / "runs" / "gw.db")
    assert script.main(["--store-url", url]) == 0
    assert script.main(["--store-url", url]) == 0  # again: more logs, the same criterion

    async def read() -> tuple[int, int, int]:
        store = await open_store(url)
        try:
            page = await store.list_logs(LogQuery({"source": "sample"}), limit=1000)
            versions = await store.criterion_versions("points-to-a-page")
            return len(page.logs), sum(len(log.candidates) for log in page.logs), len(versions)
        finally:
            await store.aclose()

    assert asyncio.run(read()) == (320, 2 * 703, 1)
