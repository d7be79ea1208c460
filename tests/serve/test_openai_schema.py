"""OpenAI request bodies: what is accepted, what is refused with a message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llumnix_dask.request import Priority
from llumnix_dask.serve.openai_schema import APIError, ChatCompletionRequest, CompletionRequest, chat_prompt


def test_prompt_forms():
    assert CompletionRequest(prompt="hi").prompts() == ["hi"]
    assert CompletionRequest(prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    with pytest.raises(APIError, match="must not be empty"):
        CompletionRequest(prompt=[]).prompts()


def test_sampling_and_extensions():
    body = CompletionRequest(prompt="x", max_tokens=7, temperature=0, stop="END", seed=3, priority="high",
                             slo_ttft_s=0.5, frequency_penalty=0.0)  # unknown OpenAI fields are ignored
    params = body.sampling()
    assert (params.max_tokens, params.greedy, params.stop, params.seed) == (7, True, ("END",), 3)
    assert body.priority_value is Priority.HIGH
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], max_completion_tokens=9)
    assert chat.sampling().max_tokens == 9


@pytest.mark.parametrize("field", [{"n": 2}, {"echo": True}, {"logprobs": 3}, {"max_tokens": 0}, {"top_p": 0}])
def test_unsupported_or_invalid_fields_are_refused(field):
    with pytest.raises(ValidationError):
        CompletionRequest(prompt="x", **field)


def test_chat_prompt_ends_with_the_assistant_turn():
    body = ChatCompletionRequest(messages=[{"role": "system", "content": "s"},
                                           {"role": "user", "content": [{"type": "text", "text": "u"}]}])
    assert chat_prompt(body.messages) == "system: s\nuser: u\nassistant:"
