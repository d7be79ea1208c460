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

    The sim backend has no model; with none given it borrows the built-in tiny model's tokenizer so its
    synthetic token ids read as text.
    """
    from pathlib import Path

    if config.backend not in ("nano", "sim") and config.model is None:
        return None
    if config.model is not None:
        root = Path(config.model)
    else:
        from llumnix_dask.engine.nano.tiny_model import default_model_dir

        root = default_model_dir()
    path = root / "tokenizer.json"
    if not path.is_file():
        logger.warning("model %s has no tokenizer.json; prompts must be token ids", root)
        return None
    from tokenizers import Tokenizer

    return _TokenizerAdapter(Tokenizer.from_file(str(path)))
