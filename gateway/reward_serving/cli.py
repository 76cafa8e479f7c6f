"""`rewardgate-rm`: run the reward server with uvicorn; flags are generated from `ServerSettings`.
`rewardgate-rm import SOURCE --models-dir DIR --slug S [--calibration FILE]`: a published reward model into the
registry (reward_serving.importer).

Owns argument parsing and process start-up only. Must not import torch (the engine loads it on first use).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
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


def import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardgate-rm import",
        description="Import a published reward model (a *ForSequenceClassification with one label) as SLUG/vN.",
    )
    parser.add_argument("source", help="a local model directory, or a hub id (owner/name) where there is network")
    parser.add_argument("--models-dir", required=True, help="the registry: writes MODELS_DIR/SLUG/vN")
    parser.add_argument("--slug", required=True, help="lowercase letters, digits, '.', '_' or '-'")
    parser.add_argument(
        "--calibration", help="preference pairs or rated responses (JSONL): reward_stats, and accuracy on pairs"
    )
    parser.add_argument("--calibration-split", default="all", choices=("all", "TRAIN", "TEST"))
    parser.add_argument("--skip-invalid", action="store_true", help="calibrate on the valid lines of a file")
    parser.add_argument("--max-length", type=int, default=0, help="token budget (default: the model's, <= 4096)")
    parser.add_argument("--device", default="auto", help="where the calibration is scored: auto, cpu, cuda")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    return parser


def import_main(argv: Sequence[str]) -> int:
    """Exit 0 with the card's summary as JSON; 1 when refused (the reason names what was found) or the
    calibration file has bad lines (each printed); 2 for usage errors."""
    import json
    import os

    from gateway.formats import DatasetError

    from .importer import ImportRefused, import_model

    args = import_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        done = import_model(
            args.source, args.models_dir, args.slug, calibration=args.calibration,
            calibration_split=args.calibration_split, skip_invalid=args.skip_invalid, max_length=args.max_length,
            device=args.device, dtype=args.dtype, log=lambda line: print(line, flush=True),
        )  # fmt: skip
    except DatasetError as exc:
        for error in exc.errors:
            print(str(error))
        print(f"rewardgate-rm import: {exc}", file=sys.stderr)
        return 1
    except (ImportRefused, ValueError, OSError) as exc:
        print(f"rewardgate-rm import: {exc}", file=sys.stderr)
        return 1
    card = done.card
    summary = {k: card[k] for k in ("slug", "version", "architecture", "license", "max_length", "reward_stats")}
    summary |= {"output": str(done.directory), "metrics": card["metrics"]["test"], "probe": card["probe"]["template"]}
    summary["reward_stats"] = {k: v for k, v in card["reward_stats"].items() if k != "histogram"}
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["import"]:
        return import_main(argv[1:])
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
