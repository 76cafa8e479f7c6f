"""Packed scoring (reward_serving/packing.py) on tiny llama and bert models built from a config: rows of uneven
length concatenated with no pads give the scores of formats.pool_rewards on each row alone and of the padded pass,
within 1e-5 in float32 and bf16 rounding in bfloat16; the packed attention really runs; the engine uses it when
asked and falls back to padded passes for a model whose layers do not take it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.formats import pool_rewards
from gateway.reward_serving import packing
from gateway.reward_serving.engine import TorchRewardEngine
from gateway.reward_serving.metrics import RewardServerMetrics
from gateway.reward_serving.registry import ModelVersion
from gateway.reward_serving.server import ServerSettings, _default_loader

ROWS = [[random.Random(k).randint(5, 90) for _ in range(n)] for k, n in enumerate((3, 40, 17, 1, 29, 8, 40, 2))]


@pytest.fixture(scope="module", params=["tiny-rm/v1", "bert-rm/v1"], ids=["llama", "bert"])
def model_dir(request: pytest.FixtureRequest, store: Path) -> Path:
    return Path(store / request.param)


def alone(model: Any, rows: list[list[int]]) -> list[float]:
    with torch.inference_mode():
        return [float(pool_rewards(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0]) for r in rows]


def padded(model: Any, rows: list[list[int]]) -> list[float]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[*r, *([0] * (width - len(r)))] for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        return [float(s) for s in pool_rewards(model, ids, mask)]


def test_packed_scores_equal_the_padded_pass_and_each_row_alone(model_dir: Path) -> None:
    engine = TorchRewardEngine.load(model_dir, device="cpu")
    packing.register()
    seen: list[str] = []
    layer = packing.last_layer(engine.model)
    hook = layer.register_forward_hook(lambda module, _a, _o: seen.append(engine.model.config._attn_implementation))
    try:
        with torch.inference_mode():
            scores = [float(s) for s in packing.score_packed(engine.model, ROWS, engine.device)]
    finally:
        hook.remove()
        engine.close()
    model = TorchRewardEngine.load(model_dir, device="cpu").model
    assert seen == [packing.PACKED]  # one packed pass, through the packed attention
    assert model.config._attn_implementation == "sdpa"  # restored after the pass
    assert scores == pytest.approx(padded(model, ROWS), abs=1e-5)
    assert scores == pytest.approx(alone(model, ROWS), abs=1e-5)


def test_packed_rows_score_the_same_attended_row_by_row_or_gathered(model_dir: Path) -> None:
    """A CPU attends row by row (`row_attention`); the gathered block is CUDA's path: both score as padded."""
    engine = TorchRewardEngine.load(model_dir, device="cpu")
    packing.register()
    calls: list[int] = []
    original = packing.row_attention

    def counted(*args: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args)

    try:
        with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(packing, "row_attention", counted)
            apart = [float(s) for s in packing.score_packed(engine.model, ROWS, engine.device)]
            row_calls = len(calls)
            gathered = [float(s) for s in packing.score_packed(engine.model, ROWS, engine.device, rows_apart=False)]
        expected = padded(engine.model, ROWS)
        layers = engine.model.config.num_hidden_layers
    finally:
        engine.close()
    assert row_calls == layers and len(calls) == row_calls  # row by row: a CPU's default
    assert apart == pytest.approx(expected, abs=1e-5)
    assert gathered == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_row_attention_is_sdpa_on_each_row_alone(causal: bool) -> None:
    """Packed rows of uneven length, 4 query heads over 2 key/value heads: each row's output is SDPA over that row
    alone; with one query per row (an encoder's first-token layer) each query sees its own row's keys only."""
    from gateway.reward_serving.row_attention import row_attention

    torch.manual_seed(0)
    lengths = [5, 1, 12, 7]
    query, key, value = torch.randn(1, 4, 25, 8), torch.randn(1, 2, 25, 8), torch.randn(1, 2, 25, 8)
    sizes = torch.tensor(lengths)
    out = row_attention(query, key, value, sizes, sizes, causal, 0.3)
    assert out.shape == (1, 25, 4, 8)
    start = 0
    for length in lengths:
        rows = slice(start, start + length)
        k, v = (x[:, :, rows].repeat_interleave(2, dim=1) for x in (key, value))
        alone = torch.nn.functional.scaled_dot_product_attention(query[:, :, rows], k, v, is_causal=causal, scale=0.3)
        assert torch.allclose(out[:, rows], alone.transpose(1, 2), atol=1e-6)
        start += length
    if causal:
        return
    firsts = query[:, :, sizes.cumsum(0) - sizes]  # (1, heads, rows, dim): one query per row
    out = row_attention(firsts, key, value, torch.ones_like(sizes), sizes, False, 0.3)
    start = 0
    for row, length in enumerate(lengths):
        k, v = (x[:, :, start : start + length].repeat_interleave(2, dim=1) for x in (key, value))
        alone = torch.nn.functional.scaled_dot_product_attention(firsts[:, :, row : row + 1], k, v, scale=0.3)
        assert torch.allclose(out[:, row], alone[:, :, 0], atol=1e-6)
        start += length


def test_the_engine_packs_rows_when_asked_and_scores_as_padded(model_dir: Path) -> None:
    plain = TorchRewardEngine.load(model_dir, device="cpu")
    packed = TorchRewardEngine.load(model_dir, device="cpu", packing=True)
    calls: list[int] = []
    real = packing.packed_attention_forward
    packing.register()
    try:
        from transformers import AttentionInterface

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return real(*args, **kwargs)

        AttentionInterface.register(packing.PACKED, counted)
        assert packed.packing and not plain.packing
        assert packed.score_batch(ROWS) == pytest.approx(plain.score_batch(ROWS), abs=1e-5)
        assert calls  # really packed
    finally:
        AttentionInterface.register(packing.PACKED, real)
        plain.close()
        packed.close()


def test_a_bert_last_layer_computes_only_each_rows_first_token_in_packed_passes(store: Path) -> None:
    """The head reads [CLS] alone, so the last layer's queries, attention output and feed-forward run on one token
    per row (packing.first_tokens_out); a padded pass (a single row) still runs the whole layer."""
    engine = TorchRewardEngine.load(store / "bert-rm/v1", device="cpu", packing=True)
    seen: list[tuple[int, ...]] = []
    layer = packing.last_layer(engine.model)
    hook = layer.intermediate.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        scores = engine.score_batch(ROWS)
        engine.score_batch(ROWS[:1])
    finally:
        hook.remove()
        engine.close()
    hidden = seen[0][-1]
    assert seen == [(len(ROWS), hidden), (1, len(ROWS[0]), hidden)]
    plain = TorchRewardEngine.load(store / "bert-rm/v1", device="cpu")
    try:
        assert scores == pytest.approx(alone(plain.model, ROWS), abs=1e-5)
    finally:
        plain.close()


def test_an_encoder_layer_of_another_shape_computes_whole_and_hands_on_its_first_tokens(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last layer `first_tokens_out` cannot compute for [CLS] alone runs over every token, and a hook keeps each
    row's first one: the scores are the padded pass's all the same."""
    monkeypatch.setattr(packing, "_bert_shaped", lambda layer: False)
    engine = TorchRewardEngine.load(store / "bert-rm/v1", device="cpu", packing=True)
    seen: list[tuple[int, ...]] = []
    layer = packing.last_layer(engine.model)
    hook = layer.intermediate.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        assert engine.packing
        scores = engine.score_batch(ROWS)
        assert seen[0][:2] == (1, sum(len(row) for row in ROWS))  # the whole packed sequence
        assert scores == pytest.approx(alone(engine.model, ROWS), abs=1e-5)
    finally:
        hook.remove()
        engine.close()


def assert_bfloat16_packed_within_rounding(model_dir: Path, rows: list[list[int]]) -> None:
    """The rows scored packed in bf16 agree with the float32 engine within bf16 rounding (5 % of their spread)."""
    plain = TorchRewardEngine.load(model_dir, device="cpu")
    half = TorchRewardEngine.load(model_dir, device="cpu", dtype="bfloat16", packing=True)
    try:
        assert half.packing
        reference, scores = plain.score_batch(rows), half.score_batch(rows)
    finally:
        plain.close()
        half.close()
    spread = max(reference) - min(reference)
    assert scores == pytest.approx(reference, abs=0.05 * spread + 1e-3)


def test_bfloat16_packed_scores_within_bf16_rounding(model_dir: Path) -> None:
    assert_bfloat16_packed_within_rounding(model_dir, ROWS)


def test_a_model_whose_layers_do_not_take_packing_falls_back_to_padded_passes(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = TorchRewardEngine.load(model_dir, device="cpu", packing=True)
    try:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise TypeError("unexpected keyword argument 'rewardgate_packing'")

        monkeypatch.setattr(packing, "score_packed", broken)
        assert engine.score_batch(ROWS) == pytest.approx(alone(engine.model, ROWS), abs=1e-5)
        assert engine.packing is False
    finally:
        engine.close()


def test_the_server_setting_reaches_the_engine(store: Path) -> None:
    assert ServerSettings(models_dir="m").packing == "auto"
    for setting, packs in (("auto", True), ("on", True), ("off", False)):
        settings = ServerSettings(models_dir=str(store), device="cpu", packing=setting)
        loader = _default_loader(settings, RewardServerMetrics())
        model = loader(ModelVersion("bert-rm", 1, store / "bert-rm/v1"))
        try:
            assert model.engine.packing is packs
            assert model.batcher.config.packed_rows is packs  # budgeted in real tokens, arrival-ordered chunks
        finally:
            model.engine.close()


def test_auto_packs_a_bert_shaped_encoder_and_a_plainly_causal_decoder(store: Path) -> None:
    encoder = TorchRewardEngine.load(store / "bert-rm/v1", device="cpu", packing="auto")
    decoder = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu", packing="auto")
    try:
        assert encoder.packing and decoder.packing and decoder.shares_prefixes
        assert packing.suits(encoder.model) and packing.suits(decoder.model)
    finally:
        encoder.close()
        decoder.close()


@pytest.mark.parametrize(
    ("fields", "suits"),
    [
        ({"sliding_window": 4096}, False),  # Mistral v0.1: every layer windowed
        ({"sliding_window": 4096, "use_sliding_window": False}, True),  # Qwen2: the window switched off
        ({"sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"]}, False),  # Gemma-style
        ({"sliding_window": 512, "layer_types": ["full_attention", "full_attention"]}, True),
        ({"attn_logit_softcapping": 50.0}, False),  # Gemma 2: capped attention logits
        ({"sliding_window": None}, True),
    ],
)
def test_auto_leaves_a_decoder_padded_where_its_attention_is_not_plainly_causal(
    fields: dict[str, Any], suits: bool
) -> None:
    class Config:
        pass

    config = Config()
    for name, value in fields.items():
        setattr(config, name, value)

    class Decoder:
        score = torch.nn.Linear(2, 1)

    Decoder.config = config  # type: ignore[attr-defined]
    assert packing.suits(Decoder()) is suits


def best_of_n_rows(vocab: int = 90) -> tuple[list[list[int]], list[tuple[list[int], int]]]:
    """Two requests' candidates sharing their prompts (70 and 66 tokens), two rows alone, interleaved."""
    rng = random.Random(7)

    def tokens(n: int) -> list[int]:
        return [rng.randint(5, vocab) for _ in range(n)]

    first, second = tokens(70), tokens(66)
    rows = [[*first, *tokens(3)], tokens(12), [*second, *tokens(9)], [*first, *tokens(17)], [*first, *tokens(1)]]
    rows += [[*second, *tokens(4)], tokens(30)]
    return rows, [([0, 3, 4], 70), ([2, 5], 66)]


@pytest.mark.parametrize("answer_block", [1024, 10], ids=["a-tree-per-block-row", "split-trees"])
def test_prompt_trees_score_each_answer_as_if_alone_after_its_prompt(
    store: Path, answer_block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder's candidates packed as prompt trees (each prompt once, the answers after it, none seeing another)
    score as each row alone and as the padded pass, within 1e-5 in float32, rows alone in the same pass; the same
    with trees split between block rows."""
    monkeypatch.setattr(packing, "ANSWER_BLOCK", answer_block)
    engine = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu")
    rows, groups = best_of_n_rows()
    packing.register()
    seen: list[int] = []
    backbone = getattr(engine.model, engine.model.base_model_prefix)
    hook = backbone.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            scores = [float(s) for s in packing.score_packed(engine.model, rows, engine.device, groups=groups)]
        computed = sum(len(r) for r in rows) - 2 * 70 - 1 * 66  # each prompt once
        assert seen == [computed]  # one pass over the trees and the rows alone
        assert scores == pytest.approx(padded(engine.model, rows), abs=1e-5)
        assert scores == pytest.approx(alone(engine.model, rows), abs=1e-5)
    finally:
        hook.remove()
        engine.close()


def test_a_trees_answer_sees_its_prompt_and_its_own_earlier_tokens_only() -> None:
    """Rows: a prompt of 2 tokens with answers of 2 and 1 tokens (packed at 0-4), a row alone of 3 (at 5-7)."""
    tree = packing.Packing.of([5, 3], torch.device("cpu"), causal=True, trees=[(2, [2, 1]), (3, [])]).tree
    assert tree is not None
    assert tree.prompt_gather.tolist() == [[0, 1, 0], [5, 6, 7]]  # prompts, causal in one call
    assert tree.answer_gather.tolist() == [[2, 3, 4]] and tree.answer_keys.tolist() == [[0, 1, 2, 3, 4]]
    assert tree.answer_mask[0, 0].tolist() == [
        [True, True, True, False, False],  # answer 1's first token: the prompt and itself
        [True, True, True, True, False],  # answer 1's second token
        [True, True, False, False, True],  # answer 2: the prompt and itself, not answer 1
    ]
    assert tree.order.tolist() == [0, 1, 6, 7, 8, 3, 4, 5]  # each packed token's place in the two blocks' outputs


def test_a_long_trees_answers_are_split_between_block_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "ANSWER_BLOCK", 3)
    tree = packing.Packing.of([7], torch.device("cpu"), causal=True, trees=[(2, [2, 1, 2])]).tree
    assert tree is not None
    assert tree.answer_gather.tolist() == [[2, 3, 4], [5, 6, 0]]  # answers 1 and 2 (3 tokens), then answer 3
    assert tree.answer_keys.tolist() == [[0, 1, 2, 3, 4], [0, 1, 5, 6, 0]]  # each block row: the prompt, then itself
    assert tree.answer_mask[1, 0].tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, False, False, False],  # past the block row's end: the prompt only
    ]
    with pytest.raises(ValueError, match="causal"):
        packing.Packing.of([5], torch.device("cpu"), causal=False, trees=[(2, [2, 1])])


def test_the_engine_scores_a_decoders_best_of_n_batch_in_one_packed_pass(store: Path) -> None:
    plain = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu", packing=False)
    packed = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu", packing=True)
    rows, _ = best_of_n_rows()
    passes: list[int] = []
    backbone = getattr(packed.model, packed.model.base_model_prefix)
    hook = backbone.register_forward_hook(lambda *_: passes.append(1))
    try:
        assert packed.packing and packed.shares_prefixes
        assert packed.score_batch(rows) == pytest.approx(plain.score_batch(rows), abs=1e-5)
        assert passes == [1]  # the KV-cache path (packing off) takes a prompt pass, an answers pass, a padded pass
    finally:
        hook.remove()
        plain.close()
        packed.close()


def test_bfloat16_prompt_trees_within_bf16_rounding(store: Path) -> None:
    assert_bfloat16_packed_within_rounding(store / "tiny-rm/v1", best_of_n_rows()[0])


def test_a_decoder_whose_attention_ignores_the_prompt_trees_is_left_padded(
    store: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attention that keeps rows apart but lets a tree's answers see each other (plain causal over the tree)
    passes rows alone and fails the probe's prompt tree: the model stays unpacked."""
    import dataclasses

    from transformers import AttentionInterface

    real = packing.packed_attention_forward

    def treeless(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
        kwargs["rewardgate_packing"] = dataclasses.replace(kwargs["rewardgate_packing"], tree=None)
        return real(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(packing, "packed_attention_forward", treeless)
    try:
        engine = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu", packing=True)
    finally:
        AttentionInterface.register(packing.PACKED, real)
    try:
        assert engine.packing is False
        assert "do not score as padded ones" in caplog.text
    finally:
        engine.close()


def test_a_packed_decoder_is_batched_with_its_requests_together_and_prompts_counted_once(store: Path) -> None:
    settings = ServerSettings(models_dir=str(store), device="cpu", packing="auto")
    model = _default_loader(settings, RewardServerMetrics())(ModelVersion("tiny-rm", 1, store / "tiny-rm/v1"))
    try:
        config = model.batcher.config
        assert config.packed_rows and config.keep_requests_together and config.shared_prefix_min == 64
    finally:
        model.engine.close()


def test_a_model_whose_attention_lets_packed_rows_see_each_other_is_left_padded(
    model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load probe: an attention that ignores packing (one sequence, every row attending to every other) would
    score wrong without an error; the probe sees packed and padded scores differ and keeps the model padded."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def leaky(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
        kwargs.pop("rewardgate_packing")
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    real = packing.packed_attention_forward
    monkeypatch.setattr(packing, "packed_attention_forward", leaky)  # what packing.register() registers
    try:
        engine = TorchRewardEngine.load(model_dir, device="cpu", packing=True)
    finally:
        AttentionInterface.register(packing.PACKED, real)
    try:
        assert engine.packing is False
        assert "do not score as padded ones" in caplog.text
        assert engine.score_batch(ROWS) == pytest.approx(alone(engine.model, ROWS), abs=1e-5)
    finally:
        engine.close()


@pytest.mark.slow  # inductor compiles C++ kernels: ~20-40 s per model on 2 quiet cores
def test_compiled_packed_passes_score_as_padded_for_any_batch_size(model_dir: Path) -> None:
    """`--compile --packing`: the packed attention pinned before compiling; every batch, a single row too, goes
    through it (no padded pass left), and batches of new sizes score like the eager padded engine."""
    eager = TorchRewardEngine.load(model_dir, device="cpu")
    compiled = TorchRewardEngine.load(model_dir, device="cpu", compile_blocks=True, packing=True)
    decoder = getattr(eager.model, "score", None) is not None
    trees, _ = best_of_n_rows()
    try:
        assert compiled.pinned and compiled.packing and compiled.shares_prefixes is decoder
        assert {m.config._attn_implementation for m in compiled.model.modules() if hasattr(m, "config")} == {
            packing.PACKED
        }
        batches = [ROWS, ROWS[:5], ROWS[1:2], [*ROWS, *ROWS[::-1]]]
        if decoder:  # prompt trees too, with and without rows alone
            batches += [trees, [trees[0], trees[3]], [*trees, *ROWS]]
        for rows in batches:
            assert compiled.score_batch(rows) == pytest.approx(eager.score_batch(rows), abs=1e-5)
    finally:
        compiled.close()
        eager.close()
