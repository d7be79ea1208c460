"""The Llama-architecture forward pass over a paged KV cache (RMSNorm, RoPE, GQA, SwiGLU).

One call runs every scheduled token of a step through the layers together: the linear layers see all T
tokens as one matrix; attention first writes the new K/V into their cache slots, then gathers each
request's context through its block table and runs ``scaled_dot_product_attention`` once for the decode
group and once for the (padded) prefill group. Grouped-query attention folds the query heads that share
a KV head into the query-length axis, so K/V are never repeated in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llumnix_dask.engine.nano.batch import ForwardBatch
from llumnix_dask.engine.nano.kv_cache import PagedKVCache
from llumnix_dask.engine.nano.loader import Checkpoint, rope_inv_freq


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32 like the reference implementation, whatever the model dtype, then scale.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


class NanoLlama:
    """Stateless forward pass; the weights come from a :class:`Checkpoint`, the KV from a cache."""

    def __init__(self, ckpt: Checkpoint, max_len: int) -> None:
        self.ckpt = ckpt
        self.args = a = ckpt.args
        self.dtype = ckpt.embed.dtype
        self.device = ckpt.embed.device
        self.group = a.num_heads // a.num_kv_heads
        inv_freq = rope_inv_freq(a).float()
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(self.device, self.dtype)  # [max_len, head_dim]
        self.sin = emb.sin().to(self.device, self.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _gather(self, cache: PagedKVCache, layer: int, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of every request's context, [B, kv_heads, blocks * block_size, head_dim] each.

        One ``index_select`` over whole blocks (contiguous rows) for K and V together: much cheaper than
        advanced indexing, which copies element by element.
        """
        B, nb = tables.shape
        kv = cache.data[layer].view(2, cache.num_blocks, -1).index_select(1, tables.reshape(-1))
        kv = kv.view(2, B, nb * cache.block_size, self.args.num_kv_heads, self.args.head_dim).transpose(2, 3)
        return kv[0], kv[1]

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return zeros.masked_fill_(~allowed, float("-inf"))

    def forward(self, batch: ForwardBatch, cache: PagedKVCache) -> torch.Tensor:
        """Logits (float32) of the tokens listed in ``batch.logits_index``; writes the KV of every token."""
        a, ck = self.args, self.ckpt
        H, KVH, Dh, G = a.num_heads, a.num_kv_heads, a.head_dim, self.group
        T, D = batch.num_tokens, batch.num_decode
        x = ck.embed[batch.input_ids]
        cos = self.cos[batch.positions][:, None, :]
        sin = self.sin[batch.positions][:, None, :]

        # Additive float masks: the CPU attention kernels run about twice as fast with them as with bool.
        dec_mask = pf_mask = None
        if batch.dec_mask is not None:
            dec_mask = self._additive(batch.dec_mask)
        if batch.pf_mask is not None and not batch.pf_fresh:
            P, _, Q, K = batch.pf_mask.shape
            # Query heads of one KV head are stacked along the query axis: repeat the mask per head.
            pf_mask = self._additive(batch.pf_mask[:, :, None].expand(P, 1, G, Q, K).reshape(P, 1, G * Q, K))

        for li, w in enumerate(ck.layers):
            h = rms_norm(x, w.input_norm, a.rms_norm_eps)
            qkv = w.qkv(h)
            qk = self._rope(qkv[:, : (H + KVH) * Dh].view(T, H + KVH, Dh), cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + KVH) * Dh :].view(T, KVH, Dh)
            k_cache, v_cache = cache.layer(li)
            k_cache.view(-1, KVH, Dh).index_copy_(0, batch.slot_mapping, k)
            v_cache.view(-1, KVH, Dh).index_copy_(0, batch.slot_mapping, v)

            parts = []
            if D:
                kg, vg = self._gather(cache, li, batch.dec_block_tables)
                qd = q[:D].reshape(D, KVH, G, Dh)
                od = F.scaled_dot_product_attention(qd, kg, vg, attn_mask=dec_mask)
                parts.append(od.reshape(D, H * Dh))
            if batch.pf_fresh:
                # Fresh prompts attend only to themselves: use this step's K/V directly, causal, no mask.
                P, Q = batch.pf_token_index.shape
                idx = batch.pf_token_index
                op = F.scaled_dot_product_attention(
                    q[idx].transpose(1, 2), k[idx].transpose(1, 2), v[idx].transpose(1, 2), is_causal=True, enable_gqa=True
                )
                parts.append(op.transpose(1, 2).reshape(P, Q, H * Dh)[batch.pf_valid])
            elif pf_mask is not None:
                P, Q = batch.pf_token_index.shape
                kg, vg = self._gather(cache, li, batch.pf_block_tables)
                qp = q[batch.pf_token_index].view(P, Q, KVH, G, Dh).permute(0, 2, 3, 1, 4).reshape(P, KVH, G * Q, Dh)
                op = F.scaled_dot_product_attention(qp, kg, vg, attn_mask=pf_mask)
                op = op.view(P, KVH, G, Q, Dh).permute(0, 3, 1, 2, 4).reshape(P, Q, H * Dh)
                parts.append(op[batch.pf_valid])
            attn = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = x + w.o(attn)

            h = rms_norm(x, w.post_attn_norm, a.rms_norm_eps)
            gate, up = w.gate_up(h).chunk(2, dim=-1)
            x = x + w.down(F.silu(gate) * up)

        x = rms_norm(x[batch.logits_index], ck.final_norm, a.rms_norm_eps)
        return ck.lm_head(x).float()
