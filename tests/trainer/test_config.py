from __future__ import annotations

import argparse

import pytest

from trainer.config import PRESETS, TrainConfig, add_arguments, from_namespace


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_namespace(parser.parse_args(list(argv)))


def test_every_field_becomes_a_flag_with_its_default() -> None:
    cfg = parse(
        "--output",
        "x",
        "--learning-rate",
        "1e-4",
        "--batch-size",
        "4",
        "--lora",
        "--no-progress",
        "--freeze-layers",
        "2",
    )
    assert (cfg.output, cfg.learning_rate, cfg.batch_size, cfg.lora, cfg.progress, cfg.freeze_layers) == (
        "x",
        1e-4,
        "4",
        True,
        False,
        2,
    )
    assert parse().to_dict() == TrainConfig.from_preset("default").to_dict()


def test_a_preset_applies_under_the_flags_given() -> None:
    quality = parse("--preset", "quality", "--epochs", "3")
    assert quality.preset == "quality" and quality.epochs == 3
    assert quality.time_budget_s == PRESETS["quality"]["time_budget_s"]
    assert parse("--preset", "none").to_dict() == TrainConfig(preset="none").to_dict()
    assert parse("--no-freeze-embeddings").freeze_embeddings is False  # a flag beats the preset's True
    assert parse().freeze_embeddings is PRESETS["default"].get("freeze_embeddings", False)
    with pytest.raises(SystemExit):
        parse("--preset", "fastest")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_preset("fastest")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", "zero", "batch_size"),
        ("epochs", 0, "epochs"),
        ("learning_rate", -1.0, "learning_rate"),
        ("warmup_ratio", 1.5, "warmup_ratio"),
        ("freeze_layers", -1, "freeze_layers"),
    ],
)
def test_bad_values_are_refused_with_the_field_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]
