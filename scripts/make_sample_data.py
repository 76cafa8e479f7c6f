# ruff: noqa: E501  (long template strings are data; wrapping them would hurt readability)
"""Generate rewardgate's own sample preference dataset: trainer/samples/support_pairs.jsonl.

What it makes: about 400 preference pairs (DESIGN contract 1, the seed format) for a
customer-support assistant of "Quillbox", a fictional company that sells a note-taking app on
subscription plans and tablets/accessories in its web store. Prompts are built from templates
and slot values (orders, refunds, passwords, two-factor, billing, plans, shipping, addresses,
API errors, bug reports, invoices, promo codes...), about 160 distinct prompts with 2-3 pairs
each. The chosen answer is helpful, specific and consistent with the prompt. The rejected one is
worse in exactly one recognisable way, spread evenly over six kinds:

  dismissive        refuses or brushes the user off without a reason
  generic           boilerplate that ignores the specifics of the question
  wrong_facts       a helpful-looking answer with a fact changed (order number, plan, product...)
  rude              blaming or condescending tone (sometimes with correct information)
  over_apologetic   long apologetic filler with no actual answer (longer than the chosen one)
  off_topic         a good answer to a different question

Length must not predict the label, so chosen/rejected variants are picked such that the chosen
answer is the longer one in about half of the pairs; the script prints that fraction.

Why: the project needs a small, licence-clean dataset it wrote itself, for tests, demos and quick
reward-model / DPO training runs. No text is copied from any other dataset; everything below is
written for this project. About a third of the prompts carry no "split" field, so the reader's
prompt-hash split is exercised; explicit splits are chosen per prompt, so all pairs of one prompt
stay on one side. A few rows carry "metadata" and a few prompts are short multi-turn chats.

Deterministic: stdlib only and a fixed seed; `python scripts/make_sample_data.py` rewrites the
file byte-identically on every run. `--out PATH` writes elsewhere.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the templates lie beside it
from sample_templates import (
    APOLOGY_CLOSERS,
    APOLOGY_FILLERS,
    APOLOGY_OPENERS,
    DISMISSIVE,
    GENERIC,
    GENERIC_ANY,
    INTENTS,
    MULTI_TURN_REPLY,
    OFF_TOPIC_LEADS,
    POOL_OF,
    RUDE_ANY,
    SEED,
    SYSTEM_PROMPTS,
    Intent,
)

N_PROMPTS = 160  # 80 prompts get 3 pairs, 80 get 2: 400 pairs
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "trainer" / "samples" / "support_pairs.jsonl"
MAX_CHARS = 620

REJECTION_TYPES = ("dismissive", "generic", "wrong_facts", "rude", "over_apologetic", "off_topic")

# ---------------------------------------------------------------- building


def fields_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def make_slots(intent: Intent, rng: random.Random) -> dict[str, str]:
    slots = {key: rng.choice(pool) for key, pool in intent.slots.items()}
    if intent.derive:
        intent.derive(slots)
    slots["topic"] = intent.topic
    return slots


def wrong_facts(intent: Intent, slots: dict[str, str], rng: random.Random) -> list[str]:
    """Helpful-looking answers with one fact (sometimes two) changed or swapped."""
    out: list[str] = []
    for template in intent.chosen * 2:  # two tries per template: a draw may change nothing
        used = [f for f in intent.facts if f in fields_of(template)]
        if not used:
            continue
        bad = dict(slots)
        if {"old_plan", "new_plan"} <= set(used) and rng.random() < 0.5:
            bad["old_plan"], bad["new_plan"] = slots["new_plan"], slots["old_plan"]  # contradicts the prompt
        else:
            for key in rng.sample(used, k=min(len(used), rng.choice((1, 1, 2)))):
                pool = POOL_OF.get(key, [])
                choices = [v for v in pool if v not in slots.values()]
                if choices:
                    bad[key] = rng.choice(choices)
        text = template.format(**bad)
        if text not in out and text not in (t.format(**slots) for t in intent.chosen):
            out.append(text)
    return out


def apology(topic: str, min_len: int, rng: random.Random) -> str:
    parts = [rng.choice(APOLOGY_OPENERS).format(topic=topic)]
    fillers = rng.sample(APOLOGY_FILLERS, k=len(APOLOGY_FILLERS))
    closer = rng.choice(APOLOGY_CLOSERS)
    while fillers and len(" ".join([*parts, closer])) <= min_len + 30:
        parts.append(fillers.pop().format(topic=topic))
    return " ".join([*parts, closer])


def rejected_candidates(kind: str, intent: Intent, slots: dict[str, str], rng: random.Random) -> list[str]:
    topic = intent.topic
    if kind == "dismissive":
        return [t.format(topic=topic) for t in rng.sample(DISMISSIVE, k=4)]
    if kind == "generic":
        return [*GENERIC[intent.category], rng.choice(GENERIC_ANY)]
    if kind == "wrong_facts":
        return wrong_facts(intent, slots, rng)
    if kind == "rude":
        return [t.format(**slots) for t in intent.rude] + [t.format(topic=topic) for t in rng.sample(RUDE_ANY, k=2)]
    if kind == "off_topic":
        others = [i for i in INTENTS if i.category != intent.category]
        out: list[str] = []
        for other in rng.sample(others, k=3):
            other_slots = make_slots(other, rng)
            lead = rng.choice(OFF_TOPIC_LEADS)
            out.extend(lead + t.format(**other_slots) for t in other.chosen)
        return out
    raise ValueError(kind)


@dataclass
class Prompt:
    intent: Intent
    slots: dict[str, str]
    messages: list[dict[str, str]]
    split: str | None


def build_prompts(rng: random.Random) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: set[str] = set()
    multi_turn_left = 4
    i = 0
    while len(prompts) < N_PROMPTS:
        intent = INTENTS[i % len(INTENTS)]
        i += 1
        slots = make_slots(intent, rng)
        user_text = rng.choice(intent.user).format(**slots)
        messages: list[dict[str, str]] = []
        r = rng.random()
        if r < 0.45:
            messages.append({"role": "system", "content": SYSTEM_PROMPTS[int(r * 100) % len(SYSTEM_PROMPTS)]})
        if intent.opener and multi_turn_left and rng.random() < 0.3:
            multi_turn_left -= 1
            messages.append({"role": "user", "content": intent.opener})
            messages.append({"role": "assistant", "content": rng.choice(MULTI_TURN_REPLY)})
        messages.append({"role": "user", "content": user_text})
        key = json.dumps(messages, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        # Per prompt: a third carry no split (the reader hashes the prompt); the rest get an
        # explicit one, so every pair of a prompt lands on the same side either way.
        split = None if rng.random() < 1 / 3 else ("TEST" if rng.random() < 0.13 else "TRAIN")
        prompts.append(Prompt(intent, slots, messages, split))
    return prompts


def build_rows(rng: random.Random) -> tuple[list[dict[str, Any]], Counter[str], Counter[str]]:
    prompts = build_prompts(rng)
    per_prompt = [3] * (N_PROMPTS // 2) + [2] * (N_PROMPTS - N_PROMPTS // 2)
    rng.shuffle(per_prompt)
    deck: list[str] = []
    rows: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    longer_by_kind: Counter[str] = Counter()  # pairs of each kind whose chosen answer is longer
    longer = 0
    for prompt, k in zip(prompts, per_prompt, strict=True):
        picked: list[str] = []
        while len(picked) < k:
            if not deck:
                deck = list(REJECTION_TYPES)
                rng.shuffle(deck)
            candidate = next((d for d in deck if d not in picked), None)
            if candidate is None:  # the deck's rest already used for this prompt: start a new deck
                deck = []
                continue
            deck.remove(candidate)
            picked.append(candidate)
        chosen_all = [t.format(**prompt.slots) for t in prompt.intent.chosen]
        for kind in picked:
            # Keep "chosen is longer" near 50 % overall: want it longer when it has been so in
            # fewer than half of the pairs so far.
            want_longer = longer * 2 < len(rows) or (longer * 2 == len(rows) and rng.random() < 0.5)
            if kind == "over_apologetic":
                chosen = min(chosen_all, key=len) if rng.random() < 0.6 else rng.choice(chosen_all[:2])
                rejected = apology(prompt.intent.topic, len(chosen), rng)
            else:
                candidates = rejected_candidates(kind, prompt.intent, prompt.slots, rng)
                combos = [(c, r) for c in chosen_all for r in candidates if r != c and len(r) <= MAX_CHARS]
                fitting = [(c, r) for c, r in combos if (len(c) > len(r)) == want_longer]
                chosen, rejected = rng.choice(fitting or combos)
            longer += len(chosen) > len(rejected)
            longer_by_kind[kind] += len(chosen) > len(rejected)
            row: dict[str, Any] = {
                "messages": [*prompt.messages, {"role": "assistant", "content": chosen}],
                "rejected_message": {"role": "assistant", "content": rejected},
            }
            if prompt.split is not None:
                row["split"] = prompt.split
            if len(rows) % 37 == 5:
                row["metadata"] = {
                    "source": "rewardgate synthetic support sample",
                    "intent": prompt.intent.name,
                    "rejection": kind,
                }
            rows.append(row)
            kinds[kind] += 1
    return rows, kinds, longer_by_kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSONL (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    rows, kinds, longer_by_kind = build_rows(rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(", ", ": ")) + "\n")

    # Report as the reader sees the file.
    sys.path.insert(0, str(ROOT))
    from gateway.formats import load_pairs  # the project's own reader (stdlib only)

    pairs = load_pairs(args.out).pairs
    train = sum(p.split == "TRAIN" for p in pairs)
    distinct = len({json.dumps([[m.role, m.content] for m in p.prompt]) for p in pairs})
    longer = sum(len(p.chosen.content) > len(p.rejected.content) for p in pairs)
    longest = max(max(len(p.chosen.content), len(p.rejected.content)) for p in pairs)
    print(f"wrote {args.out}")
    print(f"pairs: {len(pairs)}")
    print(f"TRAIN: {train}  TEST: {len(pairs) - train}  ({train / len(pairs):.1%} TRAIN)")
    print(f"distinct prompts: {distinct}")
    print(f"chosen longer than rejected: {longer}/{len(pairs)} = {longer / len(pairs):.1%}")
    print(
        f"rows without split: {sum('split' not in r for r in rows)}, with metadata: {sum('metadata' in r for r in rows)}"
    )
    print(f"longest answer: {longest} characters")
    print(
        "rejection types (pairs, chosen longer): "
        + ", ".join(f"{k} {kinds[k]} ({longer_by_kind[k]})" for k in REJECTION_TYPES)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
