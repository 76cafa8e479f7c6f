"""TorchRewardEngine: a reward-model directory (contract 2) loaded with transformers, scored on its worker threads.

Owns loading (dtype `auto`: bf16 on CUDA, float32 on CPU; SDPA attention), rendering with `formats.render_many` (a
prompt shared by several conversations is rendered once), right padding, and scoring with `formats.pool_rewards`
under `torch.inference_mode` on the engine's own worker threads, so the event loop never runs a forward pass: one by
default, each pass using every core; `pass_workers` > 1 (CPUs only) scores that many passes at once, each on its
share of the cores (`resolve_pass_workers`). Shared-prompt reuse for decoders: rows of one pass that share a prompt
(the N candidates of a best-of-N request, which the batcher keeps together for this engine) compute it once: packed,
each group is a prompt tree in the one packed pass (reward_serving.packing); unpacked, the prompts of several groups
go in one pass and all their answers in one more, each on its prompt's KV cache (`_score_shared_prefixes`). Packed
passes: on where asked, or by default ("auto") for BERT-shaped encoders and plainly causal decoders, once a probe
pass at load scores packed rows as padded ones (`_checked_packing`); with `--compile`, compiled as packed passes.
Must not import the web layer (server, starlette, httpx).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from gateway.formats import Message, parse_message, pool_rewards, render_many

from .batcher import BatchedModel, BatcherConfig, BatchStats, TokenIds, common_prefix, plan_batches
from .errors import ModelLoadError
from .registry import CARD_FILE, Loader, ModelVersion

logger = logging.getLogger(__name__)

_FALLBACK_MAX_LENGTH = 2048  # only for directories whose rewardgate.json lacks max_length
# Rows of one batch that share at least this many leading tokens have them computed once (decoders only).
MIN_SHARED_PREFIX = 64


DTYPES = ("auto", "float32", "bfloat16")


def resolve_device(device: str) -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA and float32 on CPU; `bfloat16` on a CPU pays off where it has AMX (see BENCHMARKS)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)  # type: ignore[no-any-return]


class TorchRewardEngine:
    """Scores token-id rows with a `*ForSequenceClassification` (num_labels=1) model.

    `score_batch` scores one planned batch, blocking (right-padded, or prompt-once for rows that share one
    on a decoder); `score_tokens` runs it on one of the engine's worker threads (`pass_workers`); `score` renders and
    scores conversations in one blocking call, for tests and for checking trainer/server identity.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int,
        pad_token_id: int | None = None,
        name: str = "model",
        share_prefixes: bool = True,
        packing: bool = False,
        pinned: bool = False,
        pass_workers: int = 1,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # Scoring never decodes: without this the backbone builds a KV cache on every forward pass, which
        # holds every layer's keys/values alive and makes torch.compile recompile per layer.
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        self.max_length = max_length
        self.device: torch.device = next(model.parameters()).device
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(model.config, "pad_token_id", None)
        # Any id works: pool_rewards reads the attention mask, never the pad id (TRL #937).
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
        self.memory_bytes = sum(t.numel() * t.element_size() for t in chain(model.parameters(), model.buffers()))
        # Decoders (a `score` head read at the last token, as formats.pool_rewards) can reuse a shared prompt,
        # given the backbone takes a KV cache: `past_key_values` (transformers 5.23 deprecates the name, to go in
        # 5.40 for `cache`), whichever its signature lists; neither listed, no reuse.
        backbone_params = inspect.signature(getattr(model, model.base_model_prefix).forward).parameters
        self._cache_kwarg = next((k for k in ("past_key_values", "cache") if k in backbone_params), None)
        # Packed (reward_serving.packing), a decoder shares prompts without a cache: each group is one prompt tree.
        self.shares_prefixes = (
            share_prefixes
            and getattr(model, "score", None) is not None
            and bool(self._cache_kwarg or packing or pinned)
        )
        self.min_shared_prefix = MIN_SHARED_PREFIX  # the batcher's budget counts such a prompt once
        # Rows without a shared prompt: packed (no pads computed, reward_serving.packing) or right-padded. `pinned`:
        # the model was set up packed for good before it was compiled (packing.pin): every batch is packed.
        self.packing = packing or pinned
        self.pinned = pinned
        if packing:
            from . import packing as packed_scoring

            packed_scoring.register()
        # Passes run on `pass_workers` threads; several (a CPU's, `resolve_pass_workers`) share its cores between them,
        # each pass on its own share, as separate passes rather than one pass split across every core.
        self.pass_workers = pass_workers
        self._executor = ThreadPoolExecutor(max_workers=pass_workers, thread_name_prefix=f"rm-{name}")
        if pass_workers > 1:
            _share_threads(self._executor, pass_workers)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        compile_blocks: bool = False,
        max_length: int | None = None,
        packing: bool | str = False,
        pass_workers: int | str = 1,
    ) -> TorchRewardEngine:
        """Load a reward-model directory written by the trainer (blocking: call it off the event loop).
        `max_length` overrides the card's (the importer loads a directory before its card exists). `packing`: True,
        False or "auto" (`packing.suits`); either way it stays off, logged, unless a probe pass scores packed rows
        as padded ones (`packing.scores_as_padded`). `pass_workers`: passes scored at once (`resolve_pass_workers`);
        more than one sets packing up for good (`packing.pin`), as a packed pass otherwise switches the model's
        attention for its duration."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        card_path = path / CARD_FILE
        card: dict[str, Any] = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
        target = resolve_device(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        # transformers' default kernel: SDPA where the architecture has it, else eager (MPNet, DeBERTa-v2)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(dtype, target))
        if model.config.num_labels != 1:
            raise ModelLoadError(f"{path}: a reward model has num_labels=1, this one has {model.config.num_labels}")
        model.to(target).eval()
        max_length = _max_length(card if max_length is None else {"max_length": max_length}, model.config, path)
        packing = _checked_packing(model, target, packing, path)
        workers = resolve_pass_workers(pass_workers, target, decoder=getattr(model, "score", None) is not None)
        pinned = packing and (compile_blocks or workers > 1)
        if pinned:  # packed passes compiled, or several at once: the packed attention set for good (packing.pin)
            from .packing import pin

            pin(model)
        if compile_blocks:
            model = compile_model(model, target)
        # Compiled layers were measured on padded and packed passes; the KV-cache shared-prompt path stays off with
        # them (a packed decoder shares prompts in its packed pass).
        engine = cls(
            model,
            tokenizer,
            max_length=max_length,
            name=path.parent.name + "-" + path.name,
            share_prefixes=packing or not compile_blocks,
            packing=packing and not pinned,
            pinned=pinned,
            pass_workers=workers,
        )
        if compile_blocks:  # compile now, so a model that does not compile fails to load, not to score
            pad = engine.pad_token_id
            batches = [[[pad] * 8, [pad] * 5], [[pad] * 6]]  # dynamic shapes still specialise a batch of one row
            if engine.shares_prefixes:  # prompt trees (graphs of their own): one or two, alone or beside a row
                other = 0 if pad else 1  # a second prompt, unlike the first from its first token
                tree = [[pad] * (MIN_SHARED_PREFIX + 6), [pad] * (MIN_SHARED_PREFIX + 9)]
                second = [[other] * (MIN_SHARED_PREFIX + 3), [other] * (MIN_SHARED_PREFIX + 7)]
                batches += [tree, [*tree, [pad] * 5], [*tree, *second, [pad] * 5]]
            for batch in batches:  # on a worker: inductor's CPU kernels take the thread count they compile under
                engine._executor.submit(engine.score_batch, batch).result()
        return engine

    # ------------------------------------------------------------ render (any thread)

    def render(
        self, conversations: Sequence[Sequence[Message]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[TokenIds]:
        """Token ids per conversation, in order; the last message of each is the response scored."""
        return render_many(self.tokenizer, conversations, self.max_length, tools)

    # ------------------------------------------------------------ score (the worker threads)

    def score_batch(self, batch: Sequence[Sequence[int]]) -> list[float]:
        """Raw scores for token-id rows, in row order. Blocking.

        Rows of a decoder that share a prompt of at least `MIN_SHARED_PREFIX` tokens (the candidates of one
        best-of-N request, or of several requests with one prompt) have it computed once. Packing on: one packed
        pass, each such group a prompt tree (`packing.score_packed`). Packing off: one pass over every group's
        prompt together, then one pass over all their answers, each on its prompt's KV cache
        (`_score_shared_prefixes`), and the other rows in one right-padded pass (`formats.pool_rewards`).
        """
        groups = shared_prefix_groups(batch) if self.shares_prefixes else []
        if self.packing and (self.pinned or len(batch) > 1):
            packed = self._score_packed(batch, groups)
            if packed is not None:
                return packed
        scores = [0.0] * len(batch)
        rest = list(range(len(batch)))
        if groups:
            try:
                shared = self._score_shared_prefixes([([batch[i] for i in rows], prefix) for rows, prefix in groups])
            except Exception:  # an architecture whose cache does not fit this path: padded passes from now on
                logger.exception("shared-prompt scoring failed; this model is scored in padded passes only")
                self.shares_prefixes = False
            else:
                for (rows, _), group_scores in zip(groups, shared, strict=True):
                    for i, score in zip(rows, group_scores, strict=True):
                        scores[i] = score
                taken = {i for rows, _ in groups for i in rows}
                rest = [i for i in rest if i not in taken]
        if rest:
            for i, score in zip(rest, self._score_padded([batch[i] for i in rest]), strict=True):
                scores[i] = score
        return scores

    def _score_packed(
        self, batch: Sequence[Sequence[int]], groups: Sequence[tuple[Sequence[int], int]]
    ) -> list[float] | None:
        """One packed pass (`packing.score_packed`); None, and packing off for good, if this model's layers do not
        take it (a pinned model has no other pass to fall back to: it raises)."""
        from .packing import score_packed

        try:
            with torch.inference_mode():
                scores = score_packed(self.model, batch, self.device, pinned=self.pinned, groups=groups)
                return [float(s) for s in scores.float().cpu().tolist()]
        except Exception:
            if self.pinned:
                raise
            logger.exception("packed scoring failed; this model is scored in padded passes only")
            self.packing = False
            return None

    def _score_padded(self, batch: Sequence[Sequence[int]]) -> list[float]:
        """One forward pass over right-padded rows (formats.pool_rewards, the trainer's rule)."""
        lengths = torch.tensor([len(row) for row in batch])
        width = int(lengths.max())
        ids = torch.tensor([[*row, *([self.pad_token_id] * (width - len(row)))] for row in batch])
        mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
        if self.device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()
        with torch.inference_mode():
            scores = pool_rewards(
                self.model, ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
            )
            return [float(s) for s in scores.float().cpu().tolist()]

    def _score_shared_prefixes(self, groups: Sequence[tuple[Sequence[Sequence[int]], int]]) -> list[list[float]]:
        """Groups of rows whose first `prefix` tokens are equal: every group's prefix in one pass, then every row's
        rest in one pass on its group's KV cache. Scores per group, in row order.

        Pass 1: the prompts right-padded, without a mask (a real token never attends to the pads after it under the
        causal mask, as in `formats.pool_rewards`). Pass 2: the answers right-padded, each row's cache its group's
        prompt (`reorder_cache` repeats it per row), a mask that hides the prompt pads after each prompt's end and
        the answer pads, and positions that continue each prompt. The same numbers as `_score_padded` up to
        rounding (a causal decoder's prefix states do not depend on what follows; tested), read at each row's last
        token by the same `score` head.
        """
        backbone = getattr(self.model, self.model.base_model_prefix)
        prefixes = [prefix for _, prefix in groups]
        width = max(prefixes)
        prompts = [[*rows[0][:prefix], *([self.pad_token_id] * (width - prefix))] for rows, prefix in groups]
        owner = [g for g, (rows, _) in enumerate(groups) for _ in rows]
        tails = [row[prefix:] for rows, prefix in groups for row in rows]
        tail_width = max(len(tail) for tail in tails)
        ids = torch.tensor([[*tail, *([self.pad_token_id] * (tail_width - len(tail)))] for tail in tails])
        row_prefix = torch.tensor([prefixes[g] for g in owner])
        tail_lengths = torch.tensor([len(tail) for tail in tails])
        mask = torch.cat(
            [
                torch.arange(width).unsqueeze(0) < row_prefix.unsqueeze(1),
                torch.arange(tail_width).unsqueeze(0) < tail_lengths.unsqueeze(1),
            ],
            dim=1,
        ).long()
        positions = row_prefix.unsqueeze(1) + torch.arange(tail_width).unsqueeze(0)
        device = self.device
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`past_key_values` is deprecated", FutureWarning)  # handled in __init__
            cache = backbone(input_ids=torch.tensor(prompts, device=device), use_cache=True).past_key_values
            cache.reorder_cache(torch.tensor(owner, device=device))
            hidden = backbone(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
                **{str(self._cache_kwarg): cache},
            ).last_hidden_state
            last = (tail_lengths - 1).to(device)
            flat = self.model.score(hidden[torch.arange(len(tails), device=device), last])[:, 0].float().cpu().tolist()
        out: list[list[float]] = []
        start = 0
        for rows, _ in groups:
            out.append([float(s) for s in flat[start : start + len(rows)]])
            start += len(rows)
        return out

    async def score_tokens(self, batch: Sequence[TokenIds]) -> list[float]:
        """`score_batch` on one of this engine's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.score_batch, batch)

    def score(
        self,
        conversations: Sequence[Sequence[Message | Mapping[str, Any]]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        max_batch_tokens: int = 16384,
    ) -> list[float]:
        """Render and score conversations (Message objects or OpenAI message dicts). Blocking."""
        parsed = [
            [
                m if isinstance(m, Message) else parse_message(dict(m), f"conversations[{i}][{j}]")
                for j, m in enumerate(conv)
            ]
            for i, conv in enumerate(conversations)
        ]
        ids = self.render(parsed, tools)
        scores = [0.0] * len(ids)
        for batch in plan_batches([len(row) for row in ids], max_batch_tokens, max_batch_size=1024):
            for i, score in zip(batch, self.score_batch([ids[i] for i in batch]), strict=True):
                scores[i] = score
        return scores

    def close(self) -> None:
        """Stop the worker threads and release the weights."""
        self._executor.shutdown(wait=True)
        on_cuda = self.device.type == "cuda"
        self.model = None
        if on_cuda:
            torch.cuda.empty_cache()


def _share_threads(executor: ThreadPoolExecutor, workers: int) -> None:
    """Start the executor's `workers` threads now, each with torch's threads divided between them.

    torch's thread count is per thread but leaks: `torch.set_num_threads` also sets the count that a thread's first
    parallel op adopts, in every thread that has not run one yet. So each worker first adopts the process's count,
    then sets its share, and once all have, the process's count is set back (in this thread, which keeps it), so
    threads that start later (another model's workers, a benchmark's) are not left with a share."""
    total = torch.get_num_threads()
    share = max(1, total // workers)
    ready = threading.Barrier(workers)  # each worker holds one task until all are started: one thread each

    def adopt() -> None:
        torch.get_num_threads()  # this thread's first parallel setting: the process's count, before it changes
        torch.set_num_threads(share)
        ready.wait(timeout=60)

    for future in [executor.submit(adopt) for _ in range(workers)]:
        future.result()
    torch.set_num_threads(total)


def resolve_pass_workers(workers: int | str, device: torch.device, *, decoder: bool = False) -> int:
    """`auto`: 2 for an encoder on a CPU with 2 or more of torch's threads, else 1; a number is taken as it is, but
    only a CPU runs more than one (a GPU runs one kernel stream per model).

    Why 2 for an encoder on a CPU: one pass at a time splits every op across the cores, so each op ends at a barrier
    where a core that the server's own work (HTTP, tokenizing) took away holds the other up; two passes at once, each
    on its share of the cores, keep both busy: 1.12-1.24x the requests/s of one worker at 32 clients, a lower p99
    (MiniLM, 2 CPUs, `bench/score_cpu.py`). A decoder's best-of-N passes (several ~340-token prompt trees) keep both
    cores busy by themselves: two workers served 0.90-1.09x one, with a higher p99 (`bench/prompt_reuse_cpu.py`),
    so `auto` leaves it at one. Both in docs/BENCHMARKS.md."""
    if workers == "auto":
        return 2 if device.type == "cpu" and not decoder and torch.get_num_threads() >= 2 else 1
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ModelLoadError(f"pass_workers {workers!r} is not 'auto' or a positive number")
    if workers > 1 and device.type != "cpu":
        raise ModelLoadError(f"pass_workers {workers} is for CPUs; {device} scores one pass at a time")
    return workers


def _checked_packing(model: Any, device: torch.device, packing: bool | str, path: Path) -> bool:
    """Whether this model scores packed: asked for (or "auto" and `packing.suits`), and its probe agrees."""
    if packing not in (True, False, "auto"):
        raise ModelLoadError(f"packing {packing!r} is not one of True, False, 'auto'")
    from . import packing as packed_scoring

    if packing == "auto":
        packing = packed_scoring.suits(model)
    if not packing:
        return False
    packed_scoring.register()
    try:
        agrees = packed_scoring.scores_as_padded(model, device)
    except Exception:  # a model whose layers do not take the packed arguments
        logger.exception("%s: packed scoring failed its probe; scored in padded passes", path)
        return False
    if not agrees:
        logger.error("%s: packed rows do not score as padded ones (its attention ignores packing); padded passes", path)
    return agrees


def compile_model(model: Any, device: torch.device) -> Any:
    """`--compile`: the model to score with, compiled for `device` (measured: docs/BENCHMARKS.md).

    An encoder classifier (no decoder `score` head, so `formats.pool_rewards` calls the whole model) on a CPU is
    compiled whole with inductor's freezing: weights become constants, pre-packed for oneDNN's matmuls, and the
    norms, biases and activations fuse around them. Everything else compiles its repeated blocks (regional
    compilation, as measured on GPUs). Shapes are dynamic, so batches of new sizes do not recompile. (A decoder's
    backbone compiled whole and frozen was tried on a CPU, ad hoc: its prompt trees ran no faster than with its
    blocks compiled, and each graph took minutes to compile for SmolLM2-135M where the blocks take seconds.)
    """
    if device.type == "cpu" and getattr(model, "score", None) is None:
        return torch.compile(model, dynamic=True, options={"freezing": True})
    compile_repeated_blocks(model)
    return model


def compile_repeated_blocks(model: Any) -> None:
    """torch.compile each block of the model's largest stack of identical layers (regional compilation).

    The blocks share one compiled graph, so compiling costs about one layer, not the whole model; dynamic
    shapes avoid a recompile per batch shape. Fuses the norms, rotary and activation kernels.
    """
    stacks = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) > 1 and len({type(block) for block in m}) == 1
    ]
    if not stacks:
        raise ModelLoadError("compile_blocks: found no stack of repeated layers to compile")
    for block in max(stacks, key=len):
        block.compile(dynamic=True)


def torch_loader(
    *,
    device: str = "auto",
    dtype: str = "auto",
    batcher: BatcherConfig | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    compile_blocks: bool = False,
    packing: bool | str = "auto",
    pass_workers: int | str = 1,
) -> Loader:
    """The registry's loader for the torch engine: a model directory -> engine behind its own batcher."""

    def load(version: ModelVersion) -> BatchedModel:
        engine = TorchRewardEngine.load(
            version.path,
            device=device,
            dtype=dtype,
            compile_blocks=compile_blocks,
            packing=packing,
            pass_workers=pass_workers,
        )
        return BatchedModel(engine, batcher, on_batch=on_batch)

    return load


def shared_prefix_groups(batch: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """(row indices, shared prefix length) of the rows that share at least `MIN_SHARED_PREFIX` leading tokens with
    another row of the batch, in first-seen order; each row keeps at least one token of its own."""
    keyed: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(batch):
        if len(row) > MIN_SHARED_PREFIX:
            keyed.setdefault(tuple(row[:MIN_SHARED_PREFIX]), []).append(i)
    groups = []
    for indices in keyed.values():
        if len(indices) >= 2 and (prefix := common_prefix([batch[i] for i in indices])) >= MIN_SHARED_PREFIX:
            groups.append((indices, prefix))
    return groups


def _max_length(card: Mapping[str, Any], config: Any, path: Path) -> int:
    value = card.get("max_length")
    if value is None:
        logger.warning("%s: %s has no max_length; using %d", path, CARD_FILE, _FALLBACK_MAX_LENGTH)
        value = _FALLBACK_MAX_LENGTH
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ModelLoadError(f"{path}: {CARD_FILE} max_length must be an integer >= 2, got {value!r}")
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and value > limit:
        logger.warning("%s: max_length %d exceeds the model's %d positions; using %d", path, value, limit, limit)
        value = limit
    return value
