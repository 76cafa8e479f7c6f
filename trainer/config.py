"""TrainConfig: every training option written once, with its default and help; CLI flags come from it.

Imports nothing from the project and no heavy library.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_DATA = str(Path(__file__).parent / "samples" / "support_pairs.jsonl")
PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16")
SCHEDULES = ("cosine", "linear", "constant")
ATTENTIONS = ("auto", "eager", "sdpa", "flash_attention_2")
STRATEGIES = ("ddp", "fsdp")
LONG_ANSWERS = ("keep", "drop")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


# Named recipes: values for TrainConfig's fields, applied by the CLI (and the gateway's training jobs, which run
# it) under the flags given explicitly. Chosen by measurement: docs/BENCHMARKS.md, "Reward-model quality".
PRESETS: dict[str, dict[str, Any]] = {
    # 15 minutes of training on 2 CPU cores.
    "default": {
        "base_model": "minilm",
        "epochs": 2,
        "time_budget_s": 900.0,
        "batch_size": "8",
        "learning_rate": 2e-4,
        "max_length": 512,
        "freeze_embeddings": True,
    },
    # 60 minutes of training on 2 CPU cores: SmolLM2-135M, its top 6 of 30 layers (MiniLM given 60 minutes learned
    # no more than in 15; SmolLM2 learned more per pair). Scoring with it costs ~6x MiniLM's.
    "quality": {
        "base_model": "smollm2",
        "epochs": 2,
        "time_budget_s": 3600.0,
        "batch_size": "8",
        "learning_rate": 2e-5,
        "max_length": 512,
        "freeze_embeddings": True,
        "freeze_layers": 24,
    },
    # TrainConfig's field defaults: no time budget, nothing frozen, batch auto (a GPU, or your own recipe).
    "none": {},
}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = _opt(
        "",
        "a named recipe (default = 15 CPU minutes, quality = 60 CPU minutes, none = plain defaults) whose values "
        "apply under the flags given",
        cli_default="default",
        choices=tuple(PRESETS),
    )
    data: str = _opt(
        SAMPLE_DATA, "preference pairs (contract 1) or rated responses (JSONL, .gz works); default: the bundled sample"
    )
    output: str = _opt("", "directory to write the reward model to (required unless --models-dir)")
    models_dir: str = _opt("", "write to MODELS_DIR/SLUG/vN, N = the next free version")
    slug: str = _opt("", "model slug; default: the output directory's name")
    base_model: str = _opt("", "HF model id or path, or an offline alias (minilm, smollm2); empty = the default")
    epochs: int = _opt(2, "passes over the TRAIN split")
    learning_rate: float = _opt(5e-5, "peak learning rate")
    batch_size: str = _opt(
        "auto",
        "pairs (or rated responses) per optimizer micro-batch (all processes together under torchrun), or 'auto'",
    )
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    max_length: int = _opt(384, "token budget per conversation (prompt trimmed from the left first)")
    long_answers: str = _opt(
        "keep",
        "an answer longer than the budget: keep = train on its head, as the server scores it; "
        "drop = leave the record out",
        choices=LONG_ANSWERS,
    )
    warmup_ratio: float = _opt(0.05, "fraction of steps with linear warmup")
    schedule: str = _opt("cosine", "learning-rate decay after warmup", choices=SCHEDULES)
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    length_debiased: bool = _opt(
        False,
        "pairs: train a length head beside the reward head and decorrelate the reward from the answer's length; "
        "serve the reward head only (README, 'Length')",
    )
    partial_prefixes: str = _opt(
        "",
        "pairs: also train on each TRAIN pair with both answers cut to their first T tokens, T drawn (seeded) from "
        "this comma-separated list, e.g. 32,64,128: a reward whose partial scores predict its final ones, for "
        "op-bon early rejection (README, 'Budgeted best-of-N'); empty = off",
    )
    center_rewards: float = _opt(0.0, "coefficient of the reward-centring penalty (0 = off; TRL suggests 0.01)")
    pass_threshold: float = _opt(
        0.5, "rated responses: TEST reports the PASS/FAIL agreement at this reward (0.5 suits 0/1 labels and judges)"
    )
    precision: str = _opt(
        "auto",
        "auto = bf16 weights with fp32 master copies on CUDA and on CPUs with native "
        "bf16 (AMX / AVX512-BF16), else fp32",
        choices=PRECISIONS,
    )
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N")
    seed: int = _opt(42, "seed for init, shuffling and batching")
    max_pairs: int = _opt(0, "use at most this many TRAIN pairs (0 = all)")
    time_budget_s: float = _opt(
        0.0, "train for at most this many seconds, with the LR schedule fitted to the steps that fit (0 = none)"
    )
    threads: int = _opt(0, "torch CPU threads (0 = torch's default)")
    freeze_embeddings: bool = _opt(False, "keep the input embeddings fixed (faster on CPU; little loss on small data)")
    freeze_layers: int = _opt(0, "keep the bottom N transformer layers fixed (train the top ones and the head)")
    lora: bool = _opt(False, "train LoRA adapters (peft) instead of all weights; merged on save")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    lora_dropout: float = _opt(0.05, "LoRA dropout")
    attention: str = _opt(
        "auto",
        "attention kernels: auto = eager on CPU (its bf16 SDPA backward is slow), sdpa on CUDA",
        choices=ATTENTIONS,
    )
    distributed_strategy: str = _opt(
        "ddp",
        "under torchrun / accelerate launch: ddp = a whole replica per GPU; fsdp = weights, gradients and "
        "optimizer state sharded across GPUs (large bases)",
        choices=STRATEGIES,
    )
    gradient_checkpointing: bool = _opt(False, "recompute activations to save memory (slower)")
    dropout: bool = _opt(
        False, "keep the base model's dropout on (off by default, as in TRL: steadier rewards, faster)"
    )
    eval_every_epoch: bool = _opt(False, "also evaluate on TEST after each epoch")
    save_steps: int = _opt(200, "checkpoint every N optimizer steps (and at each epoch end)")
    resume: bool = _opt(False, "continue from the newest checkpoint in the output directory")
    skip_invalid: bool = _opt(False, "load a dataset with bad lines without them (they are counted)")
    log_every: int = _opt(10, "optimizer steps between metric log lines")
    progress: bool = _opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        if self.batch_size != "auto" and not (self.batch_size.isdigit() and int(self.batch_size) > 0):
            raise ValueError(f"batch_size: expected a positive integer or 'auto', got {self.batch_size!r}")
        for name in ("epochs", "grad_accum", "max_length", "save_steps", "log_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.freeze_layers < 0 or self.max_pairs < 0 or self.time_budget_s < 0:
            raise ValueError("freeze_layers, max_pairs, time_budget_s: must not be negative")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio: must be in [0, 1)")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate: must be positive")
        if self.partial_prefixes:
            self.prefix_cuts()  # raises on a bad list
        if self.long_answers not in LONG_ANSWERS:
            raise ValueError(f"long_answers: expected one of {LONG_ANSWERS}")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {tuple(PRESETS)}")
        if self.length_debiased and self.distributed_strategy == "fsdp":
            raise ValueError("length_debiased with fsdp is not supported: use ddp")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention: expected one of {ATTENTIONS}")
        if self.distributed_strategy not in STRATEGIES:
            raise ValueError(f"distributed_strategy: expected one of {STRATEGIES}")
        if self.lora and self.distributed_strategy == "fsdp":
            raise ValueError("lora with fsdp is not supported: LoRA's trainable state is small, use ddp")
        if self.precision not in PRECISIONS or self.schedule not in SCHEDULES:
            raise ValueError(f"precision/schedule: expected one of {PRECISIONS} / {SCHEDULES}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def prefix_cuts(self) -> tuple[int, ...]:
        """partial_prefixes as token counts (empty: off)."""
        try:
            cuts = tuple(int(part) for part in self.partial_prefixes.split(",") if part.strip())
        except ValueError:
            cuts = ()
        if self.partial_prefixes.strip() and (not cuts or min(cuts) < 1):
            raise ValueError(f"partial_prefixes: expected positive token counts like 32,64,128, got "
                             f"{self.partial_prefixes!r}")  # fmt: skip
        return cuts

    @classmethod
    def from_preset(cls, preset: str, **options: Any) -> TrainConfig:
        """The preset's values under `options` (a preset's name unknown: ValueError)."""
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {tuple(PRESETS)}, got {preset!r}")
        return cls(**(PRESETS[preset] | options | {"preset": preset}))


def add_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field: --learning-rate for learning_rate, --no-progress for bools. A flag not given
    parses to None, so `from_namespace` can tell it from a value the preset sets; the help shows the field default."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.metadata.get("cli_default", f.default)
        shown = f" (preset or {default})" if f.name != "preset" else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"] + shown}
        if f.type in (bool, "bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[str(f.type)]
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def from_namespace(ns: argparse.Namespace) -> TrainConfig:
    """The field defaults, under the preset's values (`--preset`, else `default`), under the flags given."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    return TrainConfig.from_preset(given.pop("preset", "default"), **given)
