"""What bench/budgeted_bon.py works on (its steps 1 and 2): the reward models it trains once (`ensure_models`, TRAIN)
and their TEST statistics, the candidates it replays, and the upstream that replays them: SmolLM2-135M's own
samples of support and AlpacaEval prompts (`generate_pool`, cached in WORK), RewardBench's Tulu-2-13B answers with
their GPT-4-turbo judge preferences (`tulu_pool`), each candidate kept as SmolLM2 token pieces, and
`ReplayProvider`, a ChatProvider that serves them (streams one token per chunk at a set rate) and counts the tokens
each request was sent. Reads ../shared/data, never copies it into the project.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from selection_bon import in_half, prompt_key  # its replayed half: prompts mix-rm never trained on

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "external"
ALPACA = SHARED / "prompts" / "alpaca_eval_805.jsonl"
TULU = SHARED / "rewardbench_bon" / "bon_candidates_TRAIN.jsonl.gz"
SUPPORT = ROOT / "trainer" / "samples" / "support_pairs.jsonl"
WORK = ROOT / ".bench" / "budgeted_bon"
POOL_N = 16  # candidates per prompt
PROMPTS_PER_CALL = 4  # SmolLM2 samples this many prompts' candidates per generate call
TRAIN = {
    "support-rm": [],  # the trainer's defaults: MiniLM on the bundled sample
    # the default recipe also trained on the answers' heads (--partial-prefixes): its partial scores predict its finals
    "support-partial-rm": ["--partial-prefixes", "16,32,48,64,96,128"],
    "smol-rm": ["--base-model", "smollm2", "--batch-size", "8", "--learning-rate", "2e-5", "--freeze-layers", "24",
                "--freeze-embeddings", "--epochs", "1", "--time-budget-s", "300"],
}  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- 1. reward models


def ensure_models(models: Path) -> None:
    for slug, args in TRAIN.items():
        if list(models.glob(f"{slug}/v*/rewardgate.json")):
            continue
        log(f"training {slug} (once; later runs reuse it)")
        command = [sys.executable, "-m", "trainer", "train", "--models-dir", str(models), "--slug", slug, *args]
        subprocess.run([*command, "--no-progress"], check=True, cwd=ROOT)


def reward_stats(models: Path, slug: str) -> tuple[str, float, float, float | None]:
    """(version, mean, std, pairwise accuracy) of the newest version's raw rewards on its TEST split."""
    version = max((p.parent for p in models.glob(f"{slug}/v*/rewardgate.json")), key=lambda p: int(p.name[1:]))
    card = json.loads((version / "rewardgate.json").read_text())
    stats = card["reward_stats"]
    accuracy = (card.get("metrics") or {}).get("test", {}).get("accuracy")
    return version.name, float(stats["mean"]), float(stats["std"]), accuracy


# ---------------------------------------------------------------- 2. candidates


def load_prompts(count: int, phase: float = 0.0) -> list[list[dict[str, str]]]:
    """`count` prompts, half the bundled support sample's, half AlpacaEval's, evenly spaced through each; `phase`
    (0-1) shifts the picks by that fraction of the spacing, so phase 0.5 gives prompts disjoint from phase 0's."""
    support: list[list[dict[str, str]]] = []
    for line in SUPPORT.read_text().splitlines():
        prompt = json.loads(line)["messages"][:-1]
        if prompt not in support:
            support.append(prompt)
    alpaca = [json.loads(line)["messages"] for line in ALPACA.read_text().splitlines()]
    half = count // 2
    return [support[int((i + phase) * len(support) / half)] for i in range(half)] + [
        alpaca[int((i + phase) * len(alpaca) / (count - half))] for i in range(count - half)
    ]


def generate_pool(prompts: Sequence[list[dict[str, str]]], max_tokens: int) -> dict[str, Any]:
    """POOL_N samples of each prompt, as token pieces (piece k = the text token k adds), with the model's speed."""
    key = hashlib.sha256(json.dumps([prompts, max_tokens, POOL_N, "bf16", PROMPTS_PER_CALL]).encode()).hexdigest()[:16]
    cached = WORK / f"pool-{key}.json"
    if cached.exists():
        return dict(json.loads(cached.read_text()))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # bf16, and PROMPTS_PER_CALL prompts' candidates per generate call (left-padded): on this CPU a decode step costs
    # nearly as much for 16 rows as for 64, so sampling 256-token answers for dozens of prompts takes minutes.
    path = Path.home() / ".cache" / "rewardgate" / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    configured = model.generation_config.eos_token_id
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
    entries, seconds, steps = [], 0.0, 0
    for first in range(0, len(prompts), PROMPTS_PER_CALL):
        group = prompts[first : first + PROMPTS_PER_CALL]
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in group]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(first)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                                 max_new_tokens=max_tokens, num_return_sequences=POOL_N,
                                 pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        seconds += time.perf_counter() - started
        steps += out.shape[1] - batch["input_ids"].shape[1]
        generated = out[:, batch["input_ids"].shape[1] :].tolist()
        for p, messages in enumerate(group):
            rows, finish = [], []
            for row in generated[p * POOL_N : (p + 1) * POOL_N]:
                end = next((k for k, t in enumerate(row) if t in eos), None)
                row = row if end is None else row[:end]  # the EOS token sends no text
                pieces, before = [], ""
                for k in range(len(row)):
                    now = tokenizer.decode(row[: k + 1], skip_special_tokens=True)
                    pieces.append(now[len(before) :])
                    before = now
                rows.append(pieces)
                finish.append("length" if end is None else "stop")
            entries.append({"messages": messages, "rows": rows, "finish": finish, "judge": None})
            log(f"sampled prompt {first + p + 1}/{len(prompts)}: mean {statistics.mean(map(len, rows)):.0f} tokens")
    pool = {
        "entries": entries,
        "generate_s": seconds,
        "decode_steps_per_s": steps / seconds,
        "rows": POOL_N * PROMPTS_PER_CALL,
    }
    cached.write_text(json.dumps(pool))
    return pool


def tulu_pool(count: int, skip: int = 0) -> dict[str, Any]:
    """RewardBench's 16 Tulu-2-13B answers of `count` prompts of bench/selection_bon.py's replayed half (prompts no
    pair of its mix, hence mix-rm, came from), in id order after the first `skip`, keeping those whose candidates
    0-10 all have a judge preference; each answer cut into SmolLM2 tokens by the tokenizer's character offsets."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path.home() / ".cache" / "rewardgate" / "smollm2-135m-instruct")
    with gzip.open(TULU, "rt") as fh:
        rows = sorted((json.loads(line) for line in fh), key=lambda r: str(r["id"]))
    rows = [r for r in rows if in_half("bon-replay:", prompt_key(r["messages"]))]
    rows = [r for r in rows if all(v is not None for v in r["judge_preference"][:11])][skip : skip + count]
    entries = []
    for row in rows:
        pieces_of = []
        for text in row["candidates"]:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            cuts = [0, *(end for _, end in offsets[:-1]), len(text)]
            pieces_of.append([text[a:b] for a, b in itertools.pairwise(cuts)])
        judge = [None if v is None else v - 1 for v in row["judge_preference"]]
        entries.append({"messages": row["messages"], "rows": pieces_of, "finish": ["stop"] * POOL_N, "judge": judge})
    return {"entries": entries}


# ---------------------------------------------------------------- the replay upstream


class ReplayProvider:
    """A ChatProvider serving the sampled candidates of each named pool as model `replay:<name>`: seed s + i ->
    sample i of the prompt; streams one token per chunk at `rate` tokens/s. `sent` counts the tokens each request
    got before it ended or was closed."""

    name = "replay"
    native_n = True

    def __init__(self, pools: Mapping[str, Sequence[Mapping[str, Any]]], rate: float) -> None:
        self._entries = {(name, json.dumps(e["messages"])): e for name, pool in pools.items() for p in pool
                         for e in p["entries"]}  # fmt: skip
        self._rate = rate
        self.sent: Counter[str] = Counter()  # request tag -> tokens sent
        self.closed_early = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _rows(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        return self._entries[body["model"], json.dumps(body["messages"])], int(body.get("seed") or 0)

    async def complete(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        entry, seed = self._rows(body)
        rows = [(seed + i) % POOL_N for i in range(int(body.get("n") or 1))]
        longest = max(len(entry["rows"][r]) for r in rows)
        await asyncio.sleep(longest / self._rate)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": "".join(entry["rows"][r])},
             "finish_reason": entry["finish"][r]}
            for i, r in enumerate(rows)
        ]  # fmt: skip
        tokens = sum(len(entry["rows"][r]) for r in rows)
        self.sent[str(body.get("user"))] += tokens
        usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
        return {"id": "replay", "object": "chat.completion", "created": 0, "model": "replay", "choices": choices,
                "usage": usage}  # fmt: skip

    async def stream(self, body: Mapping[str, Any], timeout: float) -> AsyncIterator[bytes]:
        entry, seed = self._rows(body)
        row = seed % POOL_N
        pieces = entry["rows"][row]
        head = {"id": "replay", "object": "chat.completion.chunk", "created": 0, "model": "replay"}
        sent = 0
        try:
            for k, piece in enumerate(pieces):
                await asyncio.sleep(1 / self._rate)
                delta = {"role": "assistant", "content": piece} if k == 0 else {"content": piece}
                chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                sent += 1
                self.sent[str(body.get("user"))] += 1
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            last = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": entry["finish"][row]}]}
            usage = {"prompt_tokens": 0, "completion_tokens": len(pieces), "total_tokens": len(pieces)}
            yield b"data: " + json.dumps(last).encode() + b"\n\n"
            yield b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if sent < len(pieces):
                self.closed_early += 1
