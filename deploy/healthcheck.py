#!/usr/bin/env python3
"""Container health checks for the rewardgate images, stdlib only (the slim gateway image has no curl).

`rewardgate-healthcheck gateway`: healthy when the gateway's GET /health answers 2xx.
`rewardgate-healthcheck reward-server [--models a,b@v2]`: ready when GET /health is ok and every listed model is
loaded. A listed model that is not gets one tiny warm-up score request, which starts its load; the server shields a
load from its client going away, so a probe that times out still leaves the model loading for the next probe.
Exit 0 when healthy, 1 when not (the reason on stderr). Imports nothing from the project: it runs in every image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# (method, url, JSON body or None, timeout seconds) -> (status, body); raises OSError when there is no answer.
Fetch = Callable[[str, str, bytes | None, float], tuple[int, bytes]]

WARM_UP = {"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}


def urllib_fetch(method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:  # a 4xx/5xx answer is still an answer
        return exc.code, exc.read()


def check_gateway(url: str, fetch: Fetch, timeout: float) -> str | None:
    """None when healthy, else the reason."""
    status, _ = fetch("GET", url, None, timeout)
    return None if 200 <= status < 300 else f"{url} answered {status}"


def check_reward_server(base_url: str, models: Sequence[str], fetch: Fetch, timeout: float) -> str | None:
    """None when /health is ok and every model in `models` (`slug` or `slug@vN`) is loaded, else the reason."""
    health_url = base_url.rstrip("/") + "/health"
    status, body = fetch("GET", health_url, None, timeout)
    if status != 200:
        return f"{health_url} answered {status}"
    missing = _missing(json.loads(body), models)
    if not missing:
        return None
    problems = []
    for model in missing:
        payload = json.dumps({"model": model, "conversations": [list(WARM_UP)]}).encode()
        try:
            status, answer = fetch("POST", base_url.rstrip("/") + "/v1/score", payload, timeout)
        except OSError:  # a timeout: the load goes on in the server, the next probe sees it
            continue
        if status != 200:
            problems.append(f"{model}: warm-up answered {status}: {_message(answer)}")
    status, body = fetch("GET", health_url, None, timeout)
    missing = _missing(json.loads(body), models) if status == 200 else list(missing)
    if missing:
        return "; ".join(problems) or f"not loaded yet: {', '.join(missing)}"
    return None


def _missing(health: Mapping[str, Any], models: Sequence[str]) -> list[str]:
    loaded = {(str(m["model"]), str(m["version"])) for m in health.get("loaded", [])}
    slugs = {slug for slug, _ in loaded}
    missing = []
    for model in models:
        slug, _, version = model.partition("@")
        is_loaded = (slug, version) in loaded if version else slug in slugs
        if not is_loaded:
            missing.append(model)
    return missing


def _message(answer: bytes) -> str:
    try:
        return str(json.loads(answer)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return answer[:200].decode(errors="replace")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardgate-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP call")
    commands = parser.add_subparsers(dest="command", required=True)
    gateway = commands.add_parser("gateway", help="GET the gateway's /health")
    gateway.add_argument("--url", help="default: http://127.0.0.1:$REWARDGATE_PORT/health (port 8080 when unset)")
    server = commands.add_parser("reward-server", help="the reward server's /health, with models loaded")
    server.add_argument("--port", type=int, default=8081)
    server.add_argument("--url", help="base URL (default: http://127.0.0.1:PORT)")
    server.add_argument("--models", default="", help="comma-separated models that must be loaded: slug or slug@vN")
    return parser


def main(argv: Sequence[str] | None = None, fetch: Fetch = urllib_fetch) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "gateway":
            url = args.url or f"http://127.0.0.1:{os.environ.get('REWARDGATE_PORT') or 8080}/health"
            problem = check_gateway(url, fetch, args.timeout)
        else:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            problem = check_reward_server(args.url or f"http://127.0.0.1:{args.port}", models, fetch, args.timeout)
    except (OSError, ValueError) as exc:  # no answer, or /health not JSON
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
