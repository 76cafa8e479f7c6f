"""The REAL OpenPipe SDK (openpipe==5.0.0 in a venv of its own: scripts/install_openpipe_sdk.sh) against the gateway
over HTTP, each program run with that venv's python in a subprocess:

- openpipe_sdk_scenario.py: every call the issue lists (datasets, entries, a reward model trained through
  `create_model(openpipeReward)` on a tiny base and polled until DEPLOYED, best-of-N through the SDK's OpenAI wrapper
  with that model and an LLM judge, the response cache, report then GET /v1/logs, update_log_metadata and
  update_log_tags, get_criterion_judgement, ApiError on bad calls, delete);
- the SDK wheel's own tests (openpipe/test/) that apply: criteria, judgement, reporting, log metadata, datasets,
  models, cache, with the slugs and ids they name created first (README, "OpenPipe API", lists them and why the
  others do not apply);
- (slow) the README's program, scripts/openpipe_quickstart.py, against a `rewardgate serve` process with only
  OPENPIPE_BASE_URL and OPENPIPE_API_KEY set for it: a real MiniLM reward model is trained.

The gateway's upstream is the fake OpenAI-compatible server (tests/gateway/fakes.py), registered as the providers
openai and openpipe, so `openai:...` and OpenPipe-hosted `openpipe:...` names both reach it. Skips, saying why, when
the SDK's venv is absent (.openpipe-venv/ in the repository root, or $REWARDGATE_OPENPIPE_PYTHON)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.cli import build_app
from gateway.config import GatewaySettings
from gateway.upstream.providers import ProviderConfig
from gateway.upstream.router import RetryPolicy, Router
from tests import tiny
from tests.gateway.fakes import KEY, FakeUpstream, serve_process, until
from tests.tiny import save_reward_model

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
QUICKSTART = ROOT / "scripts" / "openpipe_quickstart.py"  # the README's program
GATEWAY_KEY = "opk-gateway-key-sdk"
FAST = ("--threads=1", "--precision=fp32", "--log-every=1")
WHEEL_DIRS = ("criteria", "reporting", "update_logged_call_tags", "platform", "cache")
# Wheel tests that do not apply, and why (the README's table says the same).
NOT_APPLYING = {
    "test_sync_report_anthropic": "calls Anthropic's API itself, then /report-anthropic (not implemented)",
    "test_async_report_anthropic": "calls Anthropic's API itself, then /report-anthropic (not implemented)",
    "test_add_entries_to_dataset": "uploads SFT rows (no rejected_message): rewardgate datasets hold preference pairs",
}


def sdk_python() -> Path | None:
    configured = os.environ.get("REWARDGATE_OPENPIPE_PYTHON")
    python = Path(configured) if configured else ROOT / ".openpipe-venv" / "bin" / "python"
    return python if python.is_file() else None


@pytest.fixture
def sdk() -> Path:
    python = sdk_python()
    if python is None:
        pytest.skip("the OpenPipe SDK's venv is absent: bash scripts/install_openpipe_sdk.sh (CI's .ci/run does)")
    return python


def sdk_env(base_url: str, **extra: str) -> dict[str, str]:
    """Only what a user of the SDK sets (and PATH): none of this venv's PYTHONPATH or keys."""
    return {"PATH": os.environ.get("PATH", ""), "OPENPIPE_BASE_URL": base_url, "OPENPIPE_API_KEY": GATEWAY_KEY,
            **extra}  # fmt: skip


async def run(python: Path, *args: str, env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(python), *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        output, _ = await proc.communicate()
        raise AssertionError(f"timed out after {timeout}s:\n{output.decode(errors='replace')[-4000:]}") from None
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


@asynccontextmanager
async def gateway_on_http(tmp_path: Path, upstream: FakeUpstream, **changes: Any) -> AsyncIterator[str]:
    """The gateway as `rewardgate serve` wires it, behind uvicorn on a free loopback port, with the fake upstream as
    the providers fake (LLM judges: fake:judge), openai and openpipe. Yields its /api/v1 URL."""
    settings = GatewaySettings(
        api_keys=(GATEWAY_KEY,), models_dir=str(tmp_path / "models"), jobs_dir=str(tmp_path / "jobs"),
        store_url=str(tmp_path / "gw.db"), trainer_args=FAST, device="cpu",
        base_model_dirs=(str(tmp_path),),  # the scenario's tiny base model is saved there
    ).replace(**changes)  # fmt: skip
    configs = [ProviderConfig(name, "openai", upstream.url, KEY) for name in ("fake", "openai", "openpipe")]
    router = Router.from_configs(configs, default_provider="openai", retry=RetryPolicy(attempts=1))
    app = build_app(settings, router=router)
    async with app.router.lifespan_context(app):
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve())
        try:
            await until(lambda: server.started or task.done(), 30)
            yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/api/v1"
        finally:
            server.should_exit = True
            await task


async def define_criteria(base_url: str) -> None:
    """The criteria OpenPipe's tests name: an LLM judge (highlight-format) and a rule with two versions."""
    judge = {"model": "fake:judge", "instructions": "Pass answers that mention a password."}
    rule = {"type": "length", "max_chars": 2000}
    async with httpx.AsyncClient(base_url=base_url.removesuffix("/api/v1"), headers={
            "Authorization": f"Bearer {GATEWAY_KEY}"}) as client:  # fmt: skip
        for body in ({"slug": "highlight-format", "kind": "llm_judge", "spec": judge},
                     {"slug": "juicebox-relevance", "kind": "rule", "spec": rule}):  # fmt: skip
            assert (await client.post("/v1/criteria", json=body)).status_code == 201
        added = await client.post("/v1/criteria/juicebox-relevance/versions", json={"spec": {**rule, "min_chars": 1}})
        assert added.status_code == 201


async def test_the_sdk_scenario(sdk: Path, tmp_path: Path, upstream: FakeUpstream) -> None:
    base = tiny.save_base(tmp_path / "base", "llama")
    async with gateway_on_http(tmp_path, upstream) as url:
        await define_criteria(url)
        env = sdk_env(url, SCENARIO_BASE_MODEL=str(base), SCENARIO_UPSTREAM=upstream.url)
        code, output = await run(sdk, str(HERE / "openpipe_sdk_scenario.py"), env=env, cwd=tmp_path, timeout=400)
    assert code == 0, output[-6000:]
    steps = [json.loads(line)["step"] for line in output.splitlines() if line.startswith('{"step"')]
    assert steps == ["trained", "best_of_n", "cache", "report", "update_metadata", "judge", "errors", "deleted"]


def wheel_results(report: Path) -> dict[str, str]:
    """{test name: passed | failed | skipped} from pytest's JUnit XML."""
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[f"{case.get('classname')}.{case.get('name')}"] = outcome
    return results


async def test_the_wheels_own_tests_that_apply(sdk: Path, tmp_path: Path, upstream: FakeUpstream) -> None:
    save_reward_model(tmp_path / "models" / "reward-v1" / "v1", "reward-v1", "v1", seed=0)
    code, where = await run(sdk, "-c", "import openpipe, os; print(os.path.dirname(openpipe.__file__))",
                            env=sdk_env(""), cwd=tmp_path, timeout=60)  # fmt: skip
    assert code == 0, where
    tests = Path(where.strip()) / "test"
    ini = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    (tmp_path / "pytest.ini").write_text(ini)
    deselect = " and ".join(f"not {name}" for name in NOT_APPLYING)
    async with gateway_on_http(tmp_path, upstream, training_worker=False) as url:
        await define_criteria(url)
        env = sdk_env(url, OPENPIPE_BASE_URL_LOCAL=url, OPENPIPE_API_KEY_LOCAL=GATEWAY_KEY,
                      OPENAI_BASE_URL=upstream.url, OPENAI_API_KEY="unused", ANTHROPIC_API_KEY="unused")  # fmt: skip
        args = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-c", str(tmp_path / "pytest.ini"), "-k", deselect,
                f"--junitxml={tmp_path / 'wheel.xml'}", *(str(tests / d) for d in WHEEL_DIRS)]  # fmt: skip
        code, output = await run(sdk, *args, env=env, cwd=tmp_path, timeout=400)
    results = wheel_results(tmp_path / "wheel.xml")
    failed = sorted(name for name, outcome in results.items() if outcome == "failed")
    assert code == 0 and not failed, f"{failed}\n{output[-8000:]}"
    print(json.dumps(results, indent=1), file=sys.stderr)  # the list the README summarises
    outcomes = Counter(results.values())
    assert outcomes == {"passed": 64, "skipped": 10}, outcomes  # skipped: the wheel's own @pytest.mark.skip


def test_the_readme_shows_the_program_ci_runs() -> None:
    assert QUICKSTART.read_text() in (ROOT / "README.md").read_text()


@pytest.mark.slow  # trains a real MiniLM reward model
async def test_the_readme_program_against_rewardgate_serve(sdk: Path, tmp_path: Path, upstream: FakeUpstream) -> None:
    """`rewardgate serve` as a user starts it (its OpenAI key and base URL reach the fake upstream); the program gets
    only OPENPIPE_BASE_URL and OPENPIPE_API_KEY."""
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.url, "REWARDGATE_API_KEYS": GATEWAY_KEY}
    args = ["--host", "127.0.0.1", "--port", "0", "--models-dir", str(tmp_path / "models"),
            "--store-url", f"sqlite:///{tmp_path / 'gw.db'}", "--jobs-dir", str(tmp_path / "jobs")]  # fmt: skip
    async with serve_process(args, env, timeout=120) as served:
        url = f"http://127.0.0.1:{served.port}/api/v1"
        code, output = await run(sdk, str(QUICKSTART), env=sdk_env(url), cwd=tmp_path, timeout=600)
    assert code == 0, output[-6000:] + served.text()[-3000:]
    scores = [float(line.split()[0]) for line in output.splitlines() if re.match(r"-?\d+(\.\d+)? ", line)]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True), output
    assert "judged:" in output and "'prompt_id': 'counting'" in output, output
