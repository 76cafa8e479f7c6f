"""The whole loop offline, in one process: train the default reward model on the bundled sample (once), start the
gateway with SmolLM2-135M-Instruct as the in-process `local` provider, send a best-of-N request with the `openai`
package, print the ranked candidates and the stored log, shut down.

    python scripts/demo.py [--models-dir models] [--store rewardgate.db] [--n 4] [--max-tokens 80]

A script, not a `rewardgate` subcommand, because it trains (trainer/) and resolves the `smollm2` alias through
trainer.bases, which owns the GGUF conversion and its cache; gateway/ may import neither (DESIGN import rules).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.cli import build_app
from gateway.config import GatewaySettings

SLUG = "support-rm"
QUESTION = (
    "Hi, my order QB-731904 (a Quillbox Folio tablet case) arrived with a torn strap. "
    "Can I get a replacement, and do I need to send the old one back?"
)


def ensure_reward_model(models_dir: Path) -> Path:
    """The newest complete `support-rm` version; trains one on the bundled sample if there is none."""
    done = sorted(
        (p.parent for p in models_dir.glob(f"{SLUG}/v*/rewardgate.json") if re.fullmatch(r"v\d+", p.parent.name)),
        key=lambda version: int(version.name[1:]),
    )
    if done:
        return done[-1]
    from trainer.config import TrainConfig
    from trainer.train import train

    print(f"== 1. training {SLUG} on the bundled sample (once; later runs reuse it)", flush=True)
    result = train(TrainConfig(models_dir=str(models_dir), slug=SLUG))
    print(f"TEST pairwise accuracy {result.test.accuracy:.3f} in {result.train_seconds:.0f} s", flush=True)
    return result.output


class BackgroundGateway:
    """`rewardgate serve` on a loopback socket the OS picked, run by uvicorn on its own thread and event loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))  # bound here, so the port is ours before the thread starts
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start() / stop() on the main thread
            self.error = exc

    async def _serve(self) -> None:
        import uvicorn

        app = build_app(self.settings, environ={})  # environ={}: no provider key is read or needed
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        await self.server.serve(sockets=[self.socket])

    def start(self, timeout_s: float = 300.0) -> None:
        """Start, and wait until it accepts requests (the lifespan has loaded the local model)."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not (self.server is not None and self.server.started):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {self.error!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout=60)
        self.socket.close()
        if self.error is not None:
            raise RuntimeError("the gateway failed") from self.error


def ask(base_url: str, model: str, n: int, max_tokens: int) -> dict[str, Any]:
    """The request an application makes: the `openai` package, a base_url and one extra header."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="local", max_retries=0, timeout=600)
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        n=n,
        max_tokens=max_tokens,
        temperature=0.8,
        top_p=0.95,
        seed=7,
        extra_headers={"op-criteria": json.dumps([SLUG])},
        extra_body={"store": True, "metadata": {"source": "demo"}},
    )
    return completion.model_dump()  # keeps the gateway's fields: criteria_results, rewardgate


def show(completion: dict[str, Any]) -> None:
    print(f"{'rank':>4} {'score':>6} {'reward':>8}  first line of the answer")
    for choice in completion["choices"]:
        result = choice["criteria_results"][SLUG]
        reward = f"{result['score']:8.3f}" if result["status"] == "success" else f"{'error':>8}"
        score = choice["rewardgate"]["score"]
        lines = (choice["message"]["content"] or "").strip().splitlines() or [""]
        print(f"{choice['index']:>4} {'-' if score is None else f'{score:.3f}':>6} {reward}  {lines[0][:100]}")
    usage = completion["usage"]
    print(f"usage: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens; criteria", end="")
    print(f" {completion['rewardgate']['criteria']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models-dir", default="models", help="reward-model store (default: models)")
    parser.add_argument("--store", default="rewardgate.db", help="SQLite log store (default: rewardgate.db)")
    parser.add_argument("--local-model", default="smollm2", help="alias or causal-LM directory (default: smollm2)")
    parser.add_argument("--n", type=int, default=4, help="candidates (default: 4)")
    parser.add_argument("--max-tokens", type=int, default=80, help="tokens per candidate (default: 80)")
    args = parser.parse_args(argv)

    rm_dir = ensure_reward_model(Path(args.models_dir))
    from trainer.bases import resolve_base

    name = "smollm2" if args.local_model == "smollm2" else Path(args.local_model).name
    settings = GatewaySettings(
        models_dir=args.models_dir,
        store_url=f"sqlite:///{args.store}",
        local_model=resolve_base(args.local_model),  # smollm2: the GGUF converted once into ~/.cache/rewardgate
        local_model_name=name,
    )
    print(f"== 2. gateway: reward model {rm_dir}, local:{name} from {settings.local_model}", flush=True)
    server = BackgroundGateway(settings)
    server.start()
    try:
        print(f"   listening on {server.url}", flush=True)
        print(f"== 3. best-of-{args.n}: {QUESTION}", flush=True)
        started = time.perf_counter()
        completion = ask(server.url, f"local:{name}", args.n, args.max_tokens)
        print(f"== 4. ranked candidates ({time.perf_counter() - started:.1f} s, best first)")
        show(completion)
        import httpx

        log_id = completion["rewardgate"]["log_id"]
        log = httpx.get(f"{server.url}/v1/logs/{log_id}", timeout=30).raise_for_status().json()
        print(f"== 5. stored log {log_id} (GET /v1/logs/{log_id})")
        print(json.dumps(log, indent=1))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
