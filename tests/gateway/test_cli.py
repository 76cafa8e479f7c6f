"""GatewaySettings (file < environment < flags) and the composition root: `rewardgate serve`'s wiring, run for real
against the fake upstream with the reward server embedded (no uvicorn: the app is driven over ASGI)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.cli import build_app, build_parser, embedded_reward_settings, main, resolve_settings
from gateway.config import GatewaySettings
from tests.gateway.fakes import KEY, MESSAGES, fake_upstream
from tests.tiny import save_causal_lm, save_reward_model

pytestmark = pytest.mark.anyio


def test_settings_precedence_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('port = 9000\nmax_n = 4\napi_keys = ["gw-secret-1", "gw-secret-2"]\nupstream_models = "x,y"\n')
    args = vars(build_parser().parse_args(["serve", "--config", str(config), "--max-n", "8"]))
    settings = resolve_settings(args, environ={"REWARDGATE_PORT": "9100", "REWARDGATE_CRITERIA_TIMEOUT_S": "2.5"})
    assert (settings.port, settings.max_n, settings.criteria_timeout_s) == (9100, 8, 2.5)
    assert settings.api_keys == ("gw-secret-1", "gw-secret-2") and settings.upstream_models == ("x", "y")
    assert "gw-secret" not in repr(settings) and settings.public()["api_keys"] == "<2 set>"
    json_config = tmp_path / "gateway.json"
    json_config.write_text('{"device": "cpu"}')
    assert GatewaySettings.from_file(json_config, environ={}).device == "cpu"


@pytest.mark.parametrize(
    "changes",
    [{"nope": 1}, {"port": "eighty"}, {"device": "tpu"}, {"reward_dtype": "float16"}, {"max_n": [1]}],
    ids=["unknown", "type", "choice", "dtype", "list"],
)
def test_bad_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        GatewaySettings().replace(**changes)


def test_serve_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--models-dir", "--store-url", "--reward-server-url", "--api-keys", "--max-n", "--max-body-bytes"):
        assert flag in out


def test_the_embedded_reward_server_gets_the_models_dir_device_and_dtype() -> None:
    argv = ["serve", "--models-dir", "m", "--device", "cpu", "--reward-dtype", "bfloat16"]
    args = vars(build_parser().parse_args(argv))
    reward = embedded_reward_settings(resolve_settings(args, environ={}))
    assert (reward.models_dir, reward.device, reward.dtype) == ("m", "cpu", "bfloat16")
    assert embedded_reward_settings(GatewaySettings()).dtype == "auto"


async def test_composition_root_wires_an_embedded_reward_server(tmp_path: Path) -> None:
    save_reward_model(tmp_path / "models" / "tiny-rm" / "v1", "tiny-rm", "v1")
    settings = GatewaySettings(models_dir=str(tmp_path / "models"), store_url=f"sqlite:///{tmp_path / 'logs.db'}")
    async with fake_upstream() as upstream:
        environ = {"OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": KEY}
        app = build_app(settings, environ=environ)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                body = {"model": "openai:ok", "messages": MESSAGES, "n": 2, "store": True}
                response = await client.post("/v1/chat/completions", json=body, headers={"op-criteria": '["tiny-rm"]'})
                assert response.status_code == 200, response.text
                info = response.json()["rewardgate"]
                assert info["criteria"] == {"tiny-rm": "v1"}
                log = (await client.get(f"/v1/logs/{info['log_id']}")).json()
                assert [c["status"] for c in log["candidates"]] == ["ok", "ok"]
    assert (tmp_path / "logs.db").is_file()


async def test_fallbacks_from_the_config_file_are_what_serve_routes_with(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'models_dir = "{tmp_path / "models"}"\nstore_url = "sqlite:///{tmp_path / "logs.db"}"\n'
        '[fallbacks]\n"openai:always-500" = ["openai:fail-second", "openai:ok"]\n'
    )
    settings = resolve_settings(vars(build_parser().parse_args(["serve", "--config", str(config)])), environ={})
    assert settings.fallbacks == {"openai:always-500": ("openai:fail-second", "openai:ok")}
    flagged = ["serve", "--fallbacks", '{"a:x": ["b:y"]}']
    assert resolve_settings(vars(build_parser().parse_args(flagged)), environ={}).fallbacks == {"a:x": ("b:y",)}
    with pytest.raises(ValueError, match="fallbacks"):
        GatewaySettings().replace(fallbacks='{"a:x": "b:y"}')
    async with fake_upstream() as upstream:
        app = build_app(settings, environ={"OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": KEY})
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                body = {"model": "openai:always-500", "messages": MESSAGES}
                response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        # the primary with its retries (3 attempts), then the first fallback, which answers its first call
        assert (upstream.counts["always-500"], upstream.counts["fail-second"], upstream.counts["ok"]) == (3, 1, 0)


@pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")  # LiteLLM's types
async def test_composition_root_serves_a_local_model_with_no_key(tmp_path: Path) -> None:
    import litellm

    save_reward_model(tmp_path / "models" / "tiny-rm" / "v1", "tiny-rm", "v1")
    settings = GatewaySettings(
        models_dir=str(tmp_path / "models"),
        store_url=f"sqlite:///{tmp_path / 'logs.db'}",
        local_model=str(save_causal_lm(tmp_path / "tiny-lm")),
        local_model_name="tiny",
        device="cpu",
    )
    app = build_app(settings, environ={})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            models = (await client.get("/v1/models")).json()
            assert "local:tiny" in [m["id"] for m in models["data"]]
            body = {"model": "local:tiny", "messages": MESSAGES, "n": 3, "max_tokens": 5, "seed": 0, "store": True}
            response = await client.post("/v1/chat/completions", json=body, headers={"op-criteria": '["tiny-rm"]'})
            assert response.status_code == 200, response.text
            data = response.json()
            assert [c["index"] for c in data["choices"]] == [0, 1, 2]
            assert all(c["criteria_results"]["tiny-rm"]["status"] == "success" for c in data["choices"])
            scores = [c["rewardgate"]["score"] for c in data["choices"]]
            assert scores == sorted(scores, reverse=True)
            log = (await client.get(f"/v1/logs/{data['rewardgate']['log_id']}")).json()
            assert [c["status"] for c in log["candidates"]] == ["ok", "ok", "ok"]
    assert all(item["provider"] != "local" for item in litellm.custom_provider_map)  # unregistered on exit
