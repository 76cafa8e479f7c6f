"""Shared helpers of the deploy/ checks (tests/deploy/test_*.py): loading the scripts, parsing Dockerfiles,
compose files, the dashboard's queries and the chart as real Helm renders it, and the settings/flags the programs
accept."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

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
from gateway.service.training import JobSpec, trainer_argv
from tests.deploy.tools import ChartRefused, RenderedChart, helm
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
    """The trainer command line the worker builds for a job (gateway/service/training.py) parses with the
    trainer's parser."""
    spec = JobSpec("job_1", "support-rm", f"{settings.jobs_dir}/job_1/data.jsonl")
    argv = trainer_argv(spec, Path(settings.models_dir), trainer_args=settings.trainer_args)
    args = parses(trainer_parser(), argv)
    assert args.models_dir == settings.models_dir, f"{where}: {argv}"


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


_GRAFANA_RANGES = re.compile(r"\$(?:__(rate_interval|interval|range)\b|\{__(rate_interval|interval|range)\})")


@dataclass(frozen=True)
class PanelQuery:
    """One query of a dashboard panel, read from the dashboard JSON: the one source of the queries that
    test_dashboard.py checks by name and test_prometheus.py runs in a real Prometheus."""

    panel: str  # the panel's title
    ref_id: str
    expr: str
    legend: str

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref_id}]"

    def promql(self, window_s: int) -> str:
        """The expression as Grafana sends it to Prometheus: its range variables ($__rate_interval...) set to
        `window_s` seconds."""
        return _GRAFANA_RANGES.sub(f"{window_s}s", self.expr)


def panel_queries() -> list[PanelQuery]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


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


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


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
    """Maps merge key by key, anything else is replaced: Helm's rule for `-f` files, and compose's for the keys the
    overlays set."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in override.items()}}
    return override


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


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def user_values(*overlays: str, **changes: Any) -> dict[str, Any]:
    """What `helm template -f <overlay>... --set <changes>` hands Helm: the overlays (chart-relative files) merged
    in order, then `changes` (`section__key=value`)."""
    values: dict[str, Any] = {}
    for overlay in overlays:
        values = merge(values, yaml.safe_load((CHART / overlay).read_text()) or {})
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = values
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return values


@functools.cache
def _render(values_json: str) -> RenderedChart | ChartRefused:
    [result] = helm().render(CHART, [json.loads(values_json)])
    return result


def render(*overlays: str, **changes: Any) -> RenderedChart:
    """The chart as real Helm renders it with values.yaml, then `overlays`, then `changes`; ChartRefused is raised
    when Helm refuses (the test skips without Helm)."""
    result = _render(json.dumps(user_values(*overlays, **changes), sort_keys=True))
    if isinstance(result, ChartRefused):
        raise result
    return result


def chart_values(*overlays: str, **changes: Any) -> dict[str, Any]:
    """The values the templates saw: Helm's coalescing of values.yaml under `overlays` and `changes`."""
    values: dict[str, Any] = json.loads(json.dumps(render(*overlays, **changes).values))  # a copy to change freely
    return values


def documents(rendered: RenderedChart) -> list[dict[str, Any]]:
    return [d for text in rendered.manifests.values() for d in yaml.safe_load_all(text) if d]


def manifests(*overlays: str, **changes: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, as real Helm renders the chart with values.yaml, then `overlays`, then `changes`
    (`section__key=value`)."""
    docs = documents(render(*overlays, **changes))
    out = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "two manifests share a kind and name"
    return out


SCALE = "ci/scale-values.yaml"


def one(rendered: Mapping[tuple[str, str], dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    [doc] = [d for (k, n), d in rendered.items() if k == kind and n.endswith(suffix)]
    return doc


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
