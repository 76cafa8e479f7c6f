"""The app's middleware (gateway.proxy): gateway keys guard /v1/* only, and the body limit and malformed JSON answer
before any handler's work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings
from tests.gateway.fakes import (
    MESSAGES,
    FakeUpstream,
    running_gateway,
)

pytestmark = pytest.mark.anyio


def chat(model: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


# ---------------------------------------------------------------- auth and limits


async def test_api_keys_guard_v1_routes_only(tmp_path: Path, upstream: FakeUpstream, models_dir: Path) -> None:
    settings = GatewaySettings(api_keys=("gw-key-1", "gw-key-2"))
    async with running_gateway(tmp_path, upstream, models_dir, settings=settings) as gw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic gw-key-1"}):
            response = await gw.client.post("/v1/chat/completions", json=chat(), headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
            assert (await gw.client.get("/v1/logs", headers=headers)).status_code == 401
        ok = await gw.client.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer gw-key-2"})
        assert ok.status_code == 200
        assert (await gw.client.get("/health")).status_code == 200 and (
            await gw.client.get("/metrics")
        ).status_code == 200
    assert len(upstream.bodies) == 1


async def test_body_limit_and_malformed_json(tmp_path: Path, upstream: FakeUpstream, models_dir: Path) -> None:
    async with running_gateway(tmp_path, upstream, models_dir, settings=GatewaySettings(max_body_bytes=200)) as gw:
        big = chat(messages=[{"role": "user", "content": "x" * 500}])
        assert (await gw.client.post("/v1/chat/completions", json=big)).status_code == 413
        for raw in (b"{not json", b"[1, 2]"):
            response = await gw.client.post("/v1/chat/completions", content=raw)
            assert response.status_code == 400 and response.json()["error"]["param"] == "body"
        response = await gw.client.post("/v1/chat/completions", json={"model": "ok", "messages": [], "n": 2})
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert upstream.bodies == []
