"""aaclip.memory against slow, direct references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aaclip.memory import MemoryBank, few_shot_scores, memory_score, nearest_distance

G = 3  # token grid: 9 patch tokens + CLS
C = 8


def tokens(n: int, seed: int, width: int = C) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, G * G + 1, width, generator=g)


def slow_distances(query: torch.Tensor, bank: torch.Tensor) -> np.ndarray:
    """For each query token but CLS: min over every bank token (CLS too) of 1 - cos, float64."""
    q = query.double().numpy()
    m = bank.double().reshape(-1, bank.shape[-1]).numpy()
    out = np.zeros((q.shape[0], q.shape[1] - 1))
    for b in range(q.shape[0]):
        for t in range(1, q.shape[1]):
            best = math.inf
            for row in m:
                na = max(np.sqrt((q[b, t] ** 2).sum()), 1e-8)
                nb = max(np.sqrt((row**2).sum()), 1e-8)
                best = min(best, 1 - float((q[b, t] * row).sum()) / (na * nb))
            out[b, t - 1] = best
    return out


def slow_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, align_corners=True: output pixel i samples grid coordinate i (g-1)/(size-1)."""
    g = grid.shape[0]
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            y, x = i * (g - 1) / (size - 1), j * (g - 1) / (size - 1)
            y0, x0 = min(int(y), g - 2), min(int(x), g - 2)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                grid[y0, x0] * (1 - dy) * (1 - dx)
                + grid[y0, x0 + 1] * (1 - dy) * dx
                + grid[y0 + 1, x0] * dy * (1 - dx)
                + grid[y0 + 1, x0 + 1] * dy * dx
            )
    return out


@pytest.fixture(scope="module")
def case() -> tuple[MemoryBank, list[torch.Tensor], list[torch.Tensor]]:
    bank_tokens = [tokens(4, 0), tokens(4, 1) * 3]  # two levels, 4 reference images
    queries = [tokens(3, 2), tokens(3, 3)]
    return MemoryBank(bank_tokens), bank_tokens, queries


def test_distances_match_the_direct_reference(case) -> None:
    bank, bank_tokens, queries = case
    assert bank.num_levels == 2 and bank.sizes() == [40, 40]  # CLS included: 4 x 10
    for d, q, m in zip(bank.distances(queries), queries, bank_tokens, strict=True):
        assert d.shape == (3, G * G)
        np.testing.assert_allclose(d.numpy(), slow_distances(q, m), atol=1e-6)


def test_chunking_does_not_change_the_result(case) -> None:
    bank, bank_tokens, queries = case
    tiny = MemoryBank(bank_tokens, chunk_elements=7)
    for a, b in zip(bank.distances(queries), tiny.distances(queries), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # BLAS blocking may round apart
    q = F.normalize(torch.randn(50, C), dim=-1)
    m = F.normalize(torch.randn(33, C), dim=-1)
    torch.testing.assert_close(nearest_distance(q, m, 1), nearest_distance(q, m), atol=1e-6, rtol=0)


def test_bank_keeps_cls_queries_drop_it(case) -> None:
    _, bank_tokens, queries = case
    bank = MemoryBank(bank_tokens)
    probe = [q.clone() for q in queries]
    probe[0][1, 4] = 2.5 * bank_tokens[0][2, 0]  # a query patch token = a bank CLS token
    probe[0][1, 0] = 0.0  # query CLS is ignored: a zero CLS changes nothing
    d = bank.distances(probe)[0]
    assert d[1, 3].abs() < 1e-6
    assert torch.equal(d[0], bank.distances(queries)[0][0])
    full = bank.distances(probe, drop_cls=False)[0]
    assert full.shape == (3, G * G + 1) and torch.equal(full[:, 1:], d)
    assert full[1, 0] == pytest.approx(1.0)  # zero vector: cos 0 (norm clamped, no NaN)


def test_grids_map_and_scores(case) -> None:
    bank, _, queries = case
    grids = bank.distance_grids(queries)
    flat = bank.distances(queries)
    assert all(torch.equal(g.reshape(3, -1), d) for g, d in zip(grids, flat, strict=True))
    size = 7
    memory_map = bank.anomaly_map(queries, size)
    assert memory_map.shape == (3, size, size)
    expected = sum(slow_upsample(g[1].double().numpy(), size) for g in grids)
    np.testing.assert_allclose(memory_map[1].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(memory_score(memory_map)[1].item(), expected.mean(), atol=1e-5)


def test_few_shot_score_rules() -> None:
    g = torch.Generator().manual_seed(5)
    text_maps, memory_map = torch.rand(4, 6, 6, generator=g), torch.rand(4, 6, 6, generator=g) * 3
    maps, scores = few_shot_scores(text_maps, memory_map, has_masks=True)
    t, m = text_maps.numpy(), memory_map.numpy()
    ref = 0.5 * (t - t.min()) / (t.max() - t.min()) + 0.5 * (m - m.min()) / (m.max() - m.min())
    np.testing.assert_allclose(maps.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(scores.numpy(), ref.reshape(4, -1).max(axis=1), atol=1e-6)
    det = torch.tensor([0.2, 0.9, 0.4, 0.1])
    _, scores = few_shot_scores(det, memory_map, has_masks=False)
    mean = m.reshape(4, -1).mean(axis=1)
    d = det.numpy()
    ref = 0.5 * (d - d.min()) / (d.max() - d.min()) + 0.5 * (mean - mean.min()) / np.ptp(mean)
    np.testing.assert_allclose(scores.numpy(), ref, atol=1e-6)


def test_from_batches_and_bad_input(case) -> None:
    bank, bank_tokens, queries = case
    batched = MemoryBank.from_batches([[x[:1] for x in bank_tokens], [x[1:] for x in bank_tokens]])
    assert all(torch.equal(a, b) for a, b in zip(batched.features, bank.features, strict=True))
    with pytest.raises(ValueError, match="has 2 levels, got tokens for 1"):
        bank.distances(queries[:1])
    with pytest.raises(ValueError, match=r"expected \(B, N, 8\) tokens"):
        bank.distances([queries[0], tokens(1, 0, width=4)])
    with pytest.raises(ValueError, match="not a square grid"):
        bank.distance_grids([q[:, :-1] for q in queries])
    with pytest.raises(ValueError, match="non-empty"):
        MemoryBank([torch.zeros(0, 8)])
