"""`rewardgate-rm` flags come from ServerSettings, one per field."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.reward_serving.cli import build_parser
from gateway.reward_serving.server import ServerSettings


def test_every_setting_is_a_flag_with_its_default() -> None:
    args = vars(build_parser().parse_args(["--models-dir", "/m"]))
    args.pop("log_level")
    assert ServerSettings(**args) == dataclasses.replace(ServerSettings(), models_dir="/m")


def test_flags_parse_into_settings() -> None:
    argv = [
        "--models-dir",
        "/m",
        "--device",
        "cpu",
        "--engine",
        "vllm",
        "--dtype",
        "bfloat16",
        "--max-batch-tokens",
        "4096",
        "--max-queue-requests",
        "8",
        "--max-wait-ms",
        "0.5",
        "--memory-budget-gb",
        "2",
        "--compile",
        "--port",
        "9000",
    ]
    args = vars(build_parser().parse_args(argv))
    args.pop("log_level")
    settings = ServerSettings(**args)
    assert (settings.device, settings.engine, settings.dtype, settings.compile) == ("cpu", "vllm", "bfloat16", True)
    assert (settings.max_batch_tokens, settings.max_queue_requests, settings.port) == (4096, 8, 9000)
    assert settings.batcher_config().max_wait_s == 0.0005 and settings.memory_budget_bytes() == 2 * 2**30


def test_models_dir_is_required_and_choices_are_checked() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--models-dir", "/m", "--device", "tpu"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--models-dir", "/m", "--dtype", "float16"])
