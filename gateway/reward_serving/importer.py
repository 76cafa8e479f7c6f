"""Import a published reward model (`rewardgate-rm import`): a Hugging Face `*ForSequenceClassification`
checkpoint with one label (Skywork-Reward, the RewardBench leaders, any classifier with a single score) -> the
next version `<models_dir>/<slug>/vN` of the registry, with its `rewardgate.json` written last (DESIGN contract 2).
Imports formats (render, pairs, rated responses, the card's histogram) and the engine; never the web layer.

What it checks, in order, and refuses with what it found: the config names a `*ForSequenceClassification` (no
custom `auto_map` code: trust_remote_code stays off), with one label; the model loads; a probe conversation
renders through the model's OWN chat template (formats.render_responses uses a tokenizer's template when it has
one: the same render as the trainer and the server) and scores to one finite number. The saved directory is then
loaded back exactly as the reward server loads it (TorchRewardEngine.load) to score the probe and the calibration
file, whose responses give `reward_stats` (mean, std, histogram) and, for pairs, the pairwise accuracy.

Decisions: the checkpoint is saved in its own dtype (`dtype="auto"`), so a bf16 model stays bf16 on disk. A
tokenizer without a pad token gets its eos as pad (pooling reads the mask, never the pad id). `max_length` is the
model's own limit, capped at 4096 (`--max-length` overrides). Calibration uses every record of the file by default
(an imported model was trained on none of them); `--calibration-split TEST` restricts it like a trainer's card.
Without a calibration file the card's reward_stats are mean 0, std 1 (the gateway's fallback) and it says so.
The licence is the config's `license`, else the `license:` of README.md's front matter, else null.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.formats import (
    Message,
    PairSet,
    PreferencePair,
    RatedResponse,
    load_data,
    render_conversation,
    reward_histogram,
)

from .registry import CARD_FILE

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # the trainer's rule for --slug
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_LENGTH_CAP = 4096
PROBE = (
    Message("system", "You are a helpful support agent."),
    Message("user", "How do I reset my password?"),
    Message("assistant", "Open Settings > Security and choose Reset password; a link arrives by email."),
)


class ImportRefused(ValueError):
    """The source is not a reward model this server can serve; the message names what was found."""


@dataclass(frozen=True)
class Imported:
    directory: Path
    slug: str
    version: str
    card: dict[str, Any]


# ---------------------------------------------------------------- the checks (pure: config dicts in, reasons out)


def check_config(config: dict[str, Any], source: str) -> str:
    """The architecture to load; ImportRefused naming what the config holds when it is no one-label classifier."""
    architectures = config.get("architectures") or []
    if config.get("auto_map"):
        raise ImportRefused(
            f"{source}: the model needs its own code (auto_map: {sorted(config['auto_map'])}); custom code is not "
            "loaded (trust_remote_code stays off): a plain *ForSequenceClassification with one label is needed"
        )
    if not architectures:
        raise ImportRefused(f"{source}: config.json names no architecture (`architectures` is missing)")
    architecture = str(architectures[0])
    if not architecture.endswith("ForSequenceClassification"):
        raise ImportRefused(
            f"{source}: found {architecture}, not a *ForSequenceClassification: a reward model needs a "
            "sequence-classification head with one score output"
        )
    labels = config.get("id2label")
    count = len(labels) if isinstance(labels, dict) else config.get("num_labels", 2)  # transformers' default: 2
    if count != 1:
        names = ", ".join(str(v) for v in labels.values()) if isinstance(labels, dict) else "none named"
        raise ImportRefused(
            f"{source}: {architecture} has {count} labels ({names}): a multi-label classifier; a reward model has "
            "one score output (num_labels=1)"
        )
    return architecture


def licence(directory: Path, config: dict[str, Any]) -> str | None:
    value = config.get("license")
    if isinstance(value, str) and value:
        return value
    readme = directory / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
        if front and (found := re.search(r"^license:\s*['\"]?([^'\"\n]+)", front.group(1), re.M)):
            return found.group(1).strip()
    return None


def next_version(models_dir: Path, slug: str) -> Path:
    root = models_dir / slug
    numbers = [int(p.name[1:]) for p in root.glob("v*") if re.fullmatch(r"v\d+", p.name)]
    return root / f"v{max(numbers, default=0) + 1}"


def resolve_source(source: str) -> tuple[Path, str | None]:
    """(local directory, hub revision): the directory itself, or a hub id's snapshot where there is network."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, None
    if not HUB_ID.fullmatch(source):
        raise ImportRefused(f"{source}: no such directory (and not a hub id 'owner/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.md"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ImportRefused(f"{source}: cannot download it from the hub ({type(exc).__name__}: {exc})") from None
    return local, local.name  # snapshots/<commit hash>


# ---------------------------------------------------------------- the import


def import_model(
    source: str,
    models_dir: str | os.PathLike[str],
    slug: str,
    *,
    calibration: str | None = None,
    calibration_split: str = "all",
    skip_invalid: bool = False,
    max_length: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
    now: dt.datetime | None = None,
) -> Imported:
    """Check, save, reload as the server does, calibrate, and write the card last (see the module docstring).
    A failure after the version directory was created removes it: a half import never burns a version."""
    if not SLUG.fullmatch(slug):
        raise ValueError(f"slug: lowercase letters, digits, '.', '_' or '-', got {slug!r}")
    local, revision = resolve_source(source)
    config_path = local / "config.json"
    if not config_path.is_file():
        raise ImportRefused(f"{source}: no config.json: not a Hugging Face model directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    architecture = check_config(config, source)
    data = load_data(calibration, skip_invalid=skip_invalid) if calibration else None  # bad lines: before any work
    out = next_version(Path(models_dir), slug)
    out.mkdir(parents=True)
    # "config: " first, as the trainer does: the gateway's job runner reads it as "the version directory exists"
    log(f"config: {json.dumps({'source': source, 'output': str(out), 'architecture': architecture})}")
    try:
        card = _import_into(out, local, source, revision, config, architecture, data, calibration_split,
                            max_length, device, dtype, log, now)  # fmt: skip
        if calibration:
            card["calibration"] |= {"path": calibration, "sha256": _sha256(calibration)}
        tmp = out / (CARD_FILE + ".tmp")
        tmp.write_text(json.dumps(card, indent=1))
        os.replace(tmp, out / CARD_FILE)  # last: its presence makes the version servable
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return Imported(out, slug, out.name, card)


def _import_into(
    out: Path,
    local: Path,
    source: str,
    revision: str | None,
    config: dict[str, Any],
    architecture: str,
    data: Any,
    split: str,
    max_length: int,
    device: str,
    dtype: str,
    log: Callable[[str], None],
    now: dt.datetime | None,
) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .engine import TorchRewardEngine

    tokenizer = AutoTokenizer.from_pretrained(local)
    if tokenizer.pad_token is None:  # pooling reads the attention mask, so eos as pad is safe (TRL #937)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModelForSequenceClassification.from_pretrained(local, dtype="auto")
    if model.config.num_labels != 1:
        raise ImportRefused(f"{source}: loads with num_labels={model.config.num_labels}; a reward model has 1")
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # plain transformers and vLLM batch with it
    limit = min(_model_limit(tokenizer, model.config), MAX_LENGTH_CAP)
    max_length = max_length or limit
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    engine = TorchRewardEngine.load(out, device=device, dtype=dtype, max_length=max_length)
    precision = "bf16" if str(next(engine.model.parameters()).dtype) == "torch.bfloat16" else "fp32"
    try:
        rendered = render_conversation(engine.tokenizer, PROBE, engine.max_length)
        (probe_score,) = engine.score([PROBE])
        if not math.isfinite(probe_score):
            raise ImportRefused(f"{source}: the probe conversation scores {probe_score}: not a usable reward model")
        template = "the model's chat template" if getattr(engine.tokenizer, "chat_template", None) else "plain"
        log(f"probe: {len(rendered.input_ids)} tokens rendered with {template}; score {probe_score:.4f}")
        probe = {
            "template": "chat_template" if template != "plain" else "plain",
            "tokens": len(rendered.input_ids),
            "score": probe_score,
            "text": engine.tokenizer.decode(list(rendered.input_ids))[-600:],
        }
        calibration, scores, metrics = _calibrate(engine, data, split, log)
    finally:
        engine.close()
    created = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    return {
        "format": 1,
        "slug": out.parent.name,
        "version": out.name,
        "source": {"kind": "import", "from": source, "path": str(local), "revision": revision},
        "base_model": source,
        "architecture": architecture,
        "license": licence(local, config),
        "created_at": created,
        "imported_at": created,
        "max_length": max_length,
        "probe": probe,
        "calibration": calibration,
        "metrics": {"test": metrics, "precision": precision},
        "reward_stats": _stats(scores, calibration.get("split")),
    }


def _model_limit(tokenizer: Any, config: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(v) for v in limits if isinstance(v, int) and 1 < v < 1_000_000]  # tokenizers say 1e30 for none
    return min(usable, default=MAX_LENGTH_CAP)


def _calibrate(
    engine: Any, data: Any, split: str, log: Callable[[str], None]
) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """(the card's calibration summary, every response's raw score, the metrics on it)."""
    if data is None:
        log("no --calibration: reward_stats are mean 0, std 1; normalised scores need a calibration file")
        return {"kind": None, "split": None, "count": 0}, [], {"count": 0}
    records = list(data.pairs if isinstance(data, PairSet) else data.rows) if split == "all" else data.split(split)
    if not records:
        raise ValueError(f"the calibration file has no {split} records")
    if isinstance(data, PairSet):
        chosen, rejected = _score_pairs(engine, records)
        gaps = [c - r for c, r in zip(chosen, rejected, strict=True)]
        metrics = {"count": len(records), "accuracy": sum(g > 0 for g in gaps) / len(gaps),
                   "mean_margin": statistics.fmean(gaps)}  # fmt: skip
        scores = [s for pair in zip(chosen, rejected, strict=True) for s in pair]
        log(f"calibration: {len(records)} pairs ({split}), pairwise accuracy {metrics['accuracy']:.3f}")
    else:
        scores = _score_rows(engine, records)
        metrics = {"count": len(records)}
        log(f"calibration: {len(records)} rated responses ({split})")
    summary = {"kind": "pairs" if isinstance(data, PairSet) else "rated", "split": split, "count": len(records)}
    return summary, scores, metrics


def _score_pairs(engine: Any, pairs: Sequence[PreferencePair]) -> tuple[list[float], list[float]]:
    chosen: list[float] = []
    rejected: list[float] = []
    plain = [p for p in pairs if not p.tools]
    scores = engine.score([c for p in plain for c in (p.chosen_conversation, p.rejected_conversation)])
    by_id = {id(p): (scores[2 * i], scores[2 * i + 1]) for i, p in enumerate(plain)}
    for pair in pairs:  # pairs with tools: rendered with their own tool definitions
        c, r = by_id.get(id(pair)) or engine.score([pair.chosen_conversation, pair.rejected_conversation], pair.tools)
        chosen.append(c)
        rejected.append(r)
    return chosen, rejected


def _score_rows(engine: Any, rows: Sequence[RatedResponse]) -> list[float]:
    plain = [r for r in rows if not r.tools]
    scores = dict(zip((id(r) for r in plain), engine.score([r.conversation for r in plain]), strict=True))
    return [scores[id(r)] if id(r) in scores else engine.score([r.conversation], r.tools)[0] for r in rows]


def _stats(scores: Sequence[float], split: str | None) -> dict[str, Any]:
    if not scores:
        return {"mean": 0.0, "std": 1.0, "count": 0, "split": None, "histogram": None}
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "count": len(scores),
        "split": split,
        "histogram": reward_histogram(scores),
    }


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
