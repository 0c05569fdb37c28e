"""Few-shot memory bank of reference-normal token features (MVFA-AD, ClipMPCAD).

**Fit** (MVFA ``train_few.py`` L167-177): per level, the tokens of every reference normal
image (MVFA: the x11-augmented normal supports), **CLS included** (290 per image at 240 px),
L2-normalised once here (the released ``cos_sim`` normalises both sides, norms clamped at
1e-8).

**Query** (``test_few.py`` L160-200): per test token, CLS dropped, D = min_j (1 - cos(q, m_j))
over the level's bank, on the g x g grid. Computed batched as 1 - max_j (q . m_j) with one
matmul per (query chunk, bank chunk), a running max, and at most ``chunk_elements``
similarities alive at a time; exact, because rounding 1 - x is monotone. Float32 by default
(the release's matmul runs in fp16 under CUDA autocast). No gradients: inference only.

**Scores** (seed-methods.md section 4): the memory map is sum_l up_S(D_l) (bilinear,
``align_corners=True``); segmentation sets: map = 0.5 minmax(text map) + 0.5 minmax(memory
map), image score = its max; classification-only sets: image score = 0.5 minmax(sum_l s_l) +
0.5 minmax(mean over pixels of the memory map); min-max over the whole test set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from aaclip.scoring import minmax, upsample

EPS = 1e-8
CHUNK_ELEMENTS = 1 << 24  # similarities per block: 64 MiB in float32
QUERY_ROWS = 4096  # query tokens per block (at most)


def normalise(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x / max(||x||, eps) along the last axis (the released ``cos_sim``'s clamp)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


@torch.no_grad()
def nearest_distance(
    queries: torch.Tensor, bank: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS
) -> torch.Tensor:
    """min_j (1 - q . m_j) for normalised queries (Q, C) and bank (M, C): (Q,)."""
    rows = max(1, min(QUERY_ROWS, chunk_elements))
    cols = max(1, chunk_elements // rows)
    out = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
    for q0 in range(0, queries.shape[0], rows):
        q = queries[q0 : q0 + rows]
        best = torch.full((q.shape[0],), -math.inf, dtype=q.dtype, device=q.device)
        for m0 in range(0, bank.shape[0], cols):
            best = torch.maximum(best, (q @ bank[m0 : m0 + cols].T).amax(dim=1))
        out[q0 : q0 + rows] = 1 - best
    return out


class MemoryBank:
    """Per-level normalised token features of reference normal images."""

    def __init__(
        self,
        levels: Sequence[torch.Tensor],
        dtype: torch.dtype | None = None,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        """``levels``: per level (N, T, C) tokens of N images (CLS included) or (M, C); held
        in ``dtype`` (default: the tokens' own, at least float32)."""
        if not levels or any(x.ndim not in (2, 3) or x.numel() == 0 for x in levels):
            shapes = [tuple(x.shape) for x in levels]
            raise ValueError(f"memory bank: expected non-empty (N, T, C) per level, got {shapes}")
        dtype = dtype or torch.promote_types(levels[0].dtype, torch.float32)
        self.features = [normalise(x.detach().reshape(-1, x.shape[-1]).to(dtype)) for x in levels]
        self.dtype = dtype
        self.chunk_elements = chunk_elements

    @classmethod
    def from_batches(cls, batches: Iterable[Sequence[torch.Tensor]], **kwargs) -> MemoryBank:
        """A bank from per-batch lists of per-level (b, T, C) tokens (concatenated)."""
        per_level = list(zip(*batches, strict=True))
        return cls([torch.cat(list(level)) for level in per_level], **kwargs)

    @classmethod
    def of_features(cls, features: Sequence[torch.Tensor]) -> MemoryBank:
        """A bank of already normalised per-level (M, C) features (`features` of another
        bank, e.g. stored in an export): kept as they are, not normalised again."""
        bank = cls.__new__(cls)
        bank.features = list(features)
        bank.dtype = features[0].dtype
        bank.chunk_elements = CHUNK_ELEMENTS
        return bank

    @property
    def num_levels(self) -> int:
        return len(self.features)

    def sizes(self) -> list[int]:
        """Tokens stored per level."""
        return [f.shape[0] for f in self.features]

    def to(self, device: torch.device | str) -> MemoryBank:
        """Move the bank (in place) to ``device``; returns self."""
        self.features = [f.to(device) for f in self.features]
        return self

    def distances(
        self, level_tokens: Sequence[torch.Tensor], drop_cls: bool = True
    ) -> list[torch.Tensor]:
        """Per level (B, L): each token's min cosine distance to that level's bank.

        ``level_tokens``: per level (B, N, C); ``drop_cls`` drops token 0 (L = N - 1).
        """
        if len(level_tokens) != self.num_levels:
            raise ValueError(
                f"memory bank has {self.num_levels} levels, got tokens for {len(level_tokens)}"
            )
        out = []
        for tokens, bank in zip(level_tokens, self.features, strict=True):
            if tokens.ndim != 3 or tokens.shape[-1] != bank.shape[-1]:
                raise ValueError(
                    f"memory bank: expected (B, N, {bank.shape[-1]}) tokens, "
                    f"got {tuple(tokens.shape)}"
                )
            x = tokens[:, 1:] if drop_cls else tokens
            b, n, c = x.shape
            q = normalise(x.detach().reshape(b * n, c).to(bank.device, self.dtype))
            out.append(nearest_distance(q, bank, self.chunk_elements).reshape(b, n))
        return out

    def distance_grids(
        self, level_tokens: Sequence[torch.Tensor], drop_cls: bool = True
    ) -> list[torch.Tensor]:
        """Per level (B, g, g): :meth:`distances` on the square token grid."""
        grids = []
        for d in self.distances(level_tokens, drop_cls):
            g = math.isqrt(d.shape[1])
            if g * g != d.shape[1]:
                raise ValueError(f"memory bank: {d.shape[1]} tokens are not a square grid")
            grids.append(d.reshape(d.shape[0], g, g))
        return grids

    def anomaly_map(
        self, level_tokens: Sequence[torch.Tensor], size: int, drop_cls: bool = True
    ) -> torch.Tensor:
        """(B, size, size): sum over levels of the distance grids upsampled to ``size``."""
        grids = self.distance_grids(level_tokens, drop_cls)
        return sum(upsample(g.unsqueeze(1), size)[:, 0] for g in grids)  # type: ignore[return-value]


def memory_score(memory_map: torch.Tensor) -> torch.Tensor:
    """(B,) mean over pixels of a memory map (B, S, S): MVFA's classification-only score."""
    return memory_map.flatten(1).mean(dim=1)


def few_shot_scores(
    text: torch.Tensor, memory_map: torch.Tensor, has_masks: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """MVFA's few-shot maps (N, S, S) and image scores (N,) over a whole test set.

    ``has_masks`` (segmentation sets): ``text`` is sum_l A_l (N, S, S); map = 0.5
    minmax(text) + 0.5 minmax(memory_map), score = max of the map. Otherwise ``text`` is
    sum_l s_l (N,); score = 0.5 minmax(text) + 0.5 minmax(memory_score(memory_map)), map =
    minmax(memory_map) (no pixel metrics on these sets).
    """
    if has_masks:
        maps = 0.5 * minmax(text) + 0.5 * minmax(memory_map)
        return maps, maps.flatten(1).amax(dim=1)
    scores = 0.5 * minmax(text) + 0.5 * minmax(memory_score(memory_map))
    return minmax(memory_map), scores
