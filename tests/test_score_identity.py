"""DESIGN contract 2: the score the trainer computes for a conversation is the score the server returns.

A model is trained by `trainer.train`, written to a model store, and served by the reward server
over HTTP (ASGI transport). Both sides run fp32 on CPU; they batch differently (the trainer sorts
one list, the server merges concurrent requests and may compute a prompt shared by a request's
conversations once), so the tolerance is float32 summation-order noise: 1e-5 absolute.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.formats import load_pairs
from gateway.reward_serving.server import ServerSettings, create_app
from tests import tiny
from trainer.config import SAMPLE_DATA, TrainConfig
from trainer.evaluate import load_reward_model, score_conversations
from trainer.train import train

TOLERANCE = 1e-5


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_trainer_and_server_scores_are_identical(kind: str, tmp_path: Path) -> None:
    base = tiny.save_base(tmp_path / "base", kind)
    cfg = TrainConfig(
        base_model=str(base),
        models_dir=str(tmp_path / "models"),
        slug="identity-rm",
        epochs=1,
        max_pairs=64,
        batch_size="8",
        learning_rate=2e-3,
        precision="fp32",
        progress=False,
        max_length=1024,
    )
    out = train(cfg).output
    pairs = load_pairs(SAMPLE_DATA).split("TEST")[:12]
    conversations = [c for p in pairs for c in (p.chosen_conversation, p.rejected_conversation)]
    model, tokenizer, meta = load_reward_model(out, "cpu")
    expected = score_conversations(model, tokenizer, conversations, meta["max_length"])

    async def served() -> list[float]:
        app = create_app(ServerSettings(models_dir=str(tmp_path / "models"), device="cpu"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rm") as client:
            # one request per pair, concurrently, so the server's batcher merges them its own way
            replies = await asyncio.gather(
                *(
                    client.post(
                        "/v1/score",
                        json={
                            "model": "identity-rm@v1",
                            "conversations": [[m.to_dict() for m in c] for c in conversations[i : i + 2]],
                        },
                    )
                    for i in range(0, len(conversations), 2)
                )
            )
        scores: list[float] = []
        for reply in replies:
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert (body["model"], body["version"]) == ("identity-rm", "v1")
            scores.extend(item["score"] for item in sorted(body["data"], key=lambda d: d["index"]))
        return scores

    got = asyncio.run(served())
    assert len(got) == len(expected) == 24
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= TOLERANCE
    assert max(expected) - min(expected) > 100 * TOLERANCE  # the scores differ between conversations: not vacuous
