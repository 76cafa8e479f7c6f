"""The composition root. `open_services(settings)` wires every part of the gateway ONCE, under one exit stack that
closes them in reverse: the store, the providers behind the router, the reward server (embedded in this process
or at reward_server_url), the criteria, the chat, dataset and training-job services. `build_app` hands it to the
app's lifespan (gateway.proxy) for `rewardgate serve` and the tests; `rewardgate eval` enters it directly.

The one module (with __main__.py) that may import gateway.reward_serving.server: in embedded mode (no
reward_server_url) the reward server runs in this process and the reward-model criteria talk to it through
httpx.ASGITransport, the same wire contract as over the network. With `local_model` set, it also loads
reward_serving.generator's LocalGenerator (imported only then: it needs torch) and registers it as LiteLLM's
custom provider `local`, so `local:<name>` needs no key and no network. Must not import torch at module level.

    rewardgate serve [--config FILE] [--<setting> VALUE ...]        the OpenAI-compatible gateway
    rewardgate serve --workers N ...                               N gateway processes on one port, sharing one
                                                                   reward-server process (see serve_workers)
    rewardgate eval pairs|replay|logs --criterion ID ...           a criterion offline (gateway.criteria.evaluation)
    rewardgate distill --criterion JUDGE[@vN] --slug S ...         a judge's stored scores -> a reward model, compared
                                                                   with the judge (gateway.service.distill)

Settings: defaults < --config file < REWARDGATE_* environment < flags (one flag per GatewaySettings field).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway.api import Services
from gateway.config import GatewaySettings
from gateway.criteria import DEFAULT_KINDS, CriteriaError, Criterion, CriterionKind, RewardModelCatalog
from gateway.criteria.evaluation import pairwise_accuracy, parse_replay_rows, replay, replay_report
from gateway.criteria.reward_client import HttpxReward, RewardHttp, reward_server_client
from gateway.errors import GatewayError
from gateway.formats import DatasetError, load_pairs
from gateway.metrics import GatewayMetrics
from gateway.proxy import create_app
from gateway.reward_serving.cli import main as reward_server_main
from gateway.reward_serving.http import serving_config
from gateway.reward_serving.server import ServerSettings
from gateway.reward_serving.server import create_app as create_reward_app
from gateway.service.budget import Calibration
from gateway.service.chat import ChatService
from gateway.service.criteria import CriteriaService, load_criteria_file, router_judge
from gateway.service.datasets import DatasetService
from gateway.service.distill import DistillService
from gateway.service.feedback import FeedbackService
from gateway.service.jobs import JobService
from gateway.store import LogQuery, open_store
from gateway.upstream.local import LOCAL_PROVIDER, local_provider_config, register_local_models
from gateway.upstream.providers import ProviderConfig, providers_from_env
from gateway.upstream.router import Router

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the wiring


@asynccontextmanager
async def open_services(
    settings: GatewaySettings,
    *,
    environ: Mapping[str, str] | None = None,
    router: Router | None = None,
    wrap_reward: Callable[[ASGIApp], ASGIApp] | None = None,
    kinds: Sequence[CriterionKind] = DEFAULT_KINDS,
) -> AsyncIterator[Services]:
    """Every long-lived part, opened in dependency order and closed in reverse. `router` replaces the providers
    read from `environ` (tests: fake upstreams); `wrap_reward` wraps the embedded reward server (tests: faults);
    `kinds` are the criterion kinds (tests: a toy kind)."""
    async with AsyncExitStack() as stack:
        store = await open_store(settings.store_url, busy_timeout_s=settings.store_busy_timeout_s)
        stack.push_async_callback(store.aclose)
        configs = providers_from_env(environ)
        if settings.local_model:
            settings = await _serve_local_model(settings, configs, stack)
        router = router or Router.from_configs(configs, default_provider="openai", fallbacks=settings.fallbacks)
        await stack.enter_async_context(router)
        reward = await stack.enter_async_context(_reward_client(settings, wrap_reward))
        catalog = RewardModelCatalog(
            reward,
            timeout_s=min(5.0, settings.criteria_timeout_s),  # the listing, bounded like the scoring
            score_timeout_s=settings.criteria_timeout_s,
        )
        metrics = GatewayMetrics()
        criteria = CriteriaService(store=store, catalog=catalog, judge=router_judge(router), kinds=kinds)
        datasets = DatasetService(store)
        jobs = JobService(settings, store=store, datasets=datasets, metrics=metrics)
        calibration = None
        if settings.bon_calibration_file:  # read once: a bad file fails the start, not a request
            calibration = Calibration.load(settings.bon_calibration_file, settings.bon_min_rank_correlation)
        chat = ChatService(
            settings, router=router, store=store, criteria=criteria, metrics=metrics, calibration=calibration
        )
        if settings.criteria_file:  # once the reward server is up: a slug may not shadow a reward model's
            added = await criteria.sync(load_criteria_file(settings.criteria_file))
            logger.info("criteria file %s: %d new version(s)", settings.criteria_file, len(added))
        await stack.enter_async_context(jobs)  # resumes interrupted training jobs; stops trainers at exit
        feedback = FeedbackService(store)
        distill = DistillService(settings, store=store, criteria=criteria, datasets=datasets, jobs=jobs)
        yield Services(settings, store, metrics, chat, criteria, datasets, feedback, jobs, reward, distill)


def build_app(settings: GatewaySettings, **wiring: Any) -> Starlette:
    """The gateway app over `open_services(settings, **wiring)`; enter its lifespan (uvicorn does) to open them."""
    return create_app(partial(open_services, settings, **wiring))


async def _serve_local_model(
    settings: GatewaySettings, configs: list[ProviderConfig], stack: AsyncExitStack
) -> GatewaySettings:
    """Load the local model, register it as `local:<name>`, and list it among the upstream models."""
    from gateway.reward_serving.generator import LocalGenerator

    name = settings.local_model_name or Path(settings.local_model).name
    generator = await stack.enter_async_context(LocalGenerator(settings.local_model, device=settings.device))
    stack.callback(await asyncio.to_thread(register_local_models, {name: generator.complete}))
    configs.append(local_provider_config())
    if f"{LOCAL_PROVIDER}:{name}" in settings.upstream_models:
        return settings
    return settings.replace(upstream_models=(*settings.upstream_models, f"{LOCAL_PROVIDER}:{name}"))


@asynccontextmanager
async def _reward_client(
    settings: GatewaySettings, wrap: Callable[[ASGIApp], ASGIApp] | None
) -> AsyncIterator[RewardHttp]:
    """The reward-model criteria's client: to the servers at reward_server_url, or to one run in this process."""
    if settings.reward_server_url:
        servers = reward_server_client(settings.reward_server_url)
        try:
            yield servers
        finally:
            await servers.aclose()
        return
    reward_app = create_reward_app(embedded_reward_settings(settings))
    transport = httpx.ASGITransport(app=wrap(reward_app) if wrap else reward_app)
    client = httpx.AsyncClient(transport=transport, base_url="http://reward-server")
    async with reward_app.router.lifespan_context(reward_app), client:
        yield HttpxReward(client)


def embedded_reward_settings(settings: GatewaySettings) -> ServerSettings:
    """The in-process reward server's settings: the gateway's models directory, device and dtype."""
    return ServerSettings(models_dir=settings.models_dir, device=settings.device, dtype=settings.reward_dtype)


# ---------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardgate", description="rewardgate: best-of-N gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway")
    _settings_flags(serve)
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    _eval_commands(commands)
    _distill_command(commands)
    return parser


def _settings_flags(command: argparse.ArgumentParser) -> None:
    """--config and one flag per GatewaySettings field."""
    command.add_argument("--config", help="TOML or JSON settings file (then REWARDGATE_* env, then these flags)")
    defaults = GatewaySettings()
    for spec in dataclasses.fields(GatewaySettings):
        default = getattr(defaults, spec.name)
        listed = ", comma-separated" if isinstance(default, tuple) else ""
        options: dict[str, Any] = {"help": f"{spec.metadata['help']} (default: {default!r}{listed})"}
        if "choices" in spec.metadata:
            options["choices"] = spec.metadata["choices"]
        if spec.metadata.get("secret"):
            options["help"] = f"{spec.metadata['help']} (prefer REWARDGATE_{spec.name.upper()}: flags show in ps)"
        # SUPPRESS: only the flags given override the file and the environment
        command.add_argument("--" + spec.name.replace("_", "-"), default=argparse.SUPPRESS, **options)


def resolve_settings(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """defaults < --config file < REWARDGATE_* environment < flags."""
    names = {f.name for f in dataclasses.fields(GatewaySettings)}
    flags = {k: v for k, v in args.items() if k in names}
    config = args.get("config")
    settings = GatewaySettings.from_file(config, environ) if config else GatewaySettings().with_env(environ)
    return settings.replace(**flags)


async def serve(settings: GatewaySettings, log_level: str = "info", sockets: list[socket.socket] | None = None) -> None:
    import uvicorn

    app = build_app(settings)
    config = serving_config(
        app, host=settings.host, port=settings.port, log_level=log_level, header_timeout_s=settings.header_timeout_s
    )
    await uvicorn.Server(config).serve(sockets=sockets)


# ---------------------------------------------------------------- rewardgate serve --workers N
#
# One event loop saturates one core: `--workers N` runs N gateway processes, each with its own socket on the same
# port (SO_REUSEPORT: the kernel spreads new connections over them), and, in embedded mode, ONE reward-server
# process beside them that they all score through (models load once, and cross-request batching sees every
# worker's traffic). The store is shared as any replicas share it (SQLite in WAL mode, or Postgres); training jobs
# run in the first worker only. This parent process only supervises: when a child exits, or on SIGINT/SIGTERM, it
# stops the others and exits (1 if a child failed). Workers are spawned, not forked: no loop or pool is inherited.


def serve_workers(settings: GatewaySettings, log_level: str) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        logger.error("--workers above 1 needs SO_REUSEPORT, which this platform lacks")
        return 2
    context = multiprocessing.get_context("spawn")
    reserved = _reuseport_socket(settings.host, settings.port)  # holds the port (0: a free one) until all bind it
    settings = settings.replace(port=reserved.getsockname()[1])
    children: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not settings.reward_server_url:
            url = f"http://127.0.0.1:{_free_port()}"
            argv = ["--models-dir", settings.models_dir, "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
            argv += ["--device", settings.device, "--dtype", settings.reward_dtype, "--log-level", log_level]
            children.append(context.Process(target=reward_server_main, args=(argv,), name="rewardgate-rm"))
            children[-1].start()
            if not _wait_healthy(url + "/health", children[-1], lambda: stopping):
                return 1
            logger.info("reward server for %d workers at %s (pid %s)", settings.workers, url, children[-1].pid)
            settings = settings.replace(reward_server_url=url)
        for index in range(settings.workers):
            worker = settings.replace(training_worker=settings.training_worker and index == 0)
            children.append(context.Process(target=_worker, args=(worker, log_level), name=f"rewardgate-{index}"))
            children[-1].start()
        logger.info(
            "rewardgate serving on http://%s:%d with %d workers", settings.host, settings.port, settings.workers
        )
        while not stopping and all(child.is_alive() for child in children):
            multiprocessing.connection.wait([child.sentinel for child in children], timeout=0.5)
        failed = [child.name for child in children if not child.is_alive() and child.exitcode != 0]
        if failed and not stopping:
            logger.error("%s exited; stopping the others", ", ".join(failed))
        return 1 if failed and not stopping else 0
    finally:
        reserved.close()
        for child in reversed(children):  # workers first, then the reward server they use
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        for child in reversed(children):
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(settings: GatewaySettings, log_level: str) -> None:
    """One gateway process of `serve --workers N`: its own SO_REUSEPORT socket on the shared port."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _reuseport_socket(settings.host, settings.port)
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(serve(settings, log_level, sockets=[sock]))


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: multiprocessing.process.BaseProcess, stopping: Callable[[], bool]) -> bool:
    """Poll `url` until the server answers (True), or the process exits or we are told to stop (False)."""
    deadline = time.monotonic() + 120
    while process.is_alive() and not stopping() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:  # it answers (503: the models directory is missing, which it reports)
            return True
        except OSError:
            pass
        process.join(timeout=0.1)
    logger.error("the reward server did not come up (exit code %s)", process.exitcode)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    log_level = args.pop("log_level", "warning")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = resolve_settings(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    if args["command"] == "eval":
        return asyncio.run(evaluate(args, settings))
    if args["command"] == "distill":
        return asyncio.run(distill(args, settings))
    if settings.workers < 1:
        logger.error("workers must be at least 1, got %d", settings.workers)
        return 2
    if settings.workers > 1:
        return serve_workers(settings, log_level)
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(serve(settings, log_level))
    return 0


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a core dependency except on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# ---------------------------------------------------------------- rewardgate eval


def _eval_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a criterion offline (pairs, best-of-N replay, stored logs)")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)
    pairs = kinds.add_parser("pairs", help="pairwise accuracy on a preference JSONL, beside the length baseline")
    pairs.add_argument("--data", required=True, help="preference JSONL (contract 1; .gz works)")
    pairs.add_argument("--split", default="all", choices=("all", "TRAIN", "TEST"))
    pairs.add_argument("--skip-invalid", action="store_true", help="evaluate the valid lines of a file with bad ones")
    pairs.add_argument("--out", help="write one JSON line per pair: index and the chosen and rejected scores")
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
        _settings_flags(command)


async def evaluate(args: dict[str, Any], settings: GatewaySettings, environ: Mapping[str, str] | None = None) -> int:
    """`rewardgate eval`: the same wiring as `serve`, without running training jobs here. Prints one JSON report;
    exit status 0, 1 when the input has bad lines (reported, unless --skip-invalid), 2 for a bad criterion id."""
    try:
        async with open_services(settings.replace(training_worker=False), environ=environ) as services:
            criterion = await services.criteria.resolve_id(args["criterion"], param="--criterion")
            if args["eval_command"] == "pairs":
                return await _pairs(args, criterion)
            if args["eval_command"] == "replay":
                return await _replay(args, criterion)
            return await _logs(args, services.criteria, criterion)
    except CriteriaError as exc:
        print(f"rewardgate eval: {exc}", file=sys.stderr)
        return 2


def _print(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2))


async def _pairs(args: dict[str, Any], criterion: Criterion) -> int:
    try:
        loaded = load_pairs(args["data"], skip_invalid=args["skip_invalid"])
    except DatasetError as exc:
        print("\n".join(str(e) for e in exc.errors), file=sys.stderr)
        print(f"rewardgate eval: {exc} (--skip-invalid evaluates the rest)", file=sys.stderr)
        return 1
    pairs = loaded.pairs if args["split"] == "all" else loaded.split(args["split"])
    report = await pairwise_accuracy(criterion, pairs, concurrency=args["concurrency"])
    if args.get("out"):
        with open(args["out"], "w", encoding="utf-8") as out:
            for i, (chosen, rejected) in enumerate(report.scores):
                out.write(json.dumps({"index": i, "chosen": chosen, "rejected": rejected}) + "\n")
    _print({"criterion": _name(criterion), "data": args["data"], "split": args["split"],
            "skipped_lines": len(loaded.skipped), **report.to_json()})  # fmt: skip
    return 0


async def _replay(args: dict[str, Any], criterion: Criterion) -> int:
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


async def _logs(args: dict[str, Any], service: CriteriaService, criterion: Criterion) -> int:
    metadata = dict(item.partition("=")[::2] for item in args["metadata"])
    report = await service.score_logs(
        criterion,
        LogQuery(metadata=metadata, model=args["model"]),
        limit=args["limit"],
        concurrency=args["concurrency"],
    )
    _print({"criterion": _name(criterion), **report})
    return 0


def _name(criterion: Criterion) -> dict[str, Any]:
    return {"slug": criterion.slug, "version": criterion.version, "kind": criterion.kind}


# ---------------------------------------------------------------- rewardgate distill


def _distill_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "distill", help="train a reward model on a judge's stored scores and compare the two on a held-back slice"
    )
    command.add_argument("--criterion", required=True, help="the judge: 'slug' (its newest version) or 'slug@vN'")
    command.add_argument("--slug", required=True, help="the reward model to write: MODELS_DIR/SLUG/vN")
    command.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="log filter; repeatable")
    command.add_argument("--model", help="log filter: the requested model")
    command.add_argument("--limit", type=int, default=1000, help="at most this many logs, newest first")
    command.add_argument("--test-fraction", type=float, default=0.2, help="prompts held back for the comparison")
    command.add_argument("--threshold", type=float, default=0.5, help="the judge's PASS threshold (normalized)")
    command.add_argument("--judge-sample", type=int, default=8, help="candidates judged again to time and price it")
    command.add_argument("--base-model", default="", help="the trainer's --base-model (default: its default)")
    command.add_argument("--epochs", type=int, default=0, help="the trainer's --epochs (0: its default)")
    command.add_argument("--out", help="where to write the rows (default: JOBS_DIR/distill/SLUG-<time>.jsonl)")
    _settings_flags(command)


async def distill(args: dict[str, Any], settings: GatewaySettings, environ: Mapping[str, str] | None = None) -> int:
    """`rewardgate distill` (gateway.service.distill): one JSON report on stdout, training progress on stderr.
    Exit 0; 1 when training failed; 2 for a bad criterion or too little data."""
    try:
        async with open_services(settings.replace(training_worker=False), environ=environ) as services:
            report = await services.distill.distil(
                args["criterion"], args["slug"],
                LogQuery(metadata=dict(item.partition("=")[::2] for item in args["metadata"]), model=args["model"]),
                limit=args["limit"], test_fraction=args["test_fraction"], threshold=args["threshold"],
                judge_sample=args["judge_sample"], base_model=args["base_model"], epochs=args["epochs"],
                out=args["out"], log=lambda line: print(f"rewardgate distill: {line}", file=sys.stderr),
            )  # fmt: skip
    except (CriteriaError, GatewayError) as exc:
        print(f"rewardgate distill: {exc}", file=sys.stderr)
        return 2
    _print(report)
    return 0 if report["state"] == "DEPLOYED" else 1
