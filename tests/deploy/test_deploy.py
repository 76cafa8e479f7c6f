"""deploy/: the dashboard queries only metrics the code exports, compose and the Helm chart render, and every setting,
flag and probe they pass is one the programs accept.

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
from gateway.config import ENV_PREFIX, GatewaySettings
from gateway.metrics import GatewayMetrics
from gateway.reward_serving.cli import build_parser as reward_server_parser
from gateway.reward_serving.metrics import RewardServerMetrics
from gateway.reward_serving.registry import ScoreResult
from gateway.reward_serving.server import ServerSettings, create_app
from trainer.cli import build_parser as trainer_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "rewardgate"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rewardgate.json"
SETTINGS = {f.name for f in fields(GatewaySettings)}
# Labels Prometheus adds to every series at scrape time (static configs, and the Prometheus Operator's).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
RUNTIME_ENV = {"PATH", "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}  # the images' own, not settings


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


def check_gateway_env(env: Mapping[str, str], where: str) -> GatewaySettings:
    """Every REWARDGATE_* variable is a GatewaySettings field and its value reads as that field's type."""
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    unknown = sorted(k for k in ours if k.removeprefix(ENV_PREFIX).lower() not in SETTINGS)
    assert not unknown, f"{where}: {unknown} are not GatewaySettings fields ({sorted(SETTINGS)})"
    provider = {k for k in env if k.endswith("_API_KEY")} | {"OPENAI_BASE_URL"}
    others = sorted(set(env) - set(ours) - provider - RUNTIME_ENV)
    assert not others, f"{where}: unexpected gateway variables {others}"
    return GatewaySettings().with_env(ours)  # raises on a value of the wrong type or choice


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


def test_the_gateway_image_installs_the_core_package_only_without_torch() -> None:
    instructions = dockerfile("Dockerfile.gateway")
    installs = pip_installs(instructions)
    assert installs == ["."], f"the gateway image must install the core package only, got {installs}"
    core = " ".join(json.dumps(_pyproject()["project"]["dependencies"]))
    assert "torch" not in core and "transformers" not in core
    assert any("find_spec('torch') is not None" in i.args for i in instructions if i.name == "RUN")
    settings = check_gateway_env(env_of(final_stage(instructions)), "Dockerfile.gateway ENV")
    assert settings.host == "0.0.0.0" and settings.store_url.startswith("sqlite:////data/")


def test_the_reward_server_and_trainer_images_carry_torch_on_a_cuda_base() -> None:
    server = dockerfile("Dockerfile.reward-server")
    base = next(i.args for i in server if i.name == "ARG" and i.args.startswith("BASE_IMAGE="))
    assert "nvidia/cuda:" in base and "-runtime-" in base
    installs = " ".join(pip_installs(server))
    assert "'.[train]'" in installs and "'.[train,vllm]'" in installs
    assert "WITH_VLLM" in " ".join(i.args for i in server)
    trainer = " ".join(pip_installs(dockerfile("Dockerfile.trainer")))
    assert "'.[train,lora,gguf]'" in trainer
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"train", "lora", "gguf", "vllm"} <= set(extras)


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


def test_compose_runs_the_stack_with_health_checks_and_declared_volumes() -> None:
    config = compose()
    services = config["services"]
    assert set(services) == {"gateway", "reward-server", "trainer", "postgres", "prometheus", "grafana"}
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
    for overlays in ((), ("docker-compose.gpu.yml",), ("docker-compose.sqlite.yml",)):
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
        for name in ("gateway", "reward-server"):
            parses(health, services[name]["healthcheck"]["test"][2:])
        args = parses(trainer_parser(), services["trainer"]["command"])
        assert args.models_dir == "/models" and "models:/models" in services["trainer"]["volumes"]
        assert "models:/models:ro" in services["reward-server"]["volumes"]
    gpu = compose("docker-compose.gpu.yml")["services"]
    assert parses(reward_server_parser(), gpu["reward-server"]["command"]).device == "cuda"
    for name in ("reward-server", "trainer"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    postgres = compose()["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == "rewardgate" and postgres["POSTGRES_DB"] == "rewardgate"


def test_prometheus_scrapes_both_processes_and_grafana_is_provisioned() -> None:
    services = compose()["services"]
    gateway_port = int(env_of(final_stage(dockerfile("Dockerfile.gateway")))["REWARDGATE_PORT"])
    expected = {f"gateway:{gateway_port}", f"reward-server:{rm_port(services['reward-server']['command'])}"}
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


@pytest.mark.parametrize(
    "overlays", [(), ("docker-compose.gpu.yml",), ("docker-compose.sqlite.yml",)], ids=["base", "gpu", "sqlite"]
)
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


def chart_values(*overlays: str) -> dict[str, Any]:
    values: dict[str, Any] = RENDER.load_values(CHART, [CHART / o for o in overlays])
    return values


def manifests(*overlays: str, **changes: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, rendered with values.yaml, then `overlays`, then `changes` (`section__key=value`)."""
    values = chart_values(*overlays)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = values
        for key in parents:
            target = target[key]
        target[last] = value
    docs = GoTemplate(CHART, values).render_all()
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
    for suffix in ("-gateway", "-reward-server"):
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


def test_scale_out_uses_an_hpa_a_service_monitor_and_secrets() -> None:
    rendered = manifests(SCALE)
    hpa = one(rendered, "HorizontalPodAutoscaler")
    gateway = one(rendered, "Deployment", "-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": gateway["metadata"]["name"]}  # fmt: skip
    assert "replicas" not in gateway["spec"], "with an HPA the Deployment leaves replicas to it"
    monitor = one(rendered, "ServiceMonitor")
    services = [d for (k, _), d in rendered.items() if k == "Service"]
    assert len(services) == 2
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
