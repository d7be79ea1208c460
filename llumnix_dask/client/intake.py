"""Request intake: what a prompt must be before it becomes a request (checked before it is dispatched, so
that nothing invalid or oversized reaches an instance).

    >>> check_fits(100, max_tokens=16, max_model_len=2048)
    >>> check_fits(2040, max_tokens=16, max_model_len=2048)
    Traceback (most recent call last):
    ...
    ValueError: prompt: 2040 prompt tokens + max_tokens 16 exceed the model's context of 2048 tokens; shorten the prompt or lower max_tokens
"""

from __future__ import annotations

from typing import Any


def check_text(text: str) -> None:
    """A prompt must be valid Unicode: a lone surrogate (``"\\ud800"`` in JSON) cannot be encoded."""
    if not text:
        raise ValueError("prompt: must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"prompt: invalid Unicode at character {exc.start} ({exc.reason})") from None


def prompt_bound_tokens(text: str, tokenizer: Any) -> int:
    """A lower bound on the tokens of ``text`` without tokenizing it: no token is longer than the
    tokenizer's longest, so a text far too long for the context is refused at once."""
    longest = getattr(tokenizer, "max_token_bytes", None) or 64
    return -(-len(text.encode("utf-8")) // longest)


def check_fits(num_prompt_tokens: int, max_tokens: int, max_model_len: int | None, at_least: bool = False) -> None:
    """Prompt + max_tokens must fit the model's context (as vLLM rules: a 400, never a silent truncation)."""
    if max_model_len is None or num_prompt_tokens + max_tokens <= max_model_len:
        return
    tokens = f"at least {num_prompt_tokens}" if at_least else str(num_prompt_tokens)
    raise ValueError(
        f"prompt: {tokens} prompt tokens + max_tokens {max_tokens} exceed the model's context of "
        f"{max_model_len} tokens; shorten the prompt or lower max_tokens"
    )
