"""GatewaySettings: every gateway setting written once, with its default and one line of help.

Precedence: defaults < config file (`from_file`, TOML or JSON) < environment (`REWARDGATE_<FIELD>`) < CLI flags
(generated from these fields by gateway/cli.py). Lists (`api_keys`, `upstream_models`) are comma-separated in the
environment and on the command line; `fallbacks` is a table in the file and JSON text in the environment and on
the command line. Nothing is read at import. Must not import starlette, torch or trainer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

ENV_PREFIX = "REWARDGATE_"


@dataclass(frozen=True)
class GatewaySettings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    workers: int = field(
        default=1,
        metadata={
            "help": "gateway processes on the one port (SO_REUSEPORT); above 1, serve also starts one reward-server "
            "process that they share, unless reward_server_url names servers"
        },
    )
    models_dir: str = field(
        default="models", metadata={"help": "reward-model store (embedded mode): <dir>/<slug>/v<N>/"}
    )
    store_url: str = field(
        default="sqlite:///rewardgate.db",
        metadata={"help": "store: sqlite:///path.db, or postgresql://user@host/db (the postgres extra)"},
    )
    store_busy_timeout_s: float = field(
        default=5.0, metadata={"help": "how long a store call may wait for a locked database (503 after)"}
    )
    reward_server_url: str = field(
        default="",
        metadata={"help": "reward server URL(s), comma-separated replicas (spread, retried); empty: embedded"},
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata={"help": "gateway Bearer keys, comma-separated; empty: no auth", "secret": True},
    )
    upstream_models: tuple[str, ...] = field(
        default=(), metadata={"help": "upstream model names listed by GET /v1/models, comma-separated"}
    )
    criteria_file: str = field(
        default="",
        metadata={"help": "LLM-judge and rule definitions (JSON list or TOML [[criteria]]), synced at start-up"},
    )
    training_worker: bool = field(
        default=True, metadata={"help": "run training jobs here; with several replicas on one store, on exactly one"}
    )
    jobs_dir: str = field(default="jobs", metadata={"help": "training jobs' working files (dataset snapshots)"})
    training_concurrency: int = field(
        default=1, metadata={"help": "training jobs run at once (1 = one at a time on the device)"}
    )
    trainer_args: tuple[str, ...] = field(
        default=(), metadata={"help": "extra rewardgate-train flags for every job, e.g. --threads=2, comma-separated"}
    )
    max_n: int = field(default=16, metadata={"help": "largest n accepted with op-criteria"})
    fallbacks: dict[str, tuple[str, ...]] = field(
        default_factory=dict,
        metadata={
            "help": 'fallback models per model, tried in order when it fails: JSON {"openai:gpt-4o": ["anthropic:..."]}'
        },
    )
    base_model_dirs: tuple[str, ...] = field(
        default=(),
        metadata={"help": "folders whose model directories training jobs may name as base_model; empty: none"},
    )
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata={"help": "largest request body (413 above)"})
    header_timeout_s: float = field(
        default=10.0, metadata={"help": "time a client has to send a request's headers (408, then closed, after)"}
    )
    body_timeout_s: float = field(default=30.0, metadata={"help": "time a client has to send a whole body (408 after)"})
    upstream_timeout_s: float = field(default=120.0, metadata={"help": "per-attempt timeout of an upstream call"})
    criteria_timeout_s: float = field(default=30.0, metadata={"help": "timeout of one criterion over all candidates"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto",
        metadata={"help": "where embedded reward models and the local model run", "choices": ("auto", "cpu", "cuda")},
    )
    reward_dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto",
        metadata={
            "help": "embedded reward models' weights (auto: bfloat16 on CUDA, float32 on CPU)",
            "choices": ("auto", "float32", "bfloat16"),
        },
    )
    local_model: str = field(
        default="",
        metadata={
            "help": "causal-LM directory served in process as model local:<name> (SmolLM2, once converted: "
            "~/.cache/rewardgate/smollm2-135m-instruct); empty: none"
        },
    )
    local_model_name: str = field(
        default="", metadata={"help": "the <name> of local:<name>; empty: local_model's directory name"}
    )
    bon_calibration_file: str = field(
        default="",
        metadata={
            "help": "op-bon early rejection: JSON of each reward model's partial-vs-final rank correlation per "
            "checkpoint (bench/budgeted_bon.py --calibration-out writes it); empty: every criterion trusted"
        },
    )
    bon_min_rank_correlation: float = field(
        default=0.5,
        metadata={"help": "early rejection uses a checkpoint only where every calibrated criterion reaches this"},
    )
    cache_ttl_s: float = field(
        default=7 * 24 * 3600.0, metadata={"help": "how long a response cached by op-cache stays (seconds)"}
    )
    cache_max_entries: int = field(
        default=10_000, metadata={"help": "response cache size (shared by replicas): the oldest entries go first"}
    )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Self:
        """Settings from a TOML (`.toml`) or JSON file of field names, then environment overrides."""
        text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a table/object of settings")
        return cls().replace(**data).with_env(environ)

    def with_env(self, environ: Mapping[str, str] | None = None) -> Self:
        """A copy with `REWARDGATE_<FIELD>` variables applied (os.environ when `environ` is None)."""
        env = os.environ if environ is None else environ
        names = {f.name for f in dataclasses.fields(self)}
        return self.replace(**{n: env[ENV_PREFIX + n.upper()] for n in names if ENV_PREFIX + n.upper() in env})

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` coerced to each field's type; unknown names raise ValueError."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(fields)}")
        coerced = {name: coerce(getattr(self, name), value, name) for name, value in changes.items()}
        for name, value in coerced.items():
            choices = fields[name].metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")
        return dataclasses.replace(self, **coerced)

    def public(self) -> dict[str, Any]:
        """The resolved settings for the start-up log, secrets replaced by their count."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("secret"):
                out[f.name] = f"<{len(out[f.name])} set>"
        return out


def coerce(default: object, value: object, name: str) -> Any:
    """`value` (from TOML/JSON, the environment or a flag) as the type of the field's `default`."""
    try:
        if isinstance(default, dict):  # fallbacks: {model: [model, ...]} as a mapping, or JSON text of one
            data = json.loads(value) if isinstance(value, str) else value
            if not isinstance(data, Mapping) or not all(
                isinstance(k, str) and isinstance(v, list | tuple) and all(isinstance(m, str) for m in v)
                for k, v in data.items()
            ):
                raise TypeError("expected an object of model -> list of models")
            return {k: tuple(v) for k, v in data.items()}
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            return tuple(str(item).strip() for item in items if str(item).strip())
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int | float | str):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError(type(value).__name__)
            return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {value!r} as {type(default).__name__} ({exc})") from None
    raise ValueError(f"{name}: unsupported setting type {type(default).__name__}")
