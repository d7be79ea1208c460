"""What every backend reads from a Hugging Face checkpoint directory besides the weights: the tokenizer
(``tokenizer.json``) and the end-of-sequence token ids (``config.json`` and ``generation_config.json``).

    >>> from llumnix_dask.engine.nano.tiny_model import default_model_dir
    >>> eos_token_ids(default_model_dir())
    (1,)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_tokenizer_file(root: str | Path) -> Any:
    """The checkpoint's ``tokenizers.Tokenizer`` (None when it has no tokenizer.json)."""
    path = Path(root) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def merge_token_ids(*values: Any) -> tuple[int, ...]:
    """Ids from config values that are an int, a list of ints or None, in order, without repeats."""
    ids: list[int] = []
    for v in values:
        if v is None:
            continue
        for x in v if isinstance(v, (list, tuple)) else [v]:
            if int(x) not in ids:
                ids.append(int(x))
    return tuple(ids)


def eos_token_ids(root: str | Path) -> tuple[int, ...]:
    """End-of-sequence ids of the checkpoint at ``root`` (from config.json and generation_config.json)."""
    root = Path(root)
    cfg = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    gen_path = root / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    return merge_token_ids(cfg.get("eos_token_id"), gen.get("eos_token_id"))
