"""Flatten one scheduler step (prefill chunks and decode tokens of many requests) into the tensors the
paged forward pass consumes.

Every scheduled request contributes a :class:`SeqChunk`: the token ids to feed, the position of the
first one, and its block table. Chunks of one token (decode, or a one-token prefill tail) come first and
form the *decode group*; longer chunks form the *prefill group*, padded to the longest. Attention rule for
both groups: a query at position p sees every cached key at position <= p of its own request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SeqChunk:
    token_ids: list[int]  # tokens fed this step
    start: int  # position of token_ids[0]; KV of positions < start is already in the blocks
    block_ids: list[int]  # block table, covering at least start + len(token_ids) tokens
    sample: bool  # whether this chunk ends at the last known token (so its logits pick the next one)


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T] flat cache slot (block * block_size + offset) each token's KV goes to
    num_decode: int  # the first num_decode tokens are one-token chunks
    dec_block_tables: torch.Tensor | None  # [D, max_blocks]
    dec_mask: torch.Tensor | None  # [D, 1, 1, max_blocks * block_size] bool, True = attend
    pf_token_index: torch.Tensor | None  # [P, Qmax] index into the T tokens (padding repeats the last)
    pf_valid: torch.Tensor | None  # [P, Qmax] bool
    pf_block_tables: torch.Tensor | None  # [P, max_blocks]
    pf_mask: torch.Tensor | None  # [P, 1, Qmax, max_blocks * block_size] bool
    logits_index: torch.Tensor  # [S] which tokens' hidden states become logits
    # Every prefill chunk starts at position 0: attention needs no cache gather and no mask, only causality
    # (right padding sits after every real query, so causality alone hides it).
    pf_fresh: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def _pad_tables(tables: list[list[int]]) -> torch.Tensor:
    width = max(len(t) for t in tables)
    # Padding points at block 0; the mask hides whatever it holds.
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)


def build_forward_batch(
    chunks: list[SeqChunk], block_size: int, device: torch.device, all_logits: bool = False
) -> ForwardBatch:
    """Tensors for one forward pass. ``chunks`` must list the one-token chunks first."""
    if not chunks:
        raise ValueError("empty batch")
    num_decode = 0
    while num_decode < len(chunks) and len(chunks[num_decode].token_ids) == 1:
        num_decode += 1
    if any(len(c.token_ids) == 1 for c in chunks[num_decode:]):
        raise ValueError("one-token chunks must come first")

    ids: list[int] = []
    logits_index: list[int] = []
    dec_pos: list[int] = []
    dec_slots: list[int] = []
    for c in chunks[:num_decode]:
        p = c.start
        ids.append(c.token_ids[0])
        dec_pos.append(p)
        dec_slots.append(c.block_ids[p // block_size] * block_size + p % block_size)
    pos_parts = [torch.tensor(dec_pos, dtype=torch.long)]
    slot_parts = [torch.tensor(dec_slots, dtype=torch.long)]

    dec_bt = dec_mask = None
    if num_decode:
        dec = chunks[:num_decode]
        dec_bt = _pad_tables([c.block_ids[: c.start // block_size + 1] for c in dec])
        keys = torch.arange(dec_bt.shape[1] * block_size)
        dec_mask = (keys[None, :] <= pos_parts[0][:, None])[:, None, None, :]

    pf_index = pf_valid = pf_bt = pf_mask = None
    prefill = chunks[num_decode:]
    if prefill:
        qmax = max(len(c.token_ids) for c in prefill)
        offset = num_decode
        index_rows, valid_rows, qpos_rows = [], [], []
        ar = torch.arange(qmax)
        for c in prefill:
            n = len(c.token_ids)
            ids.extend(c.token_ids)
            pos = torch.arange(c.start, c.start + n)
            table = torch.tensor(c.block_ids, dtype=torch.long)
            pos_parts.append(pos)
            slot_parts.append(table[pos // block_size] * block_size + pos % block_size)
            clamped = ar.clamp(max=n - 1)
            index_rows.append(offset + clamped)
            valid_rows.append(ar < n)
            qpos_rows.append(c.start + clamped)
            offset += n
        pf_index = torch.stack(index_rows)
        pf_valid = torch.stack(valid_rows)
        pf_bt = _pad_tables([c.block_ids[: -(-(c.start + len(c.token_ids)) // block_size)] for c in prefill])
        keys = torch.arange(pf_bt.shape[1] * block_size)
        pf_mask = (keys[None, None, :] <= torch.stack(qpos_rows)[:, :, None])[:, None]

    offset = 0
    for c in chunks:
        n = len(c.token_ids)
        if all_logits:
            logits_index.extend(range(offset, offset + n))
        elif c.sample:
            logits_index.append(offset + n - 1)
        offset += n

    def dev(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device, non_blocking=True)

    return ForwardBatch(
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        positions=dev(torch.cat(pos_parts)),
        slot_mapping=dev(torch.cat(slot_parts)),
        num_decode=num_decode,
        dec_block_tables=dev(dec_bt),
        dec_mask=dev(dec_mask),
        pf_token_index=dev(pf_index),
        pf_valid=dev(pf_valid),
        pf_block_tables=dev(pf_bt),
        pf_mask=dev(pf_mask),
        pf_fresh=bool(prefill) and all(c.start == 0 for c in prefill),
        logits_index=torch.tensor(logits_index, dtype=torch.long, device=device),
    )
