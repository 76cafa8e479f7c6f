"""The Helm chart as real Helm renders it (Helm v4's Go SDK, tests/deploy/tools.py): lint, the Kubernetes schemas,
probes, resources, non-root pods, real settings, the alerting rules, and the training-jobs topology of
gateway/service/jobs.py. Every test but the values-schema one skips, saying why, without the tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.cli import build_parser as gateway_parser
from gateway.reward_serving.cli import build_parser as reward_server_parser
from tests.deploy.common import (
    CHART,
    DEPLOY,
    SCALE,
    TOPOLOGIES,
    chart_servers,
    chart_values,
    check_gateway_env,
    check_trainer_args,
    claim_of,
    container_env,
    documents,
    healthcheck_module,
    image_dockerfiles,
    manifests,
    merge,
    one,
    parses,
    pod_mount,
    render,
    store_url_source,
    user_values,
)
from tests.deploy.tools import ChartRefused, RenderedChart, helm, run, tool

VALUES_FILES = sorted(p.relative_to(CHART).as_posix() for p in (CHART / "ci").glob("*.yaml"))  # the documented ones

# The oldest and the newest Kubernetes whose schemas kubernetes-validate 1.37.0 bundles.
KUBERNETES = ("1.25.0", "1.37.0")

# The Prometheus Operator's kinds: no Kubernetes schema has them (the tests below check their content).
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_chart_metadata_and_values_match_the_schema() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "rewardgate" and meta["version"] and meta["appVersion"]
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for overlays in ((), *((f,) for f in VALUES_FILES)):
        jsonschema.Draft7Validator(schema).validate(merge(defaults, user_values(*overlays)))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(merge(defaults, {"rewardServer": {"engine": "onnx"}}))


@pytest.mark.parametrize("overlays", [(), *((f,) for f in VALUES_FILES)], ids=["default", *VALUES_FILES])
def test_helm_lints_the_chart_strictly(overlays: tuple[str, ...]) -> None:
    [result] = helm().render(CHART, [user_values(*overlays)], lint=True)
    assert isinstance(result, RenderedChart), result
    report = result.lint
    assert report is not None and report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is info, such as "icon is recommended"
    assert not report["errors"] and not problems, report


# Every values set the tests render: the documented files and the topologies below.
VARIANTS = {"default": ((), {}), **{f: ((f,), {}) for f in VALUES_FILES}, **TOPOLOGIES}


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_rendered_manifest_is_valid_for_kubernetes(version: str, tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    files = []
    for name, (overlays, changes) in VARIANTS.items():
        docs = [d for d in documents(render(*overlays, **changes)) if d["kind"] not in OPERATOR_KINDS]
        files.append(tmp_path / f"{name.replace('/', '_')}.yaml")
        files[-1].write_text(yaml.safe_dump_all(docs))
    done = run([validate, "--strict", "--quiet", "--kubernetes-version", version, *map(str, files)])
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr

    # and the check bites: a field Kubernetes does not know fails
    bad = tmp_path / "bad.yaml"
    service = one(manifests(), "Service", "-gateway")
    bad.write_text(yaml.safe_dump({**service, "spec": {**service["spec"], "clusterIPz": "None"}}))
    assert run([validate, "--strict", "--quiet", "--kubernetes-version", version, str(bad)]).returncode != 0


def test_the_prometheus_rule_carries_the_alerting_rules_promtool_accepts(tmp_path: Path) -> None:
    rendered = manifests(SCALE)
    rule = one(rendered, "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts, "the chart's rules are deploy/prometheus/alerts.yml (files/alerts.yml links there)"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump(rule["spec"]))
    done = run([tool("promtool"), "check", "rules", str(extracted)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(k == "PrometheusRule" for k, _ in manifests()), "off by default: it needs the operator's CRDs"


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


@pytest.mark.parametrize(("overlays", "changes"), TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
def test_the_chart_runs_exactly_one_training_worker_sharing_jobs_store_and_models(
    overlays: tuple[str, ...], changes: dict[str, Any]
) -> None:
    rendered = manifests(*overlays, **changes)
    values = chart_values(*overlays, **changes)
    servers = chart_servers(rendered)
    workers = {name: server.processes for name, server in servers.items() if server.settings.training_worker}
    assert list(workers.values()) == [1], f"exactly one process runs training jobs (service/jobs.py), got {workers}"
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
        ({"rewardServer__engine": "onnx"}, "(?s)values: .*/rewardServer/engine"),  # values.schema.json, applied by Helm
        ({"gateway__replicas": "2"}, "(?s)values: .*/gateway/replicas"),
    ],
)
def test_the_chart_refuses_what_cannot_work(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ChartRefused, match=reason):
        manifests(**change)
