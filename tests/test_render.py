"""Tests for gateway/formats/rendering.py's render and pooling rule (DESIGN contract 2), on the tiny models of
tests/tiny.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.formats import Message, pool_rewards, render_conversation, render_responses

CONVERSATIONS = [
    [
        Message("system", "Be brief."),
        Message("user", "How do I reset my password?"),
        Message("assistant", "Open settings, choose security, then reset."),
    ],
    [Message("user", "Thanks!"), Message("assistant", "Your order ships tomorrow.")],
    [
        Message("user", "Tell me about the fox."),
        Message("assistant", "The quick brown fox jumps."),
        Message("user", "And the dog?"),
        Message("assistant", "The lazy dog sleeps over 0123456789."),
    ],
]


@pytest.fixture(scope="module")
def chat_tok() -> Any:
    pytest.importorskip("transformers")
    from tests.tiny import chat_tokenizer

    return chat_tokenizer()


@pytest.fixture(scope="module")
def plain_tok() -> Any:
    pytest.importorskip("transformers")
    from tests.tiny import plain_tokenizer

    return plain_tokenizer()


def _dicts(conversation: list[Message]) -> list[dict[str, Any]]:
    return [m.to_dict() for m in conversation]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["system", "short", "multi-turn"])
def test_chat_template_rendering_matches_apply_chat_template(chat_tok: Any, conversation: list[Message]) -> None:
    rendered = render_conversation(chat_tok, conversation, max_length=512)
    expected = chat_tok.apply_chat_template(_dicts(conversation), tokenize=False)
    assert chat_tok.decode(list(rendered.input_ids)) == expected
    assert rendered.prompt_tokens_trimmed == 0 and rendered.response_tokens_truncated == 0


def test_render_responses_shares_the_prompt(chat_tok: Any) -> None:
    prompt = CONVERSATIONS[0][:-1]
    answers = [Message("assistant", "Open settings."), Message("assistant", "No idea, sorry about that.")]
    rendered = render_responses(chat_tok, prompt, answers, max_length=512)
    assert len(rendered) == 2
    for answer, r in zip(answers, rendered, strict=True):
        assert chat_tok.decode(list(r.input_ids)) == chat_tok.apply_chat_template(
            _dicts([*prompt, answer]), tokenize=False
        )
        assert r == render_conversation(chat_tok, [*prompt, answer], max_length=512)


def _head_and_response_ids(tok: Any, conversation: list[Message]) -> tuple[list[int], list[int]]:
    head = tok.apply_chat_template(_dicts(conversation[:-1]), tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(_dicts(conversation), tokenize=False)
    assert full.startswith(head)
    return tok.encode(head, add_special_tokens=False), tok.encode(full[len(head) :], add_special_tokens=False)


def test_truncation_keeps_the_response_and_trims_the_prompt_from_the_left(chat_tok: Any) -> None:
    conversation = CONVERSATIONS[2]
    full = render_conversation(chat_tok, conversation, max_length=512)
    head_ids, response_ids = _head_and_response_ids(chat_tok, conversation)
    assert list(full.input_ids) == head_ids + response_ids
    max_length = len(response_ids) + 5
    cut = render_conversation(chat_tok, conversation, max_length=max_length)
    assert len(cut.input_ids) == max_length
    assert cut.prompt_tokens_trimmed == len(head_ids) - 5
    assert cut.response_tokens_truncated == 0
    assert list(cut.input_ids) == list(full.input_ids)[-max_length:]
    assert chat_tok.decode(list(cut.input_ids)).endswith(conversation[-1].content + "<|im_end|>\n")


def test_response_longer_than_max_length_is_cut_from_the_right(chat_tok: Any) -> None:
    long_answer = Message("assistant", " ".join(["The quick brown fox jumps over the lazy dog."] * 4))
    conversation = [Message("user", "Tell me about the fox."), long_answer]
    head_ids, response_ids = _head_and_response_ids(chat_tok, conversation)
    max_length = 8
    assert len(response_ids) > max_length
    cut = render_conversation(chat_tok, conversation, max_length=max_length)
    assert list(cut.input_ids) == response_ids[:max_length]
    assert cut.response_tokens_truncated == len(response_ids) - max_length
    assert cut.prompt_tokens_trimmed == len(head_ids)


def test_render_rejects_bad_arguments(chat_tok: Any) -> None:
    with pytest.raises(ValueError, match="max_length"):
        render_conversation(chat_tok, CONVERSATIONS[1], max_length=1)
    with pytest.raises(ValueError, match="empty"):
        render_conversation(chat_tok, [], max_length=64)


def test_plain_tokenizer_wraps_cls_and_sep(plain_tok: Any) -> None:
    assert not getattr(plain_tok, "chat_template", None)
    conversation = [Message("user", "How do I reset my password?"), Message("assistant", "Open settings.")]
    rendered = render_conversation(plain_tok, conversation, max_length=256)
    ids = list(rendered.input_ids)
    assert ids[0] == plain_tok.cls_token_id and ids[-1] == plain_tok.sep_token_id
    assert plain_tok.decode(ids[1:-1]) == "User: How do I reset my password?\n\nAssistant: Open settings."
    assert plain_tok.cls_token_id not in ids[1:] and plain_tok.sep_token_id not in ids[:-1]
    # Truncation counts [CLS]/[SEP] in max_length and still keeps the response whole.
    response_ids = plain_tok.encode("Open settings.", add_special_tokens=False)
    cut = render_conversation(plain_tok, conversation, max_length=len(response_ids) + 4)
    assert len(cut.input_ids) == len(response_ids) + 4
    assert list(cut.input_ids) == [ids[0], *ids[-(len(response_ids) + 3) :]]
    assert cut.prompt_tokens_trimmed == len(ids) - len(cut.input_ids)


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _rows_ending_in_eos(tok: Any) -> list[list[int]]:
    # Rendered conversations with the eos id appended: what a template that closes the answer
    # with eos produces. With pad == eos, the last real token of every row is a "pad" id.
    return [[*render_conversation(tok, c, 512).input_ids, tok.eos_token_id] for c in CONVERSATIONS]


def _alone(model: Any, row: list[int]) -> float:
    import torch

    with torch.no_grad():
        return float(pool_rewards(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))[0])


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_pool_rewards_on_a_right_padded_batch_equals_scoring_each_row_alone(
    kind: str, chat_tok: Any, plain_tok: Any
) -> None:
    torch = pytest.importorskip("torch")
    from tests.tiny import bert_reward_model, llama_reward_model

    if kind == "llama":
        tok, model = chat_tok, llama_reward_model(chat_tok)
        assert tok.pad_token_id == tok.eos_token_id  # the case that breaks pad-based pooling
        # Rows END in eos (== pad), as when a template closes the answer with the eos token.
        rows = _rows_ending_in_eos(tok)
    else:
        tok, model = plain_tok, bert_reward_model(plain_tok)
        rows = [list(render_conversation(tok, c, 512).input_ids) for c in CONVERSATIONS]
    assert len({len(r) for r in rows}) == len(rows)  # different lengths, so every row but one is padded
    ids, mask = _right_padded(rows, tok.pad_token_id)
    with torch.no_grad():
        batch = pool_rewards(model, ids, mask)
    assert batch.shape == (len(rows),)
    expected = torch.tensor([_alone(model, r) for r in rows])
    torch.testing.assert_close(batch, expected, atol=1e-5, rtol=0)


def test_hf_forward_misreads_rows_ending_in_eos_when_pad_equals_eos(chat_tok: Any) -> None:
    """Why pool_rewards exists: HF's decoder classifier finds the last token from pad_token_id,
    so with pad == eos it skips a trailing eos and reads another position (TRL #937,
    transformers #35352). pool_rewards reads the last real token from the attention mask."""
    torch = pytest.importorskip("torch")
    from tests.tiny import llama_reward_model

    model = llama_reward_model(chat_tok)
    rows = _rows_ending_in_eos(chat_tok)
    ids, mask = _right_padded(rows, chat_tok.pad_token_id)
    with torch.no_grad():
        ours = pool_rewards(model, ids, mask)
        theirs = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert bool(((ours - theirs).abs() > 1e-4).all()), (ours, theirs)


def test_pool_rewards_for_bert_is_the_models_own_cls_output(plain_tok: Any) -> None:
    torch = pytest.importorskip("torch")
    from tests.tiny import bert_reward_model

    model = bert_reward_model(plain_tok)
    rows = [list(render_conversation(plain_tok, c, 512).input_ids) for c in CONVERSATIONS]
    ids, mask = _right_padded(rows, plain_tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(
            pool_rewards(model, ids, mask), model(input_ids=ids, attention_mask=mask).logits[:, 0]
        )
