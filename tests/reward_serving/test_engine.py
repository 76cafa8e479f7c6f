"""TorchRewardEngine on tiny llama and bert models: batched scores equal pool_rewards on each conversation alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.formats import Message, group_by_prompt, parse_message, pool_rewards, render_conversation
from gateway.reward_serving.engine import TorchRewardEngine
from gateway.reward_serving.errors import ModelLoadError
from tests.tiny import save_reward_model

CONVERSATIONS = [
    [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "Open settings, choose security, then reset."},
    ],
    [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "I cannot help with that."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Your order ships tomorrow and arrives in two days, thanks for waiting!"},
    ],
    [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "Thanks for reaching out! Open settings."},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
]


def parsed(conversation: list[dict[str, Any]]) -> list[Message]:
    return [parse_message(m, "m") for m in conversation]


@pytest.fixture(scope="module", params=["tiny-rm/v1", "bert-rm/v1"], ids=["llama", "bert"])
def engine(request: pytest.FixtureRequest, store: Path) -> Any:
    engine = TorchRewardEngine.load(store / request.param, device="cpu")
    yield engine
    engine.close()


def alone(engine: TorchRewardEngine, conversation: list[dict[str, Any]]) -> float:
    """The reference: the conversation rendered by itself, unpadded, through pool_rewards."""
    ids = torch.tensor([render_conversation(engine.tokenizer, parsed(conversation), engine.max_length).input_ids])
    with torch.inference_mode():
        return float(pool_rewards(engine.model, ids, torch.ones_like(ids))[0])


def test_an_architecture_without_sdpa_loads_with_eager_attention_and_scores(tmp_path: Path) -> None:
    # MPNet (like DeBERTa-v2, e.g. a published DeBERTa reward model) has no SDPA kernel: asking for one failed the load.
    engine = TorchRewardEngine.load(save_reward_model(tmp_path / "mpnet-rm", kind="mpnet"), device="cpu")
    try:
        assert engine.model.config._attn_implementation == "eager"
        scores = engine.score(CONVERSATIONS)
        assert scores == pytest.approx([alone(engine, c) for c in CONVERSATIONS], abs=1e-4)
        assert len(set(scores)) == len(scores)
    finally:
        engine.close()


def test_loads_float32_on_cpu_with_the_card_max_length(engine: TorchRewardEngine) -> None:
    assert engine.device.type == "cpu" and next(engine.model.parameters()).dtype == torch.float32
    assert engine.max_length == 256 and engine.memory_bytes > 0
    assert engine.model.config.use_cache is False


def test_batched_scores_equal_each_conversation_scored_alone(engine: TorchRewardEngine) -> None:
    scores = engine.score(CONVERSATIONS)
    assert scores == pytest.approx([alone(engine, c) for c in CONVERSATIONS], abs=1e-5)


def test_padding_does_not_change_a_score(engine: TorchRewardEngine) -> None:
    short, long = engine.render([parsed(CONVERSATIONS[4]), parsed(CONVERSATIONS[2])])
    assert len(short) < len(long)
    together = engine.score_batch([short, long])
    assert together == pytest.approx([engine.score_batch([short])[0], engine.score_batch([long])[0]], abs=1e-5)


def test_a_shared_prompt_renders_as_each_conversation_would_alone(engine: TorchRewardEngine) -> None:
    rendered = engine.render([parsed(c) for c in CONVERSATIONS])
    assert rendered == [
        render_conversation(engine.tokenizer, parsed(c), engine.max_length).input_ids for c in CONVERSATIONS
    ]


def test_candidates_sharing_a_long_prompt_compute_it_once_with_the_same_scores(engine: TorchRewardEngine) -> None:
    prompt = [{"role": "user", "content": "Tell me about my order, please. " * 12}]
    answers = ("Soon.", "Tomorrow, by noon.", "No idea.")
    conversations = [[*prompt, {"role": "assistant", "content": a}] for a in answers] + [CONVERSATIONS[4]]
    rows = engine.render([parsed(c) for c in conversations])
    shapes: list[tuple[int, ...]] = []
    backbone = getattr(engine.model, engine.model.base_model_prefix)
    hook = backbone.register_forward_hook(
        lambda _m, args, kwargs, _o: shapes.append(tuple(kwargs.get("input_ids", args[0] if args else None).shape)),
        with_kwargs=True,
    )
    try:
        scores = engine.score_batch(rows)
    finally:
        hook.remove()
    assert scores == pytest.approx([alone(engine, c) for c in conversations], abs=1e-5)
    if engine.model.config.model_type == "llama":  # a decoder: the prompt once, then the three answers
        assert engine.shares_prefixes
        prefix = shapes[0][1]
        assert shapes[0] == (1, prefix) and prefix >= 64 and rows[0][:prefix] == rows[1][:prefix] == rows[2][:prefix]
        assert shapes[1] == (3, max(len(r) for r in rows[:3]) - prefix)  # only the answers' tokens
        assert shapes[2] == (1, len(rows[3]))  # the unrelated conversation: its own padded pass
    else:  # an encoder attends both ways: no reuse, one padded pass
        assert not engine.shares_prefixes and shapes == [(4, max(len(r) for r in rows))]


def test_several_prompts_in_one_pass_then_all_answers_in_one_give_the_padded_scores(store: Path) -> None:
    """Three groups with prompts of different lengths (the candidates of three requests), an unrelated row, in one
    batch: one pass over the three prompts, one over the eight answers, one padded pass for the rest; every score
    equals the padded path's within 1e-5 (float32)."""
    engine = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu")
    try:
        conversations = []
        for words, answers in ((12, ("Soon.", "Tomorrow, by noon.", "No idea.")),
                               (20, ("Yes.", "It shipped on Monday and should arrive soon, tracking attached.")),
                               (15, ("A", "B b", "C c c"))):  # fmt: skip
            prompt = [{"role": "user", "content": f"Order {words}: " + "tell me about my order, please. " * words}]
            conversations += [[*prompt, {"role": "assistant", "content": a}] for a in answers]
        conversations.append(CONVERSATIONS[4])
        rows = engine.render([parsed(c) for c in conversations])
        shapes: list[tuple[int, ...]] = []
        backbone = getattr(engine.model, engine.model.base_model_prefix)
        hook = backbone.register_forward_hook(
            lambda _m, args, kwargs, _o: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
        )
        try:
            scores = engine.score_batch(rows)
        finally:
            hook.remove()
        padded = [engine._score_padded([row])[0] for row in rows]
        assert scores == pytest.approx(padded, abs=1e-5)
        assert scores == pytest.approx([alone(engine, c) for c in conversations], abs=1e-5)
        assert len({len(r) for r in rows[:8]}) > 2  # really different prompt and answer lengths
        assert shapes[0][0] == 3 and shapes[1][0] == 8 and shapes[2] == (1, len(rows[8]))
        assert shapes[1][1] < min(len(r) for r in rows[:8]) // 2  # the answers pass computes answers only
    finally:
        engine.close()


def test_a_model_whose_cache_does_not_fit_falls_back_to_padded_passes(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu")
    try:

        def broken(groups: Any) -> list[list[float]]:
            raise TypeError("this cache cannot be repeated")

        monkeypatch.setattr(engine, "_score_shared_prefixes", broken)
        prompt = [{"role": "user", "content": "Tell me about my order, please. " * 12}]
        conversations = [[*prompt, {"role": "assistant", "content": a}] for a in ("Soon.", "No idea.")]
        scores = engine.score_batch(engine.render([parsed(c) for c in conversations]))
        assert scores == pytest.approx([alone(engine, c) for c in conversations], abs=1e-5)
        assert engine.shares_prefixes is False
    finally:
        engine.close()


def test_conversations_group_by_prompt_in_first_seen_order() -> None:
    conversations = [parsed(c) for c in CONVERSATIONS]
    assert group_by_prompt(conversations) == [[0, 1, 3], [2], [4]]  # 0, 1, 3: one prompt, three answers
    with pytest.raises(ValueError, match="conversation 1 is empty"):
        group_by_prompt([conversations[0], []])


@pytest.mark.anyio
async def test_score_tokens_runs_on_the_dedicated_worker_thread(engine: TorchRewardEngine, anyio_backend: str) -> None:
    threads: list[str] = []
    backbone = getattr(engine.model, engine.model.base_model_prefix)  # runs under both pooling paths
    hook = backbone.register_forward_hook(lambda *_: threads.append(threading.current_thread().name))
    try:
        ids = engine.render([parsed(c) for c in CONVERSATIONS[:2]])
        assert await engine.score_tokens(ids) == pytest.approx(engine.score_batch(ids), abs=1e-6)
    finally:
        hook.remove()
    assert threads and threads[0].startswith("rm-") and threads[0] != threading.main_thread().name


@pytest.mark.anyio
async def test_two_pass_workers_score_two_passes_at_once_on_half_the_threads_each(
    store: Path, anyio_backend: str
) -> None:
    """`--pass-workers 2`: the engine's worker threads each take half of torch's threads, the model is packed for good
    (no per-pass attention switch, so passes can overlap), and passes scored at once equal the padded scores."""
    model_dir = store / "bert-rm/v1"
    two = TorchRewardEngine.load(model_dir, device="cpu", packing="auto", pass_workers=2)
    plain = TorchRewardEngine.load(model_dir, device="cpu")
    threads: dict[str, int] = {}
    backbone = getattr(two.model, two.model.base_model_prefix)

    together = threading.Barrier(2)  # each worker's first pass waits for the other's: two passes at once, or none

    def record(*_: Any) -> None:
        name = threading.current_thread().name
        if name not in threads:
            threads[name] = torch.get_num_threads()
            together.wait(timeout=30)

    hook = backbone.register_forward_hook(record)
    try:
        assert two.pass_workers == 2 and two.pinned and two.packing
        batches = [plain.render([parsed(c) for c in CONVERSATIONS[k:]]) for k in range(4)]
        together = await asyncio.gather(*(two.score_tokens(ids) for ids in batches))
        for ids, scores in zip(batches, together, strict=True):
            assert scores == pytest.approx(plain.score_batch(ids), abs=1e-5)
    finally:
        hook.remove()
        two.close()
        plain.close()
    assert len(threads) == 2  # both workers scored
    assert set(threads.values()) == {max(1, torch.get_num_threads() // 2)}
    later: list[int] = []  # a thread started afterwards (another model's worker) still gets the process's count
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [torch.get_num_threads()]


def test_pass_workers_auto_is_two_for_an_encoder_on_a_cpu_and_more_than_one_is_for_cpus_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.reward_serving.engine import resolve_pass_workers

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert resolve_pass_workers("auto", cpu) == 2
    assert resolve_pass_workers("auto", cpu, decoder=True) == 1
    assert resolve_pass_workers("auto", torch.device("cuda")) == 1
    assert resolve_pass_workers(3, cpu) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert resolve_pass_workers("auto", cpu) == 1
    with pytest.raises(ModelLoadError, match="for CPUs"):
        resolve_pass_workers(2, torch.device("cuda"))
    for bad in (0, "two", True):
        with pytest.raises(ModelLoadError, match="is not 'auto' or a positive number"):
            resolve_pass_workers(bad, cpu)  # type: ignore[arg-type]


def test_bfloat16_on_cpu_loads_bf16_weights_and_scores_within_bf16_rounding(
    engine: TorchRewardEngine, store: Path
) -> None:
    """`--dtype bfloat16` (for CPUs with AMX): same ranking inputs, scores within bf16 rounding of float32."""
    model_dir = store / ("tiny-rm/v1" if engine.model.config.model_type == "llama" else "bert-rm/v1")
    half = TorchRewardEngine.load(model_dir, device="cpu", dtype="bfloat16")
    try:
        assert next(half.model.parameters()).dtype == torch.bfloat16
        scores, reference = half.score(CONVERSATIONS), engine.score(CONVERSATIONS)
    finally:
        half.close()
    assert all(isinstance(s, float) for s in scores)
    spread = max(reference) - min(reference)
    assert scores == pytest.approx(reference, abs=0.05 * spread + 1e-3)
    assert scores != reference  # really computed in bf16, not float32 again


def test_an_unknown_dtype_is_a_load_error_naming_it(store: Path) -> None:
    with pytest.raises(ModelLoadError, match="dtype 'float8' is not one of auto, float32, bfloat16"):
        TorchRewardEngine.load(store / "tiny-rm/v1", device="cpu", dtype="float8")


@pytest.mark.slow  # inductor compiles C++ kernels: ~30 s on 2 quiet cores
def test_compiled_encoder_on_cpu_is_frozen_whole_and_scores_as_eager(store: Path) -> None:
    """`--compile` on a CPU compiles an encoder whole with inductor freezing (the model object replaced; a decoder
    compiles its repeated blocks instead); batches of new sizes score like the eager engine, no prompt reuse."""
    eager = TorchRewardEngine.load(store / "bert-rm/v1", device="cpu")
    compiled = TorchRewardEngine.load(store / "bert-rm/v1", device="cpu", compile_blocks=True)
    try:
        assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)
        assert compiled.packing is False and compiled.shares_prefixes is False
        for batch in (CONVERSATIONS, CONVERSATIONS[:2], CONVERSATIONS[2:]):
            assert compiled.score(batch) == pytest.approx(eager.score(batch), abs=1e-5)
    finally:
        compiled.close()
        eager.close()


def test_the_pass_workers_setting_reaches_the_engine_and_its_batcher(store: Path) -> None:
    from gateway.reward_serving.metrics import RewardServerMetrics
    from gateway.reward_serving.registry import ModelVersion
    from gateway.reward_serving.server import ServerSettings, _default_loader

    assert ServerSettings(models_dir="m").pass_workers == "auto"
    two = 2 if torch.get_num_threads() >= 2 else 1
    for slug, setting, workers in (
        ("bert-rm", "1", 1),
        ("bert-rm", "2", 2),
        ("bert-rm", "auto", two),
        ("tiny-rm", "auto", 1),  # a decoder: one pass at a time unless asked
        ("tiny-rm", "2", 2),
    ):
        settings = ServerSettings(models_dir=str(store), device="cpu", pass_workers=setting)
        model = _default_loader(settings, RewardServerMetrics())(ModelVersion(slug, 1, store / slug / "v1"))
        try:
            assert model.engine.pass_workers == workers
            assert model.batcher.config.passes_in_flight == workers
        finally:
            model.engine.close()
    with pytest.raises(ValueError, match="pass_workers 'many' is not 'auto' or a number"):
        _default_loader(ServerSettings(models_dir=str(store), device="cpu", pass_workers="many"), RewardServerMetrics())
