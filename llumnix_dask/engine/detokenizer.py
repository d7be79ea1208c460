"""Incremental detokenization with stop strings.

Decoding a token on its own is wrong for byte-level and sentencepiece tokenizers (a character may span
tokens; a leading space may depend on the previous token), so each step decodes a small window of
recent tokens and emits only the text that became final. Text that could still be the start of a stop
string is held back until it is known not to be one. The whole state is four numbers and a string, and
it travels with a migrating request (:meth:`state` / :meth:`from_state`)::

    >>> from llumnix_dask.engine.nano.tiny_model import build_tokenizer
    >>> tok = build_tokenizer(300)
    >>> d = IncrementalDetokenizer(tok, prompt_ids=[0], stop=())
    >>> ids = tok.encode("hello there").ids[1:]
    >>> "".join(d.update(ids[: i + 1])[0] for i in range(len(ids))) + d.flush(ids)
    'hello there'
"""

from __future__ import annotations

from typing import Any, Sequence

# Prompt tokens kept as decoding context, so the first output token decodes with its leading space.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.context = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0  # window start, in (context + output) ids
        self.read_offset = len(self.context)  # ids up to here are already in self.text
        self.text = ""  # output text so far (cut at a stop string)
        self.emitted = 0  # characters of self.text already returned

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _advance(self, output_ids: Sequence[int], final: bool) -> None:
        k = len(self.context)
        ids = self.context[self.prefix_offset :] + list(output_ids[max(0, self.prefix_offset - k) :])
        read = self.read_offset - self.prefix_offset
        prefix_text = self._decode(ids[:read])
        new_text = self._decode(ids)
        # A trailing U+FFFD is an incomplete character: wait for the next token, unless this is the end.
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.text += new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = k + len(output_ids)

    def _cut_at_stop(self) -> bool:
        hit = False
        for s in self.stop:
            at = self.text.find(s, max(0, self.emitted - len(s) + 1))
            if at >= 0:
                self.text, hit = self.text[:at], True
        return hit

    def update(self, output_ids: Sequence[int]) -> tuple[str, bool]:
        """Account for the latest output token(s); returns (text to emit now, a stop string was hit)."""
        if self.tokenizer is None:
            return "", False
        self._advance(output_ids, final=False)
        hit = False
        if self.stop:
            hit = self._cut_at_stop()
            if not hit:
                # Hold back what could still grow into a stop string.
                hold = max(len(s) for s in self.stop) - 1
                end = max(self.emitted, len(self.text) - hold)
                out, self.emitted = self.text[self.emitted : end], end
                return out, False
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out, hit

    def flush(self, output_ids: Sequence[int]) -> str:
        """The rest of the text (held back, or an incomplete last character) when the request finishes."""
        if self.tokenizer is not None:
            self._advance(output_ids, final=True)
            self._cut_at_stop()
        out, self.emitted = self.text[self.emitted :], max(self.emitted, len(self.text))
        return out

    def state(self) -> dict[str, Any]:
        return {
            "context": list(self.context),
            "prefix_offset": self.prefix_offset,
            "read_offset": self.read_offset,
            "text": self.text,
            "emitted": self.emitted,
        }

    @classmethod
    def for_request(cls, tokenizer: Any, request: Any, state: dict[str, Any] | None = None) -> "IncrementalDetokenizer":
        """The detokenizer of ``request`` on this engine: restored from a migrated ``state``, or caught up
        (silently) with the output tokens the request already has (their text was streamed elsewhere)."""
        stop = request.sampling.stop
        if state is not None and tokenizer is not None:
            return cls.from_state(tokenizer, stop, state)
        detok = cls(tokenizer, request.prompt_token_ids, stop)
        if request.output_token_ids and tokenizer is not None:
            detok.update(request.output_token_ids)
            detok.flush(request.output_token_ids)
        return detok

    @classmethod
    def from_state(cls, tokenizer: Any, stop: Sequence[str], state: dict[str, Any]) -> "IncrementalDetokenizer":
        d = cls(tokenizer, state["context"], stop)
        d.prefix_offset, d.read_offset = state["prefix_offset"], state["read_offset"]
        d.text, d.emitted = state["text"], state["emitted"]
        return d


def encode_text(tokenizer: Any, text: str, model_path: Any) -> list[int]:
    """Prompt token ids for ``text`` with an engine's tokenizer (BOS when the tokenizer adds one)."""
    if tokenizer is None:
        raise ValueError(f"model {model_path!r} has no tokenizer.json; pass token ids")
    return tokenizer.encode(text).ids


def decode_ids(tokenizer: Any, token_ids: Sequence[int]) -> str:
    return "" if tokenizer is None else tokenizer.decode(list(token_ids), skip_special_tokens=True)
