"""deploy/: the dashboard queries only metrics the code exports, compose and the Helm chart render, every setting,
flag and probe they pass is one the programs accept, and both keep the training-jobs topology of gateway/jobs.py:
exactly one process runs jobs (the training worker), every gateway and the worker share the jobs dir and the store,
and the worker writes the models the reward servers read.

Needs neither docker nor helm: compose is checked with PyYAML (and by `docker compose config` or `docker-compose
config` where one is installed); the chart is rendered by deploy/helm/render_chart.py, an interpreter of the Go
template subset the chart uses (and by `helm template` where helm is installed). The exported metric names come from
the metrics classes at test time. One file for all of deploy/, hence its length.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from starlette.testclient import TestClient

from gateway.cli import build_parser as gateway_parser
from gateway.cli import resolve_settings
from gateway.config import ENV_PREFIX, GatewaySettings
from gateway.metrics import GatewayMetrics
from gateway.reward_serving.cli import build_parser as reward_server_parser
from gateway.reward_serving.metrics import RewardServerMetrics
from gateway.reward_serving.registry import ScoreResult
from gateway.reward_serving.server import ServerSettings, create_app
from gateway.training import JobSpec, trainer_argv
from trainer.cli import build_parser as trainer_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "rewardgate"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rewardgate.json"
SETTINGS = {f.name for f in fields(GatewaySettings)}
# Labels Prometheus adds to every series at scrape time (static configs, and the Prometheus Operator's).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
RUNTIME_ENV = {"PATH", "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}  # the images' own, not settings
TRAINER_ENV = {"HF_HOME", "TOKENIZERS_PARALLELISM", "MPLCONFIGDIR"}  # the trainer image's, for the worker's trainers


def load_script(path: Path) -> ModuleType:
    """A stand-alone script of deploy/ as a module (deploy/ is not a package: the images copy the files alone)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def healthcheck_module() -> ModuleType:
    return load_script(DEPLOY / "healthcheck.py")


RENDER = load_script(DEPLOY / "helm" / "render_chart.py")
GoTemplate, TemplateFailure = RENDER.GoTemplate, RENDER.TemplateFailure


def parses(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """argv parsed as the program would; a bad flag or value fails the test instead of exiting."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:
        raise AssertionError(f"{parser.prog} rejects {list(argv)}") from exc


def check_gateway_env(env: Mapping[str, str], where: str, *, worker: bool = False) -> GatewaySettings:
    """Every REWARDGATE_* variable is a GatewaySettings field and its value reads as that field's type. The training
    worker gets no provider keys (no traffic reaches it) and may carry the trainer image's variables."""
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    unknown = sorted(k for k in ours if k.removeprefix(ENV_PREFIX).lower() not in SETTINGS)
    assert not unknown, f"{where}: {unknown} are not GatewaySettings fields ({sorted(SETTINGS)})"
    provider = {k for k in env if k.endswith("_API_KEY")} | {"OPENAI_BASE_URL"}
    if worker:
        assert not provider & set(env), f"{where}: the training worker needs no provider keys"
    others = sorted(set(env) - set(ours) - provider - RUNTIME_ENV - (TRAINER_ENV if worker else set()))
    assert not others, f"{where}: unexpected gateway variables {others}"
    return GatewaySettings().with_env(ours)  # raises on a value of the wrong type or choice


def serve_settings(argv: Sequence[str], env: Mapping[str, str]) -> GatewaySettings | None:
    """The settings a `rewardgate <argv>` process runs with (defaults < env < flags), or None when it is not
    `rewardgate serve` (a trainer, a reward server)."""
    args = parses(gateway_parser(), argv)
    return resolve_settings(vars(args), env) if args.command == "serve" else None


def check_trainer_args(settings: GatewaySettings, where: str) -> None:
    """The trainer command line the worker builds for a job (gateway/training.py) parses with the trainer's parser."""
    spec = JobSpec("job_1", "support-rm", f"{settings.jobs_dir}/job_1/data.jsonl")
    argv = trainer_argv(spec, Path(settings.models_dir), trainer_args=settings.trainer_args)
    args = parses(trainer_parser(), argv)
    assert args.models_dir == settings.models_dir, f"{where}: {argv}"


# ---------------------------------------------------------------- metrics the code exports


@dataclass(frozen=True)
class Series:
    family: str
    labels: frozenset[str]


def exported_series() -> dict[str, Series]:
    """Sample name -> (family, label names) for every series of fresh GatewayMetrics and RewardServerMetrics."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("",)}
    out: dict[str, Series] = {}
    for metrics in (GatewayMetrics(), RewardServerMetrics()):
        # prometheus_client lists no label names before a child exists; the wrappers know them.
        labels = {w._name: w._labelnames for w in vars(metrics).values() if isinstance(w, MetricWrapperBase)}
        for family in metrics.registry.collect():
            assert family.name in labels, f"{family.name}: registered but not an attribute of {type(metrics).__name__}"
            for suffix in suffixes[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                out[family.name + suffix] = Series(family.name, frozenset(labels[family.name]) | extra)
    return out


# ---------------------------------------------------------------- PromQL


FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "clamp_max", "clamp_min", "count", "count_over_time", "delta",
    "deriv", "floor", "histogram_quantile", "increase", "irate", "max", "max_over_time", "min", "min_over_time",
    "quantile", "rate", "round", "scalar", "stddev", "sum", "sum_over_time", "topk", "bottomk", "vector",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATORS = {"and", "or", "unless", "bool", "offset"}
_PROMQL_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*|=~|!~|!=|.)')


@dataclass
class Query:
    metrics: list[str] = field(default_factory=list)
    matched: dict[str, set[str]] = field(default_factory=dict)  # metric -> label names in its {...}
    grouped: set[str] = field(default_factory=set)  # label names in by/without/on/ignoring (...)


def parse_promql(expr: str) -> Query:
    tokens, depth = [], 0
    for token in filter(str.strip, _PROMQL_TOKEN.findall(expr)):
        depth += token == "["
        if not depth:  # range selectors and their $__rate_interval are left out
            tokens.append(token)
        depth -= token == "]"
    query, i = Query(), 0
    while i < len(tokens):
        token = tokens[i]
        if token in GROUPING:
            assert tokens[i + 1] == "(", f"{expr}: {token} without a label list"
            close = tokens.index(")", i)
            query.grouped |= {t for t in tokens[i + 2 : close] if t != ","}
            i = close + 1
            continue
        if re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token) and token not in OPERATORS:
            if token in FUNCTIONS:
                i += 1
                continue
            assert tokens[i + 1 : i + 2] != ["("], f"{expr}: unknown function {token}"
            query.metrics.append(token)
            labels = query.matched.setdefault(token, set())
            if tokens[i + 1 : i + 2] == ["{"]:
                close = tokens.index("}", i)
                matchers = tokens[i + 2 : close]
                labels |= {matchers[j] for j in range(0, len(matchers), 4)}  # name op "value" ,
                i = close
        else:
            assert token != "{", f"{expr}: a selector without a metric name"
        i += 1
    return query


def test_promql_parser_finds_metrics_matchers_and_grouping() -> None:
    query = parse_promql(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{status=~"[45]..", route!="x"}[$__rate_interval])))'
        " / clamp_min(sum(rate(b_total[5m])) without (pod), 1e-9)"
    )
    assert query.metrics == ["a_bucket", "b_total"]
    assert query.matched == {"a_bucket": {"status", "route"}, "b_total": set()}
    assert query.grouped == {"le", "route", "pod"}
    with pytest.raises(AssertionError, match="unknown function"):
        parse_promql("ratee(a_total[5m])")


# ---------------------------------------------------------------- the Grafana dashboard


def dashboard_queries() -> Iterator[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_every_dashboard_query_names_only_exported_metrics_and_labels() -> None:
    series = exported_series()
    queries = list(dashboard_queries())
    assert len(queries) >= 20
    for title, target in queries:
        expr, where = target["expr"], f"panel {title!r}: {target['expr']}"
        query = parse_promql(expr)
        assert query.metrics, f"{where}: no metric"
        unknown = [m for m in query.metrics if m not in series]
        assert not unknown, f"{where}: {unknown} are not exported (exported: {sorted(series)})"
        known = set().union(*(series[m].labels for m in query.metrics)) | TARGET_LABELS
        for metric, labels in query.matched.items():
            assert labels <= series[metric].labels | TARGET_LABELS, f"{where}: {metric} has no label {labels}"
        assert query.grouped <= known, f"{where}: grouping by {query.grouped - known}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend <= query.grouped, f"{where}: legend uses {legend - query.grouped}, not kept by the query"


def test_the_dashboard_shows_every_exported_metric() -> None:
    used = {m for _, t in dashboard_queries() for m in parse_promql(t["expr"]).metrics}
    series = exported_series()
    shown = {series[m].family for m in used if m in series}  # unknown names: the test above
    missing = sorted({s.family for s in series.values()} - shown)
    assert not missing, f"no dashboard panel for {missing}: add one to {DASHBOARD.relative_to(ROOT)}"


def test_the_dashboard_is_a_well_formed_provisionable_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "rewardgate" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids)), panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "latency", "overhead", "candidates", "criterion score", "criterion errors", "queue",
                  "batch size", "training jobs"):  # fmt: skip
        assert topic in titles, f"the dashboard lacks a {topic!r} panel"


# ---------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    stage: int
    name: str
    args: str


def dockerfile(name: str) -> list[Instruction]:
    """Instructions with continuations joined and comments dropped; `stage` counts FROMs (0 = before the first)."""
    lines = [ln for ln in (DEPLOY / name).read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out, stage = [], 0
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        stage += instruction.upper() == "FROM"
        out.append(Instruction(stage, instruction.upper(), " ".join(args.split())))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in instructions:
        if i.name == "ENV":
            env.update(pair.split("=", 1) for pair in i.args.split())
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form: {args}"
    return value


def pip_installs(instructions: list[Instruction]) -> list[str]:
    return [m.strip() for i in instructions if i.name == "RUN" for m in re.findall(r"pip install ([^;&]*)", i.args)]


IMAGES = ("Dockerfile.gateway", "Dockerfile.reward-server", "Dockerfile.trainer")


def test_the_gateway_image_installs_the_postgres_extra_without_torch() -> None:
    instructions = dockerfile("Dockerfile.gateway")
    installs = pip_installs(instructions)
    assert installs == ["'.[postgres]'"], f"the gateway image installs the core and the postgres extra, got {installs}"
    project = _pyproject()["project"]
    postgres = project["optional-dependencies"]["postgres"]
    assert any(d.startswith("psycopg") for d in postgres), postgres
    for deps in (project["dependencies"], postgres):
        assert not any(re.match(r"(torch|transformers|vllm)\b", d) for d in deps), deps
    build = [i.args for i in instructions if i.name == "RUN" and "pip install '.[postgres]'" in i.args]
    assert build and "find_spec('torch') is not None" in build[0], "the build must fail when torch gets in"
    settings = check_gateway_env(env_of(final_stage(instructions)), "Dockerfile.gateway ENV")
    assert settings.host == "0.0.0.0" and settings.store_url.startswith("sqlite:////data/")
    assert settings.training_worker is False, "no torch: this image can never run a training job"
    assert settings.jobs_dir.startswith("/"), "the store keeps the snapshot's absolute path"


def test_the_reward_server_and_trainer_images_carry_torch_on_a_cuda_base() -> None:
    server = dockerfile("Dockerfile.reward-server")
    base = next(i.args for i in server if i.name == "ARG" and i.args.startswith("BASE_IMAGE="))
    assert "nvidia/cuda:" in base and "-runtime-" in base
    installs = " ".join(pip_installs(server))
    assert "'.[train]'" in installs and "'.[train,vllm]'" in installs
    assert "WITH_VLLM" in " ".join(i.args for i in server)
    trainer = " ".join(pip_installs(dockerfile("Dockerfile.trainer")))
    assert "'.[train,lora,gguf,postgres]'" in trainer, "the training worker runs from this image and opens the store"
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"train", "lora", "gguf", "vllm", "postgres"} <= set(extras)
    assert "rewardgate" in _pyproject()["project"]["scripts"], "the worker runs `rewardgate serve` from this image"


@pytest.mark.parametrize("name", IMAGES)
def test_images_run_as_a_numeric_non_root_user_with_a_health_check(name: str) -> None:
    final = final_stage(dockerfile(name))
    users = [i.args for i in final if i.name == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"{name}: USER must be a numeric non-root uid:gid"
    healthchecks = [i.args for i in final if i.name == "HEALTHCHECK"]
    assert len(healthchecks) == 1, f"{name}: one explicit HEALTHCHECK (NONE for a batch job)"
    entrypoint = exec_form(next(i.args for i in final if i.name == "ENTRYPOINT"))
    cmd = exec_form(next(i.args for i in final if i.name == "CMD"))
    assert entrypoint[0] in _pyproject()["project"]["scripts"], f"{name}: {entrypoint} is not a console script"
    parser = {"rewardgate": gateway_parser, "rewardgate-rm": reward_server_parser, "rewardgate-train": trainer_parser}
    if cmd != ["--help"]:
        parses(parser[entrypoint[0]](), cmd)
    if name == "Dockerfile.trainer":
        assert healthchecks == ["NONE"]
        return
    probe = exec_form(healthchecks[0].split(" CMD ", 1)[1])
    assert probe[0] == "rewardgate-healthcheck"
    parses(healthcheck_module().build_parser(), probe[1:])


def test_images_copy_only_what_dockerignore_lets_through() -> None:
    allowed = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    for name in IMAGES:
        for i in dockerfile(name):
            if i.name != "COPY" or "--from=" in i.args:
                continue
            *sources, _ = [a for a in i.args.split() if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
                assert source in allowed, f"{name}: COPY {source} is excluded by .dockerignore"


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---------------------------------------------------------------- docker compose

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Compose's variable substitution (`${X:-default}`, `${X}`, `$X`, `$$`) with `env` (empty: the defaults)."""
    env = env or {}
    if isinstance(value, str):

        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            return env.get(name) or (m.group(2) or "")

        return _VARIABLE.sub(one, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def merge(base: Any, override: Any) -> Any:
    """Maps merge key by key, anything else is replaced: Helm's rule, and compose's for the keys the overlays set."""
    return RENDER.merge_values(base, override)


def compose(*overlays: str) -> dict[str, Any]:
    config = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for overlay in overlays:
        config = merge(config, yaml.safe_load((DEPLOY / overlay).read_text()))
    resolved: dict[str, Any] = interpolate(config)
    return resolved


def rm_port(command: Sequence[str]) -> int:
    port: int = parses(reward_server_parser(), command).port
    return port


COMPOSE_OVERLAYS = [(), ("docker-compose.gpu.yml",), ("docker-compose.sqlite.yml",)]
COMPOSE_IDS = ["base", "gpu", "sqlite"]


def image_dockerfiles() -> dict[str, str]:
    """Image name (no tag) -> the Dockerfile that builds it, from compose's build sections."""
    services = compose()["services"].values()
    return {s["image"].rsplit(":", 1)[0]: Path(s["build"]["dockerfile"]).name for s in services if "build" in s}


def image_process(dockerfile_name: str) -> tuple[list[str], list[str], dict[str, str]]:
    """ENTRYPOINT, CMD and ENV of an image's final stage."""
    final = final_stage(dockerfile(dockerfile_name))
    entrypoint = exec_form(next(i.args for i in final if i.name == "ENTRYPOINT"))
    return entrypoint, exec_form(next(i.args for i in final if i.name == "CMD")), env_of(final)


def compose_process(service: Mapping[str, Any]) -> tuple[list[str], dict[str, str]] | None:
    """argv and environment of a service built from one of our Dockerfiles (None for postgres, prometheus...):
    Docker's rules, a new entrypoint drops the image's CMD; the image's ENV, then the service's environment."""
    if "build" not in service:
        return None
    entrypoint, cmd, env = image_process(Path(service["build"]["dockerfile"]).name)
    command = service.get("command", [] if "entrypoint" in service else cmd)
    environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return [*service.get("entrypoint", entrypoint), *command], env | environment


def compose_servers(services: Mapping[str, Any]) -> dict[str, GatewaySettings]:
    """Service name -> settings of every service whose process is `rewardgate serve` (a gateway or a worker)."""
    out = {}
    for name, service in services.items():
        process = compose_process(service)
        if process and process[0][0] == "rewardgate" and (settings := serve_settings(process[0][1:], process[1])):
            out[name] = settings
    return out


def compose_mount(service: Mapping[str, Any], path: str) -> tuple[str, str, bool]:
    """(source, target, read-only) of the service's volume that holds `path`: the deepest mount above it."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if path == target or path.startswith(target.rstrip("/") + "/"):
            mounts.append((source, target, "ro" in mode))
    assert mounts, f"no volume holds {path} (volumes: {service.get('volumes')})"
    return max(mounts, key=lambda m: len(m[1]))


def test_compose_runs_the_stack_with_health_checks_and_declared_volumes() -> None:
    config = compose()
    services = config["services"]
    assert set(services) == {
        "gateway", "training-worker", "reward-server", "trainer", "postgres", "prometheus", "grafana"
    }  # fmt: skip
    assert "version" not in config, "the Compose Specification has no version key"
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s missing healthcheck"
        if name != "trainer":
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in config["volumes"], f"{name}: volume {source} is not declared"
    assert services["trainer"]["profiles"] == ["train"], "the trainer is a job: `up` must not start it"
    assert all(
        service.get("build", {}).get("context") == ".." for service in services.values() if "build" in service
    ), "images build from the repository root"


def test_compose_settings_flags_and_probes_are_ones_the_programs_accept() -> None:
    for overlays in COMPOSE_OVERLAYS:
        services = compose(*overlays)["services"]
        gateway = services["gateway"]
        settings = check_gateway_env(gateway["environment"], f"compose {overlays} gateway")
        assert settings.reward_server_url == f"http://reward-server:{rm_port(services['reward-server']['command'])}"
        if "docker-compose.sqlite.yml" in overlays:
            assert settings.store_url.startswith("sqlite:////data/")
            assert "gateway-data:/data" in gateway["volumes"]
        else:
            assert re.fullmatch(r"postgresql://rewardgate:[^@]+@postgres:5432/rewardgate", settings.store_url)
        health = healthcheck_module().build_parser()
        for name in ("gateway", "training-worker", "reward-server"):
            parses(health, services[name]["healthcheck"]["test"][2:])
        check_gateway_env(services["training-worker"]["environment"], f"compose {overlays} worker", worker=True)
        args = parses(trainer_parser(), services["trainer"]["command"])
        assert args.models_dir == "/models" and "models:/models" in services["trainer"]["volumes"]
        assert "models:/models:ro" in services["reward-server"]["volumes"]
    gpu = compose("docker-compose.gpu.yml")["services"]
    assert parses(reward_server_parser(), gpu["reward-server"]["command"]).device == "cuda"
    for name in ("reward-server", "training-worker", "trainer"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    postgres = compose()["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == "rewardgate" and postgres["POSTGRES_DB"] == "rewardgate"


@pytest.mark.parametrize("overlays", COMPOSE_OVERLAYS, ids=COMPOSE_IDS)
def test_compose_runs_exactly_one_training_worker_sharing_jobs_store_and_models(overlays: tuple[str, ...]) -> None:
    config = compose(*overlays)
    services = config["services"]
    servers = compose_servers(services)
    assert set(servers) == {"gateway", "training-worker"}, servers
    workers = sorted(name for name, settings in servers.items() if settings.training_worker)
    assert workers == ["training-worker"], f"exactly one process runs training jobs (gateway/jobs.py), got {workers}"
    for name in servers:  # said in compose, not left to an image default
        assert "REWARDGATE_TRAINING_WORKER" in services[name]["environment"], name
    worker_service = services["training-worker"]
    assert worker_service.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in worker_service
    assert Path(worker_service["build"]["dockerfile"]).name == "Dockerfile.trainer", "training needs torch"
    assert Path(services["gateway"]["build"]["dockerfile"]).name == "Dockerfile.gateway"
    gateway, worker = servers["gateway"], servers["training-worker"]
    assert worker.store_url == gateway.store_url and worker.reward_server_url == gateway.reward_server_url
    check_trainer_args(worker, f"compose {overlays}")

    # The jobs dir: an absolute path in the store, written by the gateway, read by the worker: one volume, one path.
    assert worker.jobs_dir == gateway.jobs_dir and worker.jobs_dir.startswith("/")
    gateway_jobs = compose_mount(services["gateway"], gateway.jobs_dir)
    worker_jobs = compose_mount(worker_service, worker.jobs_dir)
    assert gateway_jobs == worker_jobs, f"the jobs dir must be the same volume at the same path: {gateway_jobs}"
    assert gateway_jobs[0] in config["volumes"] and not gateway_jobs[2], "a named volume the gateway writes"
    if gateway.store_url.startswith("sqlite:"):  # both processes open one SQLite file: on the same local volume
        path = gateway.store_url.removeprefix("sqlite:///")
        assert compose_mount(services["gateway"], path) == compose_mount(worker_service, path)

    # The models: written by the worker's trainers, read by the reward server.
    models_dir = parses(reward_server_parser(), services["reward-server"]["command"]).models_dir
    assert worker.models_dir == models_dir
    worker_models = compose_mount(worker_service, worker.models_dir)
    server_models = compose_mount(services["reward-server"], models_dir)
    assert worker_models[0] == server_models[0] and worker_models[0] in config["volumes"]
    assert (worker_models[2], server_models[2]) == (False, True), "read-write in the worker, read-only in the server"

    # Up and probed like the gateway, without privileges.
    probe = parses(healthcheck_module().build_parser(), worker_service["healthcheck"]["test"][2:])
    assert probe.command == "gateway" and probe.url is None, "the probe finds the port in REWARDGATE_PORT"
    assert worker_service["environment"]["REWARDGATE_PORT"] == str(worker.port)
    assert worker_service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in worker_service["security_opt"]
    assert str(worker_service.get("user", "10001")).split(":")[0] not in ("0", "root")
    assert worker_service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_prometheus_scrapes_every_process_and_grafana_is_provisioned() -> None:
    services = compose()["services"]
    servers = compose_servers(services)
    expected = {f"{name}:{settings.port}" for name, settings in servers.items()}
    expected |= {f"reward-server:{rm_port(services['reward-server']['command'])}"}
    assert all(settings.host == "0.0.0.0" for settings in servers.values()), "Prometheus scrapes them from outside"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == expected
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in prometheus["scrape_configs"])
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]

    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "rewardgate.yml").read_text())["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert DASHBOARD.parent.name == "dashboards" and DASHBOARD.exists()


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("overlays", COMPOSE_OVERLAYS, ids=COMPOSE_IDS)
def test_docker_compose_config_accepts_the_files(overlays: tuple[str, ...]) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    files = [arg for name in ("docker-compose.yml", *overlays) for arg in ("-f", name)]
    result = subprocess.run(
        [*command, *files, "config", "-q"], cwd=DEPLOY, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(DEPLOY)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the Helm chart


def test_the_template_interpreter_follows_go_semantics(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("name: t\nversion: 0.0.1\nappVersion: '1'\n")
    engine = GoTemplate(tmp_path, {"m": {"b": 2, "a": 1}, "l": []})
    run = engine.render_string

    assert run("a\n  {{- if .Values.l }}x{{ else if .Values.m.a }}y{{ else }}z{{ end -}}\n  b") == "ayb"
    assert run("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}") == "a=1;b=2;"
    assert run("{{ range .Values.l }}x{{ else }}empty{{ end }}") == "empty"
    assert run('{{- define "t" -}}[{{ . }}]{{- end -}}{{ include "t" "v" | upper | quote }}') == '"[V]"'
    assert run('{{ printf "%s-%v" "a" 8 | trunc 3 | trimSuffix "-" }} {{ and 1 (not false) }}') == "a-8 true"
    with pytest.raises(TemplateFailure, match="stop"):
        run('{{ if gt (int "3") 1 }}{{ fail "stop" }}{{ end }}')
    with pytest.raises(RENDER.TemplateError, match="no value 'missing'"):
        run("{{ .Values.missing }}")
    # a variable lives until the end of its block; one declared in a block shadows the outer one there only
    assert run("{{- $x := .Values.m.a }}{{ if true }}{{ $x := 5 }}{{ $x }}{{ end }}{{ $x }}{{ gt 2 $x }}") == "51true"


def chart_values(*overlays: str, **changes: Any) -> dict[str, Any]:
    """values.yaml, then `overlays`, then `changes` (`section__key=value`)."""
    values: dict[str, Any] = RENDER.load_values(CHART, [CHART / o for o in overlays])
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = values
        for key in parents:
            target = target[key]
        target[last] = value
    return values


def manifests(*overlays: str, **changes: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, rendered with values.yaml, then `overlays`, then `changes` (`section__key=value`)."""
    docs = GoTemplate(CHART, chart_values(*overlays, **changes)).render_all()
    out = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "two manifests share a kind and name"
    return out


SCALE = "ci/scale-values.yaml"


def one(rendered: Mapping[tuple[str, str], dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    [doc] = [d for (k, n), d in rendered.items() if k == kind and n.endswith(suffix)]
    return doc


def test_chart_metadata_and_values_match_the_schema() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "rewardgate" and meta["version"] and meta["appVersion"]
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for overlays in ((), (SCALE,)):
        jsonschema.Draft7Validator(schema).validate(chart_values(*overlays))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(merge(chart_values(), {"rewardServer": {"engine": "onnx"}}))


@pytest.mark.parametrize("overlays", [(), (SCALE,)], ids=["default", "scale"])
def test_chart_renders_deployments_with_probes_resources_and_non_root_pods(overlays: tuple[str, ...]) -> None:
    rendered = manifests(*overlays)
    claims = {n for (k, n) in rendered if k == "PersistentVolumeClaim"}
    for suffix in ("-gateway", "-training-worker", "-reward-server"):
        deployment = one(rendered, "Deployment", suffix)
        pod = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), f"{suffix}: selector does not match its pods"
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
        [container] = pod["spec"]["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), suffix
        assert "memory" in container["resources"]["limits"], suffix
        assert container["readinessProbe"] and container["livenessProbe"], suffix
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, mount
        service = one(rendered, "Service", suffix)
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for p in container["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize("overlays", [(), (SCALE,)], ids=["default", "scale"])
def test_the_gateway_gets_real_settings_and_finds_the_reward_server(overlays: tuple[str, ...]) -> None:
    rendered = manifests(*overlays)
    values = chart_values(*overlays)
    [container] = one(rendered, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"]
    parses(gateway_parser(), container["args"])
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env |= rendered["ConfigMap", source["configMapRef"]["name"]]["data"]
        else:
            env |= rendered["Secret", source["secretRef"]["name"]]["stringData"] or {}
    env |= {e["name"]: e.get("value", "<from a secret>") for e in container["env"]}
    settings = check_gateway_env(env, f"chart {overlays} gateway")
    service = one(rendered, "Service", "-reward-server")
    port = service["spec"]["ports"][0]["port"]
    assert settings.reward_server_url == f"http://{service['metadata']['name']}:{port}"
    assert settings.port == container["ports"][0]["containerPort"]
    if values["postgres"]["url"]:
        assert settings.store_url == values["postgres"]["url"]
        assert "strategy" not in one(rendered, "Deployment", "-gateway")["spec"]
    else:
        assert settings.store_url == "sqlite:////data/rewardgate.db"
        assert one(rendered, "Deployment", "-gateway")["spec"]["strategy"]["type"] == "Recreate"
    secret = [d for (k, _), d in rendered.items() if k == "Secret"]
    assert all(v for d in secret for v in (d["stringData"] or {}).values()), "empty keys stay out of the Secret"


def test_the_reward_server_asks_for_a_gpu_and_is_ready_on_its_models() -> None:
    rendered = manifests(SCALE)
    values = chart_values(SCALE)["rewardServer"]
    deployment = one(rendered, "Deployment", "-reward-server")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = parses(reward_server_parser(), container["args"])
    assert (args.models_dir, args.device, args.compile, args.port) == ("/models", "cuda", True, values["port"])
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[0] == "rewardgate-healthcheck"
    parsed = parses(healthcheck_module().build_parser(), probe[1:])
    assert parsed.models.split(",") == values["preloadModels"] and parsed.port == values["port"]
    calls = 2 + len(values["preloadModels"])  # /health, a warm-up per model, /health
    assert parsed.timeout * calls <= container["readinessProbe"]["timeoutSeconds"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    assert deployment["spec"]["replicas"] == 2


Rendered = Mapping[tuple[str, str], dict[str, Any]]
SECRET = "<from a secret>"


def container_env(rendered: Rendered, container: Mapping[str, Any]) -> dict[str, str]:
    """What a container's environment holds: envFrom in order, then env (a secretKeyRef reads as SECRET)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= rendered["ConfigMap", source["configMapRef"]["name"]]["data"]
        elif ("Secret", source["secretRef"]["name"]) in rendered:  # not a Secret of the user's: keys unknown here
            env |= rendered["Secret", source["secretRef"]["name"]]["stringData"] or {}
    return env | {e["name"]: e.get("value", SECRET) for e in container.get("env", [])}


def store_url_source(rendered: Rendered, container: Mapping[str, Any]) -> tuple[str, ...]:
    """Where REWARDGATE_STORE_URL comes from: ("value", url) or ("secret", name, key). env wins over envFrom."""
    for entry in container.get("env", []):
        if entry["name"] == "REWARDGATE_STORE_URL":
            if "value" in entry:
                return ("value", entry["value"])
            ref = entry["valueFrom"]["secretKeyRef"]
            return ("secret", ref["name"], ref["key"])
    for source in reversed(container.get("envFrom", [])):
        if "configMapRef" in source:
            data = rendered["ConfigMap", source["configMapRef"]["name"]]["data"]
            if "REWARDGATE_STORE_URL" in data:
                return ("value", data["REWARDGATE_STORE_URL"])
        else:
            name = source["secretRef"]["name"]
            if "REWARDGATE_STORE_URL" in (rendered.get(("Secret", name), {}).get("stringData") or {}):
                return ("secret", name, "REWARDGATE_STORE_URL")
    raise AssertionError(f"{container['name']}: no REWARDGATE_STORE_URL")


def chart_argv(container: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """A container's argv and its image's ENV; Kubernetes' rules: command replaces the image's ENTRYPOINT (and
    drops its CMD), args replace CMD."""
    entrypoint, cmd, env = image_process(image_dockerfiles()[container["image"].rsplit(":", 1)[0]])
    args = container.get("args", [] if "command" in container else cmd)
    return [*container.get("command", entrypoint), *args], env


@dataclass
class Server:
    """A Deployment's `rewardgate serve` container: how many processes it runs and with which settings."""

    deployment: dict[str, Any]
    container: dict[str, Any]
    settings: GatewaySettings
    processes: int  # replicas, or the HPA's maximum


def chart_servers(rendered: Rendered) -> dict[str, Server]:
    """Deployment name -> its `rewardgate serve` container (gateways and the training worker)."""
    hpa = {d["spec"]["scaleTargetRef"]["name"]: d["spec"]["maxReplicas"]
           for (k, _), d in rendered.items() if k == "HorizontalPodAutoscaler"}  # fmt: skip
    out = {}
    for (kind, name), deployment in rendered.items():
        if kind != "Deployment":
            continue
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            argv, image_env = chart_argv(container)
            if argv[0] != "rewardgate":
                continue
            env = container_env(rendered, container)
            assert "REWARDGATE_TRAINING_WORKER" in env, f"{name}: the chart must say whether this process runs jobs"
            settings = serve_settings(argv[1:], image_env | env)
            assert settings is not None, f"{name}: {argv}"
            out[name] = Server(deployment, container, settings, hpa.get(name, deployment["spec"].get("replicas", 1)))
    return out


def pod_mount(deployment: Mapping[str, Any], container: Mapping[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """(volume, mountPath) of the container's mount that holds `path` (the deepest); the volume's readOnly and the
    mount's are folded into the volume's `readOnly` key."""
    mounts = [m for m in container["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]  # fmt: skip
    assert mounts, f"{container['name']}: nothing mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    volume = {k: v for k, v in volume.items() if k != "name"}
    read_only = bool(mount.get("readOnly")) or bool(volume.get("persistentVolumeClaim", {}).get("readOnly"))
    return {**volume, "readOnly": read_only}, mount["mountPath"]


def claim_of(volume: Mapping[str, Any]) -> str:
    assert "persistentVolumeClaim" in volume, f"a volume every pod shares, got {volume}"
    name: str = volume["persistentVolumeClaim"]["claimName"]
    return name


TOPOLOGIES = {
    "default": ((), {}),
    "scale": ((SCALE,), {}),
    "existing-secrets": ((SCALE,), {"secrets__existingSecret": "provider-keys", "postgres__url": "",
                                    "postgres__existingSecret": "pg", "postgres__existingSecretKey": "dsn"}),
    "postgres-replicas-cpu-worker": ((), {"postgres__url": "postgresql://u:p@db:5432/rg", "gateway__replicas": 3,
                                          "trainingWorker__trainerArgs": ["--threads=2"]}),
    "existing-claims": ((SCALE,), {"models__existingClaim": "models", "jobs__existingClaim": "jobs"}),
}  # fmt: skip


@pytest.mark.parametrize(("overlays", "changes"), TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
def test_the_chart_runs_exactly_one_training_worker_sharing_jobs_store_and_models(
    overlays: tuple[str, ...], changes: dict[str, Any]
) -> None:
    rendered = manifests(*overlays, **changes)
    values = chart_values(*overlays, **changes)
    servers = chart_servers(rendered)
    workers = {name: server.processes for name, server in servers.items() if server.settings.training_worker}
    assert list(workers.values()) == [1], f"exactly one process runs training jobs (gateway/jobs.py), got {workers}"
    [(worker_name, worker)] = [(n, s) for n, s in servers.items() if s.settings.training_worker]
    [(gateway_name, gateway)] = [(n, s) for n, s in servers.items() if n.endswith("-gateway")]
    assert set(servers) == {gateway_name, worker_name} and worker_name.endswith("-training-worker")
    assert gateway.settings.training_worker is False
    postgres = bool(values["postgres"]["url"] or values["postgres"]["existingSecret"])
    expected_gateways = values["gateway"]["autoscaling"]["maxReplicas"] if values["gateway"]["autoscaling"]["enabled"] \
        else values["gateway"]["replicas"]  # fmt: skip
    assert gateway.processes == expected_gateways and (postgres or expected_gateways == 1)

    # One worker, also during an update; torch from the trainer image; the gateways' store and reward servers.
    spec = worker.deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert image_dockerfiles()[worker.container["image"].rsplit(":", 1)[0]] == "Dockerfile.trainer"
    assert store_url_source(rendered, worker.container) == store_url_source(rendered, gateway.container)
    assert worker.settings.reward_server_url == gateway.settings.reward_server_url
    [gateway_secret] = [s["secretRef"]["name"] for s in gateway.container["envFrom"] if "secretRef" in s]
    [api_keys] = [e["valueFrom"]["secretKeyRef"] for e in worker.container["env"] if e["name"] == "REWARDGATE_API_KEYS"]
    assert api_keys == {"name": gateway_secret, "key": "REWARDGATE_API_KEYS", "optional": True}, "the gateways' keys"
    assert not any("secretRef" in source for source in worker.container["envFrom"]), "no provider keys"
    check_gateway_env(container_env(rendered, worker.container), worker_name, worker=True)
    check_trainer_args(worker.settings, worker_name)
    assert worker.settings.training_concurrency == values["trainingWorker"]["concurrency"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker.container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert worker.container["ports"][0]["containerPort"] == worker.settings.port
    worker_pod = worker.deployment["spec"]["template"]["metadata"]["labels"]
    gateway_pod = gateway.deployment["spec"]["template"]["metadata"]["labels"]
    gateway_service = one(rendered, "Service", "-gateway")["spec"]["selector"]
    assert not gateway_service.items() <= worker_pod.items(), "no client traffic reaches the worker"

    # The jobs dir: the accepting gateway's absolute path in the store, so one volume at one path in every pod.
    assert worker.settings.jobs_dir == gateway.settings.jobs_dir and worker.settings.jobs_dir.startswith("/")
    gateway_jobs = pod_mount(gateway.deployment, gateway.container, gateway.settings.jobs_dir)
    worker_jobs = pod_mount(worker.deployment, worker.container, worker.settings.jobs_dir)
    assert gateway_jobs[1] == worker_jobs[1] and claim_of(gateway_jobs[0]) == claim_of(worker_jobs[0])
    assert not gateway_jobs[0]["readOnly"], "the gateway writes the snapshots"
    claim = claim_of(worker_jobs[0])
    if postgres:  # gateways and the worker on any nodes: a ReadWriteMany claim (the chart's, or the user's)
        if not values["jobs"]["existingClaim"]:
            assert "ReadWriteMany" in rendered["PersistentVolumeClaim", claim]["spec"]["accessModes"]
        assert "affinity" not in worker.deployment["spec"]["template"]["spec"] or values["trainingWorker"]["affinity"]
    else:  # SQLite: the gateway's ReadWriteOnce volume, also the store: the worker must run on the gateway's node
        assert claim.endswith("-gateway-data") and worker.settings.store_url == gateway.settings.store_url
        path = gateway.settings.store_url.removeprefix("sqlite:///")
        assert pod_mount(worker.deployment, worker.container, path) == pod_mount(
            gateway.deployment, gateway.container, path
        )
        [term] = worker.deployment["spec"]["template"]["spec"]["affinity"]["podAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= gateway_pod.items()
        assert not term["labelSelector"]["matchLabels"].items() <= worker_pod.items()

    # The models: written by the worker's trainers, read (read-only) by the reward servers, on one claim.
    server = one(rendered, "Deployment", "-reward-server")
    [server_container] = server["spec"]["template"]["spec"]["containers"]
    models_dir = parses(reward_server_parser(), server_container["args"]).models_dir
    worker_models = pod_mount(worker.deployment, worker.container, worker.settings.models_dir)
    server_models = pod_mount(server, server_container, models_dir)
    assert (worker_models[1], claim_of(worker_models[0])) == (models_dir, claim_of(server_models[0]))
    assert (worker_models[0]["readOnly"], server_models[0]["readOnly"]) == (False, True)
    if not values["models"]["existingClaim"]:
        claim = claim_of(server_models[0])
        assert "ReadWriteMany" in rendered["PersistentVolumeClaim", claim]["spec"]["accessModes"]


@pytest.mark.parametrize("overlays", [(), (SCALE,)], ids=["default", "scale"])
def test_the_training_worker_asks_for_gpus_only_when_told(overlays: tuple[str, ...]) -> None:
    rendered = manifests(*overlays)
    gpus = chart_values(*overlays)["trainingWorker"]["gpus"]
    pod = one(rendered, "Deployment", "-training-worker")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    tolerations = [t["key"] for t in pod.get("tolerations", [])]
    if gpus:
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus and "nvidia.com/gpu" in tolerations
    else:
        assert "nvidia.com/gpu" not in {**container["resources"]["requests"], **container["resources"]["limits"]}
        assert "nvidia.com/gpu" not in tolerations, "a CPU worker must not take a GPU node"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


@pytest.mark.parametrize("overlays", [(), (SCALE,)], ids=["default", "scale"])
def test_the_training_worker_can_be_left_out(overlays: tuple[str, ...]) -> None:
    rendered = manifests(*overlays, trainingWorker__enabled=False)
    assert not any("training-worker" in name for _, name in rendered)
    assert not any(k == "PersistentVolumeClaim" and n.endswith("-jobs") for k, n in rendered)
    servers = chart_servers(rendered)
    assert servers and not any(s.settings.training_worker for s in servers.values()), "jobs then stay PENDING"
    manifests(*overlays, trainingWorker__enabled=False, gateway__persistence__enabled=False)  # no shared volume needed


def test_scale_out_uses_an_hpa_a_service_monitor_and_secrets() -> None:
    rendered = manifests(SCALE)
    hpa = one(rendered, "HorizontalPodAutoscaler")
    gateway = one(rendered, "Deployment", "-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": gateway["metadata"]["name"]}  # fmt: skip
    assert "replicas" not in gateway["spec"], "with an HPA the Deployment leaves replicas to it"
    monitor = one(rendered, "ServiceMonitor")
    services = [d for (k, _), d in rendered.items() if k == "Service"]
    assert len(services) == 3, "gateway, training worker (for its metrics), reward server"
    for service in services:
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    secret = one(rendered, "Secret")["stringData"]
    assert set(secret) == {"OPENAI_API_KEY", "REWARDGATE_API_KEYS", "REWARDGATE_STORE_URL"}
    assert not any(k == "PersistentVolumeClaim" and n.endswith("-gateway-data") for k, n in rendered)
    default = manifests()
    assert not any(k in ("HorizontalPodAutoscaler", "ServiceMonitor") for k, _ in default)


def test_existing_secrets_replace_the_charts_own() -> None:
    rendered = manifests(SCALE, secrets__existingSecret="provider-keys", postgres__url="",
                         postgres__existingSecret="pg", postgres__existingSecretKey="dsn")  # fmt: skip
    assert not any(k == "Secret" for k, _ in rendered)
    [container] = one(rendered, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "provider-keys"}} in container["envFrom"]
    [store] = [e for e in container["env"] if e["name"] == "REWARDGATE_STORE_URL"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "dsn"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"gateway__replicas": 2}, "needs Postgres"),
        ({"gateway__autoscaling__enabled": True}, "needs Postgres"),
        ({"gateway__settings__store_url": "sqlite:///x.db"}, "gateway.settings.store_url: the chart sets"),
        ({"gateway__settings__training_worker": "true"}, "gateway.settings.training_worker: the chart sets"),
        ({"gateway__settings__jobs_dir": "/jobs"}, "gateway.settings.jobs_dir: the chart sets"),
        ({"gateway__settings__trainer_args": "--threads=2"}, "use trainingWorker"),
        ({"gateway__persistence__enabled": False}, "trainingWorker on SQLite needs gateway.persistence"),
        ({"trainingWorker__affinity": {"nodeAffinity": {}}}, "the chart sets the worker's affinity"),
        ({"postgres__url": "postgresql://u:p@db/rg", "secrets__existingSecret": "mine"}, "postgres.existingSecret"),
    ],
)
def test_the_chart_refuses_what_cannot_work(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(TemplateFailure, match=reason):
        manifests(**change)


def test_the_chart_renders_with_helm_where_it_is_installed(tmp_path: Path) -> None:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed; the other chart tests render it with render_chart.py")
    subprocess.run([helm, "lint", str(CHART), "--strict"], check=True, capture_output=True, timeout=120)
    for overlays in ((), (SCALE,)):
        files = [a for o in overlays for a in ("-f", str(CHART / o))]
        result = subprocess.run(
            [helm, "template", "rg", str(CHART), *files], capture_output=True, text=True, timeout=120, check=True
        )
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        ours = manifests(*overlays)
        assert {(d["kind"], d["metadata"]["name"]) for d in docs} == set(ours)


# ---------------------------------------------------------------- the health-check script


class _Servable:
    memory_bytes = 100
    queue_size = 0

    async def score(self, conversations: Sequence[Any], tools: Any = None) -> ScoreResult:
        return ScoreResult(tuple(0.5 for _ in conversations), 3)

    async def aclose(self) -> None:
        return None


def _store(root: Path) -> Path:
    folder = root / "support-rm" / "v1"
    folder.mkdir(parents=True)
    (folder / "rewardgate.json").write_text(json.dumps({"slug": "support-rm", "version": "v1"}))
    return root


def _probe_reward_server(models_dir: Path, models: Sequence[str]) -> tuple[str | None, list[Any]]:
    """The readiness check against the real reward-server app (its /health and /v1/score), with a fake model."""
    loads: list[Any] = []

    def loader(version: Any) -> _Servable:
        loads.append(version.key)
        return _Servable()

    app = create_app(ServerSettings(models_dir=str(models_dir)), loader=loader)
    with TestClient(app) as client:

        def fetch(method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
            response = client.request(method, url, content=body)  # the TestClient has no timeouts
            return response.status_code, response.content

        problem = healthcheck_module().check_reward_server("http://rm", models, fetch, 5.0)
    return problem, loads


def test_reward_server_readiness_warms_up_the_listed_models(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert _probe_reward_server(store, []) == (None, [])  # nothing to wait for: ready, nothing loaded
    problem, loads = _probe_reward_server(store, ["support-rm", "support-rm@v1"])
    assert problem is None and loads == ["support-rm@v1"]
    problem, _ = _probe_reward_server(store, ["support-rm@v2"])
    assert problem and "support-rm@v2" in problem and "404" in problem
    problem, _ = _probe_reward_server(tmp_path / "absent", [])
    assert problem and "503" in problem


def test_the_health_check_exits_1_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    health = healthcheck_module()

    def refused(method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        raise ConnectionRefusedError(111, "Connection refused")

    assert health.main(["gateway"], fetch=lambda *_: (200, b'{"status": "ok"}')) == 0
    assert health.main(["gateway", "--url", "http://x/health"], fetch=lambda *_: (503, b"")) == 1
    assert health.main(["reward-server", "--models", "a"], fetch=refused) == 1
    assert "Connection refused" in capsys.readouterr().err
    health_body = json.dumps({"status": "ok", "loaded": [{"model": "a", "version": "v3"}]}).encode()
    assert health.main(["reward-server", "--models", "a,a@v3"], fetch=lambda *_: (200, health_body)) == 0
