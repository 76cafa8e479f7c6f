"""`rewardgate serve`: the composition root. Builds the router, the log store and the reward-server client, wires
them into the gateway app, and runs it with uvicorn. Flags are generated from `GatewaySettings`.

The one module (with __main__.py) that may import gateway.reward_serving.server: in embedded mode (no
reward_server_url) the reward server runs in this process and the reward-model criterion talks to it through
httpx.ASGITransport, the same wire contract as over the network. Its lifespan runs inside the gateway's, so models
are closed at shutdown. With `local_model` set, it also loads reward_serving.generator's LocalGenerator (imported
only then: it needs torch) and registers it as LiteLLM's custom provider `local`, so `local:<name>` needs no key and
no network. Must not import torch at module level (the reward engine and the generator import it when used).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from gateway.config import GatewaySettings
from gateway.criteria import RewardModelCatalog
from gateway.criteria_service import CriteriaService, router_judge
from gateway.eval_cli import add_eval_commands, run_eval
from gateway.providers import LOCAL_PROVIDER, local_provider_config, providers_from_env, register_local_models
from gateway.proxy import create_app
from gateway.reward_client import reward_server_client
from gateway.reward_serving.server import ServerSettings
from gateway.reward_serving.server import create_app as create_reward_app
from gateway.router import Router
from gateway.store import open_store

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardgate", description="rewardgate: best-of-N gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway")
    _settings_flags(serve)
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_eval_commands(commands, _settings_flags)
    return parser


def _settings_flags(serve: argparse.ArgumentParser) -> None:
    """--config and one flag per GatewaySettings field."""
    serve.add_argument("--config", help="TOML or JSON settings file (then REWARDGATE_* env, then these flags)")
    for spec in dataclasses.fields(GatewaySettings):
        default = spec.default
        listed = ", comma-separated" if isinstance(default, tuple) else ""
        options: dict[str, Any] = {"help": f"{spec.metadata['help']} (default: {default!r}{listed})"}
        if "choices" in spec.metadata:
            options["choices"] = spec.metadata["choices"]
        if spec.metadata.get("secret"):
            options["help"] = f"{spec.metadata['help']} (prefer REWARDGATE_{spec.name.upper()}: flags show in ps)"
        # SUPPRESS: only the flags given override the file and the environment
        serve.add_argument("--" + spec.name.replace("_", "-"), default=argparse.SUPPRESS, **options)


def resolve_settings(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """defaults < --config file < REWARDGATE_* environment < flags."""
    names = {f.name for f in dataclasses.fields(GatewaySettings)}
    flags = {k: v for k, v in args.items() if k in names}
    config = args.get("config")
    settings = GatewaySettings.from_file(config, environ) if config else GatewaySettings().with_env(environ)
    return settings.replace(**flags)


def embedded_reward_settings(settings: GatewaySettings) -> ServerSettings:
    """The in-process reward server's settings: the gateway's models directory, device and dtype."""
    return ServerSettings(models_dir=settings.models_dir, device=settings.device, dtype=settings.reward_dtype)


@asynccontextmanager
async def criteria_backend(
    settings: GatewaySettings, environ: Mapping[str, str] | None = None
) -> AsyncIterator[CriteriaService]:
    """The criteria service with everything behind it started (store, providers, the reward server: embedded or
    at reward_server_url), for `rewardgate eval`; all closed on exit."""
    async with AsyncExitStack() as stack:
        store = await open_store(settings.store_url, busy_timeout_s=settings.store_busy_timeout_s)
        stack.push_async_callback(store.aclose)
        router = Router.from_configs(providers_from_env(environ), default_provider="openai")
        await stack.enter_async_context(router)
        if settings.reward_server_url:
            client = reward_server_client(settings.reward_server_url, timeout_s=settings.criteria_timeout_s)
        else:
            reward_app = create_reward_app(embedded_reward_settings(settings))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=reward_app), base_url="http://reward-server")
            await stack.enter_async_context(reward_app.router.lifespan_context(reward_app))
        await stack.enter_async_context(client)
        catalog = RewardModelCatalog(
            client, timeout_s=min(5.0, settings.criteria_timeout_s), score_timeout_s=settings.criteria_timeout_s
        )
        yield CriteriaService(store=store, catalog=catalog, judge=router_judge(router))


@asynccontextmanager
async def gateway(settings: GatewaySettings, environ: Mapping[str, str] | None = None) -> AsyncIterator[Starlette]:
    """The wired gateway app; the store and the reward-server client are closed on exit. Enter the app's own
    lifespan (uvicorn does) to start the providers and, embedded, the reward server."""
    async with AsyncExitStack() as stack:
        store = await open_store(settings.store_url, busy_timeout_s=settings.store_busy_timeout_s)
        stack.push_async_callback(store.aclose)
        configs = providers_from_env(environ)
        lifespans: list[Callable[[], AbstractAsyncContextManager[Any]]] = []
        if settings.local_model:
            from gateway.reward_serving.generator import LocalGenerator

            name = settings.local_model_name or Path(settings.local_model).name
            generator = LocalGenerator(settings.local_model, device=settings.device)
            stack.callback(await asyncio.to_thread(register_local_models, {name: generator.complete}))
            configs.append(local_provider_config())
            lifespans.append(lambda: generator)  # loads the model at start-up, stops its worker thread at shutdown
            if f"{LOCAL_PROVIDER}:{name}" not in settings.upstream_models:
                settings = settings.replace(upstream_models=(*settings.upstream_models, f"{LOCAL_PROVIDER}:{name}"))
        router = Router.from_configs(configs, default_provider="openai")
        if settings.reward_server_url:
            client = reward_server_client(settings.reward_server_url, timeout_s=settings.criteria_timeout_s)
        else:
            reward_app = create_reward_app(embedded_reward_settings(settings))
            transport = httpx.ASGITransport(app=reward_app)
            client = httpx.AsyncClient(transport=transport, base_url="http://reward-server")
            lifespans.append(partial(reward_app.router.lifespan_context, reward_app))

        await stack.enter_async_context(client)
        lifespan = partial(_all_of, lifespans) if lifespans else None
        yield create_app(settings, router=router, store=store, criteria_client=client, lifespan=lifespan)


@asynccontextmanager
async def _all_of(lifespans: Sequence[Callable[[], AbstractAsyncContextManager[Any]]]) -> AsyncIterator[None]:
    """Enter each lifespan in order; exit them in reverse."""
    async with AsyncExitStack() as stack:
        for lifespan in lifespans:
            await stack.enter_async_context(lifespan())
        yield


async def serve(settings: GatewaySettings, log_level: str = "info") -> None:
    import uvicorn

    async with gateway(settings) as app:
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, lifespan="on")
        await uvicorn.Server(config).serve()


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
        return asyncio.run(run_eval(args, partial(criteria_backend, settings)))
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
