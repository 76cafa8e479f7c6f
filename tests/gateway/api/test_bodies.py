"""gateway.api.bodies as pure code: a body model's problem named at its field (union branches told together),
header values read as UTF-8, and the boolean header. (A body that is not UTF-8: tests/gateway/api/test_chat.py.)"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.api.bodies import header_flag, invalid_body, utf8_header
from gateway.errors import InvalidRequestError
from gateway.protocol import ChatCompletionRequest


def problem(body: dict[str, object]) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(body)
    error = invalid_body(caught.value)
    return error.param, error.message


def test_a_body_models_problem_is_named_at_its_field() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert problem({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}) == (
        "messages[0].content[0]",
        "messages[0].content[0]: a 'text' part needs 'text' (a string)",
    )
    param, message = problem({"model": "m", "messages": messages, "stop": 5})  # str | list: both branches told
    assert param == "stop" and message == "stop: Input should be a valid string; Input should be a valid list"
    assert problem({"messages": messages})[0] == "model"
    assert problem({"model": "m", "messages": messages, "logit_bias": {"7": 1000}})[0] == "logit_bias.7"


def test_headers_are_utf8_and_flags_are_true_or_false() -> None:
    assert utf8_header("tëst".encode().decode("latin-1"), "op-criteria") == "tëst"
    with pytest.raises(InvalidRequestError) as caught:
        utf8_header("\xff", "op-criteria")
    assert caught.value.param == "op-criteria"
    assert header_flag(None, "op-best-only") is False and header_flag(" TRUE ", "op-best-only") is True
    with pytest.raises(InvalidRequestError):
        header_flag("yes", "op-best-only")
