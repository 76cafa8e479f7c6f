"""The Dockerfiles (extras, non-root users, health checks; hadolint) and docker compose (settings, flags, probes,
volumes, the one training worker; the Compose Specification's JSON schema through check-jsonschema), checked with
PyYAML and by `docker compose config` where one is installed; the health-check script. The hadolint and schema tests
skip, saying why, without their tools (tests/deploy/tools.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser as gateway_parser
from gateway.reward_serving.cli import build_parser as reward_server_parser
from tests.deploy.common import (
    COMPOSE_IDS,
    COMPOSE_OVERLAYS,
    DASHBOARD,
    DEPLOY,
    IMAGES,
    ROOT,
    _compose_command,
    _probe_reward_server,
    _pyproject,
    _store,
    check_gateway_env,
    check_trainer_args,
    compose,
    compose_mount,
    compose_servers,
    dockerfile,
    env_of,
    exec_form,
    final_stage,
    healthcheck_module,
    parses,
    pip_installs,
    rm_port,
)
from tests.deploy.tools import run, tool
from trainer.cli import build_parser as trainer_parser


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


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing_that_is_not_justified_inline(name: str) -> None:
    done = run([tool("hadolint"), "--no-color", str(DEPLOY / name)])
    assert done.returncode == 0 and not done.stdout.strip(), f"hadolint {name}:\n{done.stdout}{done.stderr}"
    # every finding silenced says why, in the comment right above, naming the rule
    lines = (DEPLOY / name).read_text().splitlines()
    for number, line in enumerate(lines):
        if m := re.fullmatch(r"# hadolint ignore=([\w,]+)", line.strip()):
            above = []
            for previous in reversed(lines[:number]):
                if not previous.startswith("#"):
                    break
                above.append(previous)
            for rule in m.group(1).split(","):
                assert any(rule in comment for comment in above), f"{name}:{number + 1}: say why {rule} is ignored"


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
    assert workers == ["training-worker"], f"exactly one process runs training jobs (service/jobs.py), got {workers}"
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


@pytest.mark.parametrize("overlays", COMPOSE_OVERLAYS, ids=COMPOSE_IDS)
def test_compose_files_follow_the_compose_specification(overlays: tuple[str, ...], tmp_path: Path) -> None:
    """Each file, and the merged stack with its variables at their defaults, against the Compose Specification's
    JSON schema (check-jsonschema's built-in copy: no network)."""
    merged = tmp_path / "merged.yml"
    merged.write_text(yaml.safe_dump(compose(*overlays)))
    files = [str(DEPLOY / name) for name in ("docker-compose.yml", *overlays)] + [str(merged)]
    done = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *files])
    assert done.returncode == 0, done.stdout + done.stderr


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
