"""Frontend-side tokenization: the model's own tokenizer, loaded without building the engine."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from llumnix_dask.config import EngineConfig

logger = logging.getLogger(__name__)


class _TokenizerAdapter:
    """``tokenizers.Tokenizer`` with the ``encode -> list[int]`` / ``decode`` shape the frontend uses."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()


def load_tokenizer(config: EngineConfig) -> Any:
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
    return _TokenizerAdapter(tokenizer)
