"""Frontend tokenization: large prompts leave the event loop (a helper process) and give the same ids."""

from __future__ import annotations

import asyncio

from llumnix_dask.config import EngineConfig
from llumnix_dask.client.intake import prompt_bound_tokens
from llumnix_dask.engine.tokenizer import load_tokenizer


def test_a_large_prompt_is_tokenized_in_a_helper_process_with_the_same_ids():
    tok = load_tokenizer(EngineConfig())
    text = "The river flowed past the old mill, and the miller sang. " * 400  # ~23 KB
    try:
        ids = asyncio.run(tok.aencode(text, in_process_above_bytes=1024))
        assert tok._pool is not None  # it went to the helper process
        assert ids == tok.encode(text)
    finally:
        tok.close()


def test_the_token_bound_never_exceeds_the_real_count():
    tok = load_tokenizer(EngineConfig())
    for text in ("hello", "Once upon a time there was a river", "x" * 5000, "\u00e9\u00e8" * 300, "<s></s>" * 50):
        assert prompt_bound_tokens(text, tok) <= len(tok.encode(text))
