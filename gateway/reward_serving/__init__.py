"""The reward-model server: batched scoring of conversations with versioned reward models (DESIGN contract 3).

Its own Starlette app, errors and metrics; `rewardgate-rm` / `python -m gateway.reward_serving` run it,
and the gateway may mount `server.create_app(...)` in-process through `httpx.ASGITransport`.
"""
