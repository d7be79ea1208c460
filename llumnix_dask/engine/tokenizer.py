"""Frontend-side tokenization: the model's own tokenizer, loaded without building the engine.

``tokenizers`` holds the GIL while it encodes (about 2 s for a 4 MB prompt here), which would stall every
stream and HTTP request of the process; :meth:`Tokenizer.aencode` therefore sends large prompts to a helper
process and keeps the event loop free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import multiprocessing
from pathlib import Path
from typing import Any, Sequence

from llumnix_dask.config import EngineConfig

logger = logging.getLogger(__name__)


class Tokenizer:
    """``tokenizers.Tokenizer`` with the ``encode -> list[int]`` / ``decode`` shape the frontend uses."""

    def __init__(self, tokenizer: Any, path: str | Path | None = None) -> None:
        self._tokenizer = tokenizer
        self.path = str(path) if path is not None else None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    async def aencode(self, text: str, in_process_above_bytes: int) -> list[int]:
        """``encode`` without blocking the event loop: prompts over ``in_process_above_bytes`` bytes are
        encoded by a helper process (started on first use)."""
        if len(text) * 4 <= in_process_above_bytes or len(text.encode("utf-8")) <= in_process_above_bytes \
                or self.path is None:
            return self.encode(text)
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_load_worker_tokenizer,
                initargs=(self.path,),
            )
        return await asyncio.get_running_loop().run_in_executor(self._pool, _encode_in_worker, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """Bytes of the longest token (special tokens included): a text of n bytes has >= n / this tokens."""
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        longest = max((len(self._tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
                       for i in vocab.values()), default=1)
        return max(1, longest, max((len(t.encode("utf-8")) for t in vocab), default=1))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


_WORKER_TOKENIZER: Any = None


def _load_worker_tokenizer(path: str) -> None:
    global _WORKER_TOKENIZER
    from tokenizers import Tokenizer as HFTokenizer

    _WORKER_TOKENIZER = HFTokenizer.from_file(str(Path(path) / "tokenizer.json"))


def _encode_in_worker(text: str) -> list[int]:
    return _WORKER_TOKENIZER.encode(text).ids


def load_tokenizer(config: EngineConfig) -> Tokenizer | None:
    """The model's tokenizer for frontend-side tokenization (None if the model has none).

    No model given means the built-in tiny model for every backend; the sim backend, which has no model,
    borrows its tokenizer so that synthetic token ids read as text.
    """
    from llumnix_dask.engine.hf_files import load_tokenizer_file

    if config.model is not None:
        root = config.model
    else:
        from llumnix_dask.engine.nano.tiny_model import default_model_dir

        root = default_model_dir()
    tokenizer = load_tokenizer_file(root)
    if tokenizer is None:
        logger.warning("model %s has no tokenizer.json; prompts must be token ids", root)
        return None
    return Tokenizer(tokenizer, root)
