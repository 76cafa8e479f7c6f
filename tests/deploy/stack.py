"""The three rewardgate processes of deploy/docker-compose.yml, run for real on 127.0.0.1 for a real Prometheus to
scrape: a gateway and the training worker (`python -m gateway serve`, sharing one SQLite store and jobs dir as with
the SQLite overlay) and a reward server (`python -m gateway.reward_serving`), with a fake OpenAI upstream
(tests/gateway/fakes.py) in a thread; and the traffic the dashboard and the alerts are about. Nothing sleeps to wait:
`until` polls with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests import tiny
from tests.deploy.common import ROOT
from tests.gateway.fakes import MESSAGES, FakeUpstream, fake_upstream

T = TypeVar("T")

START_S = 120.0  # a process up and healthy; generous for a loaded 2-core machine
TRAIN_S = 240.0  # two tiny training jobs, one at a time, each a trainer subprocess that imports torch
FAST_TRAINER = "--threads=1,--precision=fp32,--log-every=1"


def until(check: Callable[[], T | bool | None], what: str, timeout: float) -> T:
    """Poll `check` until it returns something truthy (returned); fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)
    return result  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def healthy(self) -> bool:
        assert self.popen.poll() is None, f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}"
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """SIGTERM to its process group (the worker's trainers too), SIGKILL if it outstays 20 s."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


def _environment(changes: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REWARDGATE_", "OPENAI_"))}
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    return env | changes


def start(name: str, argv: list[str], env: dict[str, str], port: int, logs: Path) -> Process:
    log = logs / f"{name}.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            [sys.executable, *argv], cwd=logs, env=_environment(env), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return Process(name, popen, log, f"http://127.0.0.1:{port}")


@contextmanager
def upstream_thread() -> Iterator[FakeUpstream]:
    """tests/gateway/fakes.py's FakeUpstream on its own event loop in a thread, for processes to call over HTTP."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with fake_upstream() as fake:
            box.update(fake=fake, stop=asyncio.Event(), loop=asyncio.get_running_loop())
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fake-upstream", daemon=True)
    thread.start()
    assert ready.wait(30), "the fake upstream did not start"
    try:
        yield box["fake"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


@dataclass
class Stack:
    gateway: Process
    worker: Process
    reward_server: Process
    upstream: FakeUpstream
    base_model: Path
    statuses: list[int] = field(default_factory=list)  # of every traffic request, in order

    @property
    def processes(self) -> dict[str, Process]:
        """Host name in deploy/prometheus/prometheus.yml (compose's service names) -> process."""
        return {"gateway": self.gateway, "training-worker": self.worker, "reward-server": self.reward_server}


@contextmanager
def running_stack(tmp: Path) -> Iterator[Stack]:
    """The processes up and healthy; on exit every one stopped. The models dir holds `tiny-rm` (a tiny random
    reward model) and `broken-rm` (a model card without weights: its load fails, and its criterion errors)."""
    models, logs = tmp / "models", tmp / "logs"
    logs.mkdir(parents=True)
    tiny.save_reward_model(models / "tiny-rm" / "v1", slug="tiny-rm")
    broken = models / "broken-rm" / "v1"
    broken.mkdir(parents=True)
    (broken / "rewardgate.json").write_text(json.dumps({"format": 1, "slug": "broken-rm", "version": "v1"}))
    base = tiny.save_base(tmp / "base" / "llama", "llama")
    ports = {name: free_port() for name in ("gateway", "worker", "reward_server")}
    shared = {
        "REWARDGATE_HOST": "127.0.0.1",
        "REWARDGATE_STORE_URL": f"sqlite:///{tmp / 'rewardgate.db'}",
        "REWARDGATE_REWARD_SERVER_URL": f"http://127.0.0.1:{ports['reward_server']}",
        "REWARDGATE_JOBS_DIR": str(tmp / "jobs"),
        "REWARDGATE_MODELS_DIR": str(models),
        "REWARDGATE_BASE_MODEL_DIRS": str(tmp.parent),  # the tiny base, and the empty folder the failing job names
    }
    with ExitStack() as stack:
        upstream = stack.enter_context(upstream_thread())
        rm_argv = ["-m", "gateway.reward_serving", "--models-dir", str(models), "--host", "127.0.0.1",
                   "--port", str(ports["reward_server"]), "--device", "cpu", "--log-level", "warning"]  # fmt: skip
        reward_server = start("reward-server", rm_argv, {}, ports["reward_server"], logs)
        stack.callback(reward_server.stop)
        gateway_env = shared | {
            "REWARDGATE_PORT": str(ports["gateway"]),
            "REWARDGATE_TRAINING_WORKER": "false",
            "REWARDGATE_UPSTREAM_TIMEOUT_S": "20",
            "OPENAI_BASE_URL": upstream.url,
            "OPENAI_API_KEY": "sk-test-upstream",
        }
        gateway = start("gateway", ["-m", "gateway", "serve", "--log-level", "warning"], gateway_env,
                        ports["gateway"], logs)  # fmt: skip
        stack.callback(gateway.stop)
        until(gateway.healthy, "the gateway's /health", START_S)  # it creates the store before the worker opens it
        worker_env = shared | {
            "REWARDGATE_PORT": str(ports["worker"]),
            "REWARDGATE_TRAINING_WORKER": "true",
            "REWARDGATE_TRAINER_ARGS": FAST_TRAINER,
        }
        worker = start("training-worker", ["-m", "gateway", "serve", "--log-level", "warning"], worker_env,
                       ports["worker"], logs)  # fmt: skip
        stack.callback(worker.stop)
        for process in (reward_server, worker):
            until(process.healthy, f"the {process.name}'s /health", START_S)
        yield Stack(gateway, worker, reward_server, upstream, base)


def _pairs(n_train: int = 16, n_test: int = 4) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"How do I reset my password, case {i}?"},
                      {"role": "assistant", "content": "Open settings, choose security, then reset."}],
         "rejected_message": {"role": "assistant", "content": "I cannot help with that."},
         "split": "TRAIN" if i < n_train else "TEST"}
        for i in range(n_train + n_test)
    ]  # fmt: skip
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def submit_training_jobs(stack: Stack, empty_dir: Path) -> tuple[str, str]:
    """Through the gateway, like a user: a dataset, then a job that trains (DEPLOYED) and one whose base model is
    an empty directory (ERROR). The worker runs them. Returns their ids (deployed, failed)."""
    api = httpx.Client(base_url=stack.gateway.url, timeout=60)
    assert api.post("/v1/datasets", json={"name": "support"}).status_code == 201
    added = api.post("/v1/datasets/support/entries", content=_pairs(), headers={"content-type": "application/x-ndjson"})
    assert added.status_code == 200, added.text
    empty_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for slug, base in (("failing-rm", empty_dir), ("trained-rm", stack.base_model)):
        body = {"dataset": "support", "slug": slug, "base_model": str(base),
                "hyperparameters": {"batch_size": 4, "epochs": 1, "learning_rate": 1e-3}}  # fmt: skip
        created = api.post("/v1/reward-models", json=body)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    return ids[1], ids[0]


def job_state(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job as the API shows it, asked of the worker (any replica answers from the one store): polling the gateway
    would pile 200s onto the traffic whose 5xx ratio the alert test expects."""
    body: dict[str, Any] = httpx.get(f"{stack.worker.url}/v1/reward-models/{job_id}", timeout=30).json()
    return body


# One round of traffic: (what, request, the status it must get). Every round sends the same requests, so every
# labelled series the first round creates grows again in the second (a rate needs two samples that differ).
CHAT = "/v1/chat/completions"
BEST_OF_N = {"op-criteria": '["tiny-rm", "broken-rm"]'}
ROUND: list[tuple[str, dict[str, Any], int]] = [
    ("pass-through", {"method": "POST", "url": CHAT, "json": {"model": "ok", "messages": MESSAGES}}, 200),
    ("best-of-N, a broken criterion among them", {"method": "POST", "url": CHAT, "headers": BEST_OF_N,
     "json": {"model": "ok", "messages": MESSAGES, "n": 3}}, 200),
    ("pass-through, failing upstream", {"method": "POST", "url": CHAT,
     "json": {"model": "always-500", "messages": MESSAGES}}, 500),
    ("best-of-N, every candidate fails upstream", {"method": "POST", "url": CHAT, "headers": {"op-criteria":
     '["tiny-rm"]'}, "json": {"model": "always-500", "messages": MESSAGES, "n": 14}}, 500),
    ("a bad request", {"method": "POST", "url": CHAT, "headers": BEST_OF_N,
     "json": {"model": "ok", "messages": MESSAGES, "n": 0}}, 400),
    ("the logs", {"method": "GET", "url": "/v1/logs"}, 200),
    # the response cache: a write, a hit of what it wrote, a miss (each grows again every round)
    ("op-cache, written", {"method": "POST", "url": CHAT, "headers": {"op-cache": "writeOnly"},
     "json": {"model": "ok", "messages": MESSAGES, "seed": 1}}, 200),
    ("op-cache, a hit", {"method": "POST", "url": CHAT, "headers": {"op-cache": "readOnly"},
     "json": {"model": "ok", "messages": MESSAGES, "seed": 1}}, 200),
    ("op-cache, a miss", {"method": "POST", "url": CHAT, "headers": {"op-cache": "readOnly"},
     "json": {"model": "ok", "messages": MESSAGES, "seed": 2}}, 200),
    ("op-bon, early rejection", {"method": "POST", "url": CHAT, "headers": {"op-criteria": '["tiny-rm"]',
     "op-bon": '{"strategy": "early_rejection", "checkpoints": [1]}'}, "json": {"model": "slow-drip",
     "messages": MESSAGES, "n": 2}}, 200),
]  # fmt: skip


def send_round(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway.url, timeout=60) as client:
        for what, request, status in ROUND:
            response = client.request(**request)
            assert response.status_code == status, f"{what}: {response.status_code} {response.text[:500]}"
            stack.statuses.append(response.status_code)
