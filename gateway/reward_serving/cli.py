"""`rewardgate-rm`: run the reward server with uvicorn; flags are generated from `ServerSettings`.

Owns argument parsing and process start-up only. Must not import torch (the engine loads it on first use).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from .http import serving_config
from .server import ServerSettings, create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardgate-rm", description="Serve reward models over HTTP.")
    defaults = ServerSettings()
    for spec in dataclasses.fields(ServerSettings):
        flag = "--" + spec.name.replace("_", "-")
        default = getattr(defaults, spec.name)
        options: dict[str, Any] = {"help": f"{spec.metadata['help']} (default: {default})", "default": default}
        if isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = type(default)
        if "choices" in spec.metadata:
            options["choices"] = spec.metadata["choices"]
        if spec.name == "models_dir":  # the one setting without a sensible default
            options.update(required=True, default=None, help=spec.metadata["help"])
        parser.add_argument(flag, **options)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    log_level = args.pop("log_level")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(**args)
    import uvicorn

    config = serving_config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        header_timeout_s=settings.header_timeout_s,
    )
    uvicorn.Server(config).run()
    return 0
