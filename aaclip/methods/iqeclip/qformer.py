"""IQE-CLIP's query module (IQM): a small BERT-style Q-Former in plain PyTorch.

Learned queries attend to themselves, then to one level's patch features, then to the image's
two text features, then go through a feed-forward block; every sub-layer is post-LN
(dense -> dropout -> LayerNorm(h + residual)). Submodule names follow the released
checkpoints (`layernorm`, `encoder.layer.<i>.attention.attention.query`, ...), so a release
`iqm` state dict loads as it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Separate query/key/value projections, scaled dot product, dropout on the weights.

    No output projection here: the `dense` of the following `Output` block is that.
    """

    def __init__(self, hidden: int, kv_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"IQM width {hidden} is not a multiple of its {heads} heads")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_dim, hidden)
        self.value = nn.Linear(kv_dim, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._split(self.query(x))
        k = self._split(self.key(context))
        v = self._split(self.value(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        weights = self.dropout(scores.softmax(dim=-1))
        out = weights @ v  # (B, heads, n, head_dim)
        return out.transpose(1, 2).reshape(x.shape)


class Output(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual)."""

    def __init__(self, width_in: int, hidden: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815 (release checkpoint name)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, hidden: int, kv_dim: int, heads: int, dropout: float, eps: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, kv_dim, heads, dropout)
        self.output = Output(hidden, hidden, dropout, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x, context), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU


class QueryLayer(nn.Module):
    """Self-attention over the queries -> image cross-attention -> text cross-attention -> FFN."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.attention = AttentionBlock(hidden, hidden, heads, dropout, eps)
        self.crossattention = AttentionBlock(hidden, hidden, heads, dropout, eps)
        self.text_crossattention = AttentionBlock(hidden, hidden, heads, dropout, eps)
        self.intermediate_query = Intermediate(hidden, ffn)
        self.output_query = Output(ffn, hidden, dropout, eps)

    def forward(
        self, h: torch.Tensor, image_tokens: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        h = self.attention(h, h)
        h = self.crossattention(h, image_tokens)
        h = self.text_crossattention(h, text)
        return self.output_query(self.intermediate_query(h), h)


class Encoder(nn.Module):
    def __init__(self, layers: int, **kw) -> None:
        super().__init__()
        self.layer = nn.ModuleList([QueryLayer(**kw) for _ in range(layers)])


class QueryModule(nn.Module):
    """IQM: queries (B, q, H), patch tokens (B, L, H), text features (B, t, H) -> (B, q, H).

    Defaults of the release (`config_iqm.json`): 4 layers, 8 heads, FFN 4x, dropout 0.1,
    LayerNorm eps 1e-12, no position embedding; PyTorch default initialisation.
    """

    def __init__(
        self,
        hidden: int,
        layers: int = 4,
        heads: int = 8,
        ffn: int | None = None,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        kw = dict(hidden=hidden, heads=heads, ffn=ffn or 4 * hidden, dropout=dropout, eps=eps)
        self.encoder = Encoder(layers, **kw)

    def forward(
        self, queries: torch.Tensor, image_tokens: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        h = self.dropout(self.layernorm(queries))
        for layer in self.encoder.layer:
            h = layer(h, image_tokens, text)
        return h
