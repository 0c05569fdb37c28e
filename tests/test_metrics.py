"""Tests of aaclip.metrics against slow, obviously-correct reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip import metrics as M

# --------------------------------------------------------------------------- references


def ref_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Loop over every distinct threshold; predict positive when score >= t."""
    s = np.asarray(scores).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if y.all() or not y.any():
        return math.nan
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = int(np.sum(pred & y))
        fp = int(np.sum(pred & ~y))
        fn = int(np.sum(~pred & y))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn)
        f = 2 * p * r / (p + r) if p + r else 0.0
        best = max(best, f)
    return best


def ref_regions(mask: np.ndarray, connectivity: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components of one 2-D mask by explicit flood fill."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    if connectivity == 8:
        steps = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
    else:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    regions = []
    for i, j in zip(*np.nonzero(mask), strict=True):
        if seen[i, j]:
            continue
        seen[i, j] = True
        stack, rows, cols = [(i, j)], [], []
        while stack:
            a, b = stack.pop()
            rows.append(a)
            cols.append(b)
            for da, db in steps:
                c, d = a + da, b + db
                if 0 <= c < h and 0 <= d < w and mask[c, d] and not seen[c, d]:
                    seen[c, d] = True
                    stack.append((c, d))
        regions.append((np.array(rows), np.array(cols)))
    return regions


def ref_aupro(
    maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, connectivity: int = 8
) -> float:
    """Per-threshold loop: FPR over normal pixels, PRO = mean of per-region overlaps."""
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    regions = [
        (n, rows, cols)
        for n in range(len(masks))
        for rows, cols in ref_regions(masks[n], connectivity)
    ]
    normal = ~masks
    n_normal = int(normal.sum())
    if not regions or n_normal == 0:
        return math.nan
    fprs, pros = [0.0], [0.0]
    for t in sorted(np.unique(maps), reverse=True):
        pred = maps >= t
        fprs.append(np.sum(pred & normal) / n_normal)
        pros.append(np.mean([pred[n, rows, cols].mean() for n, rows, cols in regions]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        if x0 < fpr_limit:
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
        break
    return area / fpr_limit


# --------------------------------------------------------------------------- data


def make_case(
    seed: int,
    n: int = 8,
    size: int = 16,
    levels: int | None = None,
    p_anomalous: float = 0.5,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Random blob masks on some images, maps correlated with the masks plus noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if rng.random() < p_anomalous:
            field = ndimage.gaussian_filter(rng.random((size, size)), rng.uniform(0.7, 2.0))
            masks[i] = field > np.quantile(field, rng.uniform(0.75, 0.97))
    maps = 0.6 * masks + rng.normal(0.0, 0.4, masks.shape)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype), masks


CASES = {
    "random": dict(seed=0),
    "random_float64": dict(seed=1, dtype=np.float64),
    "heavy_ties": dict(seed=2, levels=3),
    "two_levels": dict(seed=3, levels=1),
    "mostly_normal_images": dict(seed=4, n=12, p_anomalous=0.2),
    "all_anomalous_images": dict(seed=5, p_anomalous=1.0),
    "single_image": dict(seed=6, n=1, size=24, p_anomalous=1.0),
    "rect_32": dict(seed=7, n=5, size=32, levels=20),
}


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# --------------------------------------------------------------------------- binary metrics


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 2, 5])
def test_binary_metrics_match_sklearn_and_reference(seed: int, levels: int | None) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    scores = rng.normal(size=n)
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    if levels is not None:
        scores = np.round(scores * levels) / levels
    for s in (scores, scores.astype(np.float32)):
        assert M.auroc(s, labels) == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
        ap = average_precision_score(labels, s)
        assert M.average_precision(s, labels) == pytest.approx(ap, abs=1e-12)
        assert M.f1_max(s, labels) == pytest.approx(ref_f1_max(s, labels), abs=1e-12)


def test_image_metrics_keys_and_values() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.2])
    labels = np.array([0, 0, 1, 1, 0, 1])
    out = M.image_metrics(scores, labels)
    assert set(out) == {"image_auroc", "image_ap", "image_f1_max"}
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert out["image_f1_max"] == pytest.approx(ref_f1_max(scores, labels))
    assert all(0.0 <= v <= 1.0 for v in out.values())


def test_binary_hand_values() -> None:
    # Perfect separation, inverse separation, constant scores.
    y = np.array([0, 0, 1, 1])
    assert M.auroc([0.1, 0.2, 0.3, 0.4], y) == 1.0
    assert M.auroc([0.4, 0.3, 0.2, 0.1], y) == 0.0
    assert M.auroc([0.5] * 4, y) == 0.5
    assert M.average_precision([0.5] * 4, y) == 0.5
    assert M.f1_max([0.5] * 4, y) == pytest.approx(2 / 3)
    assert M.f1_max([0.1, 0.2, 0.3, 0.4], y) == 1.0


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0], []])
def test_one_class_is_nan(labels: list[int]) -> None:
    scores = np.linspace(0, 1, len(labels))
    for fn in (M.auroc, M.average_precision, M.f1_max):
        assert math.isnan(fn(scores, np.array(labels, dtype=int)))
    assert all(math.isnan(v) for v in M.image_metrics(scores, np.array(labels)).values())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_scores_raise(bad: float) -> None:
    scores = np.array([0.1, bad, 0.3, bad, 0.5])
    with pytest.raises(ValueError, match="2 non-finite") as info:
        M.auroc(scores, [0, 1, 0, 1, 1], name="bottle/image")
    assert str(info.value).startswith("bottle/image: ")
    assert "\n" not in str(info.value)


def test_binary_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        M.auroc(np.zeros(4), np.zeros(3))


def test_label_encodings() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(50)
    y = rng.random(50) < 0.3
    ref = M.image_metrics(scores, y)
    for enc in (y.astype(np.uint8) * 255, y.astype(int), y.astype(np.float32)):
        assert M.image_metrics(scores, enc) == ref
    assert M.image_metrics(list(scores), list(y)) == ref
    assert M.auroc(np.round(scores * 10).astype(int), y) == pytest.approx(
        roc_auc_score(y, np.round(scores * 10))
    )
    with pytest.raises(ValueError, match="0/1"):
        M.auroc(scores, y * 0.5)


def test_binary_curve_stats_counts() -> None:
    scores = np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1], dtype=np.float32)
    labels = np.array([1, 0, 1, 1, 0, 0])
    st = M.binary_curve_stats(scores, labels)
    np.testing.assert_array_equal(st.thresholds, np.array([0.9, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(st.tps, [1, 3])
    np.testing.assert_array_equal(st.fps, [1, 2])
    np.testing.assert_array_equal(st.fps_strict, [0, 1])
    assert (st.n_pos, st.n_neg) == (3, 3)


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("case", sorted(CASES))
def test_aupro_and_pixel_metrics_match_reference(case: str) -> None:
    maps, masks = make_case(**CASES[case])
    expected = ref_aupro(maps, masks)
    assert not math.isnan(expected)
    assert M.aupro(maps, masks) == pytest.approx(expected, abs=1e-9)  # truncated sort
    out = M.pixel_metrics(maps, masks)  # full sort
    assert out["pixel_aupro"] == pytest.approx(expected, abs=1e-9)
    s, y = maps.ravel(), masks.ravel()
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert out["pixel_f1_max"] == pytest.approx(ref_f1_max(s, y), abs=1e-9)


@pytest.mark.parametrize("fpr_limit", [0.01, 0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("levels", [None, 4])
def test_aupro_fpr_limits(fpr_limit: float, levels: int | None) -> None:
    maps, masks = make_case(seed=11, levels=levels)
    expected = ref_aupro(maps, masks, fpr_limit)
    assert M.aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-9)
    got = M.pixel_metrics(maps, masks, fpr_limit=fpr_limit)["pixel_aupro"]
    assert got == pytest.approx(expected, abs=1e-9)


def test_aupro_hand_computed() -> None:
    # One single-pixel region scoring 0.5; normal pixels: one at 0.9, seven at 0.1.
    # Curve: (0,0) -> (1/8, 0) -> (1/8, 1) -> (1, 1); area to 0.3 = 0.3 - 1/8.
    maps = np.full((1, 3, 3), 0.1, dtype=np.float32)
    maps[0, 1, 1], maps[0, 0, 0] = 0.5, 0.9
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 1, 1] = True
    assert M.aupro(maps, masks) == pytest.approx((0.3 - 0.125) / 0.3, abs=1e-12)
    assert ref_aupro(maps, masks) == pytest.approx((0.3 - 0.125) / 0.3, abs=1e-12)


def test_aupro_not_normalised_by_last_fpr() -> None:
    # All normal pixels tie at 0: FPR jumps 0 -> 1. PRO is 1 on (0, 1], area to 0.3 is 0.3
    # (normalising by the last FPR < 0.3 reached, i.e. 0, would be undefined/wrong).
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    maps[masks] = 1.0
    assert M.aupro(maps, masks) == pytest.approx(1.0)
    maps[masks] = -1.0  # anomalies below every normal pixel: PRO = 0 until FPR = 1
    assert M.aupro(maps, masks) == pytest.approx(0.0)
    assert ref_aupro(maps, masks) == pytest.approx(0.0)


def test_constant_maps() -> None:
    maps, masks = make_case(seed=12)
    maps[:] = 0.25
    # Curve (0,0) -> (1,1): the normalised area to 0.3 is 0.15.
    assert M.aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    assert ref_aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    out = M.pixel_metrics(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(0.5)
    assert out["pixel_ap"] == pytest.approx(masks.mean())


def test_many_single_pixel_regions() -> None:
    rng = np.random.default_rng(13)
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[:, ::3, ::3] = rng.random((6, 6, 6)) < 0.5  # isolated pixels (gap of 2)
    maps = (0.5 * masks + rng.normal(0, 0.5, masks.shape)).astype(np.float32)
    rid, sizes = M.label_regions(masks)
    assert sizes.size == masks.sum() and (sizes == 1).all()
    assert M.aupro(maps, masks) == pytest.approx(ref_aupro(maps, masks), abs=1e-9)


def test_one_region() -> None:
    rng = np.random.default_rng(14)
    masks = np.zeros((4, 20, 20), dtype=bool)
    masks[2, 5:12, 3:9] = True
    maps = (0.3 * masks + rng.normal(0, 0.3, masks.shape)).astype(np.float32)
    assert M.aupro(maps, masks) == pytest.approx(ref_aupro(maps, masks), abs=1e-9)


def test_diagonal_regions_merge() -> None:
    # A (0,0)-(0,1) pair and a pixel at (1,2) touching it only diagonally: one region.
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = True
    rid, sizes = M.label_regions(masks)
    assert sizes.tolist() == [3] and rid.tolist() == [0, 0, 0]
    assert len(ref_regions(masks[0], 8)) == 1 and len(ref_regions(masks[0], 4)) == 2
    maps = np.linspace(0.0, 0.8, 25, dtype=np.float32).reshape(1, 5, 5)
    maps[0, 0, 0] = 1.0  # only the first pixel is found before any false positive
    got = M.aupro(maps, masks)
    assert got == pytest.approx(ref_aupro(maps, masks, connectivity=8), abs=1e-12)
    assert abs(got - ref_aupro(maps, masks, connectivity=4)) > 1e-3
    # A diagonal chain across the image is also a single region.
    chain = np.eye(6, dtype=bool)[None]
    assert M.label_regions(chain)[1].tolist() == [6]


def test_regions_are_per_image() -> None:
    # Identical masks on two images: two regions, even though they overlap in (H, W).
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[:, 1:3, 1:3] = True
    rid, sizes = M.label_regions(masks)
    assert sizes.tolist() == [4, 4] and rid.tolist() == [0] * 4 + [1] * 4


def test_negative_scores_and_signed_zero() -> None:
    maps, masks = make_case(seed=15, levels=2)
    maps = maps - 0.5
    maps[maps == 0] = np.float32(-0.0)
    maps[0, 0, :4] = [0.0, -0.0, 0.0, -0.0]
    assert (np.signbit(maps) & (maps == 0)).any()
    expected = ref_aupro(maps, masks)
    assert M.aupro(maps, masks) == pytest.approx(expected, abs=1e-9)
    assert M.pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(expected, abs=1e-9)


def test_truncated_equals_full_sort() -> None:
    for seed in range(3):
        maps, masks = make_case(seed=20 + seed, n=10, size=48)
        full = M.pixel_metrics(maps, masks)["pixel_aupro"]
        assert M.aupro(maps, masks) == pytest.approx(full, abs=1e-12)
    rid, sizes = M.label_regions(masks)
    ops = M._NumpyOps()
    stats = M._curve_stats(ops, maps.ravel(), masks.ravel(), rid, sizes, fpr_limit=0.3)
    assert stats.truncated and stats.neg_covered < stats.n_neg
    assert stats.aupro(0.3) == pytest.approx(full, abs=1e-12)
    with pytest.raises(ValueError, match="truncated"):
        stats.auroc()


def test_aupro_undefined_is_nan() -> None:
    maps, masks = make_case(seed=16)
    empty = np.zeros_like(masks)
    assert math.isnan(M.aupro(maps, empty))
    out = M.pixel_metrics(maps, empty)
    assert all(math.isnan(v) for v in out.values())
    full = np.ones_like(masks)
    assert math.isnan(M.aupro(maps, full))
    assert math.isnan(ref_aupro(maps, full)) and math.isnan(ref_aupro(maps, empty))


def test_aupro_bad_inputs() -> None:
    maps, masks = make_case(seed=17)
    with pytest.raises(ValueError, match=r"masks shape \(8, 16, 15\).*maps shape \(8, 16, 16\)"):
        M.aupro(maps, masks[:, :, :15])
    with pytest.raises(ValueError, match="masks shape"):
        M.pixel_metrics(maps, masks[None])
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        M.aupro(bad, masks)
    with pytest.raises(ValueError, match="^carpet: maps contain 1 non-finite"):
        M.pixel_metrics(bad, masks, name="carpet")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.aupro(maps[0], masks[0])
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="backend"):
        M.aupro(maps, masks, backend="jax")


def test_pixel_metrics_without_aupro_and_input_types() -> None:
    maps, masks = make_case(seed=18)
    full = M.pixel_metrics(maps, masks)
    short = M.pixel_metrics(maps, masks, aupro=False)
    assert set(short) == {"pixel_auroc", "pixel_ap", "pixel_f1_max"}
    assert all(short[k] == full[k] for k in short)
    assert M.pixel_metrics(maps, masks.astype(np.uint8) * 255) == full
    assert M.pixel_metrics(maps.astype(np.float16), masks)["pixel_aupro"] == pytest.approx(
        ref_aupro(maps.astype(np.float16), masks), abs=1e-9
    )
    assert M.auroc(maps, masks) == full["pixel_auroc"]


def test_packed_sort_matches_argsort() -> None:
    rng = np.random.default_rng(19)
    x = np.round(rng.normal(size=3000), 1).astype(np.float32)
    x[:10] = [0.0, -0.0, 1e-38, -1e-38, 3e38, -3e38, 1e-45, -1e-45, 0.0, -0.0]
    rid = rng.integers(0, 40, x.size)
    region_w = rng.random(40)
    ops = M._NumpyOps()
    vals, w = ops.sort_desc_weighted(x.copy(), rid, region_w)
    assert (np.diff(vals) <= 0).all()
    np.testing.assert_array_equal(np.sort(vals), np.sort(x))
    # Per distinct value the weights are a permutation of the original ones.
    for v in np.unique(x):
        np.testing.assert_allclose(np.sort(w[vals == v]), np.sort(region_w[rid[x == v]]))
    vals64, _ = ops.sort_desc_weighted(x.astype(np.float64), rid, region_w)  # argsort path
    np.testing.assert_array_equal(vals64, vals.astype(np.float64))


def test_top_k_with_ties() -> None:
    rng = np.random.default_rng(22)
    x = np.round(rng.random(1000) * 7).astype(np.float32)
    for k in (1, 7, 300, 301, 999, 1000):
        top, cut = M._NumpyOps().top_k_with_ties(x.copy(), k)
        assert cut == np.sort(x)[::-1][k - 1]
        np.testing.assert_array_equal(np.sort(top), np.sort(x[x >= cut]))
        top_t, cut_t = M._TorchOps("cpu").top_k_with_ties(torch.from_numpy(x), k)
        assert float(cut_t) == cut
        np.testing.assert_array_equal(np.sort(top_t.numpy()), np.sort(top))


# --------------------------------------------------------------------------- torch backend


@pytest.mark.parametrize("case", ["random", "heavy_ties", "single_image", "random_float64"])
def test_torch_backend_matches_numpy(case: str) -> None:
    maps, masks = make_case(**CASES[case])
    ref = M.pixel_metrics(maps, masks)
    t_maps, t_masks = torch.from_numpy(maps), torch.from_numpy(masks)
    got = M.pixel_metrics(t_maps, t_masks, backend="torch")
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert M.aupro(t_maps, t_masks, backend="torch") == pytest.approx(ref["pixel_aupro"], 1e-12)
    # CPU tensors with the default backend go through numpy and give the same numbers.
    assert M.pixel_metrics(t_maps, t_masks) == ref
    img = M.image_metrics(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)))
    img_t = M.image_metrics(t_maps.amax(dim=(1, 2)), t_masks.any(dim=2).any(dim=1), backend="torch")
    assert all(_close(img[k], img_t[k], 1e-12) for k in img)


def test_torch_backend_errors_and_nan() -> None:
    maps, masks = make_case(seed=21)
    t_maps = torch.from_numpy(maps).clone()
    t_maps[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        M.aupro(t_maps, torch.from_numpy(masks), backend="torch")
    assert math.isnan(M.aupro(torch.from_numpy(maps), torch.zeros(masks.shape), backend="torch"))
    assert math.isnan(M.auroc(torch.ones(4), torch.ones(4), backend="torch"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_numpy() -> None:
    maps, masks = make_case(**CASES["random"])
    ref = M.pixel_metrics(maps, masks)
    got = M.pixel_metrics(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda())
    assert all(got[k] == pytest.approx(ref[k], abs=1e-9) for k in ref)
    assert M.aupro(maps, masks, device="cuda") == pytest.approx(ref["pixel_aupro"], abs=1e-9)
