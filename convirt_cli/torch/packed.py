"""A BERT text tower that computes only real tokens, for export.

A batch of reports is padded to its longest; on the IU X-ray reports 40% of a 64-report batch is padding.
Everything in BERT but attention is per token (embeddings, the six Linear layers, LayerNorm, GELU), so here
those run on the real tokens alone, packed into one row [1, T, D]; only attention sees the padded [B, L]
layout, gathered from the packed rows. Padding slots are filled with a copy of the batch's first token: as keys
they get the same -inf mask as in BertModel (softmax weight exactly 0), as queries their rows are dropped, and the
pooling masks them as it does in the torch tower. So every real token's output equals BertModel's; the export's
parity gate checks it.

The packed rows stay 3-D ([1, T, D]) so each Linear exports as MatMul + Add, the pattern the int8 quantiser
and onnxruntime's fusions look for (a 2-D Linear would export as Gemm).
"""

from __future__ import annotations

import torch
from torch import nn

from convirt_cli.torch.pooling import pool_tokens


def packable(bert: nn.Module) -> bool:
    """A plain BERT encoder: absolute positions, no cross-attention, post-LN layers as in transformers' Bert."""
    cfg = getattr(bert, "config", None)
    return (type(bert).__name__ == "BertModel" and cfg is not None and not cfg.is_decoder
            and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
            and not getattr(cfg, "add_cross_attention", False))


def _padded(rows: torch.Tensor, slot: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Packed [1, T, D] -> padded `shape` ([B, L, ...]); slot[i] = the packed row that fills padded position i."""
    return rows[0, slot].view(shape)


class PackedText(nn.Module):
    """(input_ids, attention_mask) [B, L] -> pooled token features [B, D], like TextTower, pad-free."""

    def __init__(self, bert: nn.Module, pooling: str):
        super().__init__()
        self.bert, self.pooling = bert.eval(), pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, length = input_ids.shape
        emb = self.bert.embeddings
        keep = attention_mask.reshape(-1) > 0
        idx = torch.nonzero(keep).squeeze(1)  # [T] positions of real tokens in the flattened batch
        slot = torch.where(keep, torch.cumsum(keep.long(), 0) - 1, 0)
        pos = torch.arange(b * length, device=input_ids.device) % length
        x = (emb.word_embeddings(input_ids.reshape(-1)[idx]) + emb.position_embeddings(pos[idx])
             + emb.token_type_embeddings.weight[0])
        h = emb.LayerNorm(x).unsqueeze(0)  # [1, T, D]
        d = h.shape[-1]
        neg = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.bert.encoder.layer:
            att = layer.attention.self
            heads, hd = att.num_attention_heads, att.attention_head_size
            q, k, v = (_padded(lin(h), slot, (b, length, heads, hd)).transpose(1, 2)
                       for lin in (att.query, att.key, att.value))
            probs = torch.softmax(q @ k.transpose(2, 3) * att.scaling + neg, dim=-1)
            ctx = (probs @ v).transpose(1, 2).reshape(1, b * length, heads * hd)[:, idx]
            h = layer.attention.output(ctx, h)
            h = layer.output(layer.intermediate(h), h)
        return pool_tokens(_padded(h, slot, (b, length, d)), attention_mask, self.pooling)
