"""Calibration from normal images: thresholds at a target FPR, threshold -> 0.5, per image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aaclip.calibration import (
    Calibration,
    calibrate,
    calibrations_from_dict,
    calibrations_to_dict,
    normalise,
    threshold_at_fpr,
)


def known_sample(n=200, seed=0):
    """Normal scores 0..n-1 in random order, and 4x4 maps holding 0..16n-1."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(n).astype(np.float64)
    maps = rng.permutation(16 * n).astype(np.float32).reshape(n, 4, 4)
    return scores, maps


@pytest.mark.parametrize(("fpr", "threshold"), [(0.01, 197.0), (0.05, 189.0), (0.1, 179.0)])
def test_image_threshold_at_the_requested_fpr_exactly(fpr, threshold):
    scores, maps = known_sample()
    cal = calibrate(scores, maps, fpr=fpr)
    assert cal.image_threshold == threshold
    assert np.count_nonzero(scores > cal.image_threshold) == round(fpr * 200)
    assert cal.image_fpr == fpr
    assert cal.n_normal_images == 200 and cal.n_normal_pixels == 3200


def test_pixel_threshold_at_the_same_fpr_on_normal_pixels():
    scores, maps = known_sample()
    cal = calibrate(scores, maps, fpr=0.01)
    assert cal.pixel_threshold == 3200 - 32 - 1  # 32 of 3200 pixels above
    assert cal.pixel_fpr == 0.01
    assert cal.mask(maps).sum() == 32


def test_ties_and_small_samples_never_exceed_the_fpr():
    tied = np.array([0.0] * 90 + [1.0] * 10)
    t, achieved = threshold_at_fpr(tied, 0.05)
    assert t == 1.0 and achieved == 0.0  # 10 tied at the top: none can be let through
    t, achieved = threshold_at_fpr(np.arange(50.0), 0.01)  # 0.5 of an image allowed: none
    assert t == 49.0 and achieved == 0.0
    t, achieved = threshold_at_fpr(np.arange(100.0), 0.07)  # 0.07 * 100 = 7.000000000000001
    assert t == 92.0 and achieved == 0.07


def test_normalise_maps_the_threshold_to_one_half_and_is_monotone():
    assert normalise(3.7, 3.7, 0.2) == 0.5
    raw = np.linspace(-10, 10, 2001)
    out = normalise(raw, 1.0, 4.0)
    assert np.all(np.diff(out) > 0)  # strictly increasing: never saturated, never clipped
    assert 0.0 < out.min() < 0.25 and 0.75 < out.max() < 1.0
    assert np.all((out > 0.5) == (raw > 1.0))
    assert normalise([-3.0, 5.0, 13.0, 37.0], 1.0, 4.0).tolist() == [0.25, 0.75, 0.875, 0.95]
    with pytest.raises(ValueError, match="scale"):
        normalise(1.0, 0.0, 0.0)


def test_calibrated_scores_put_the_median_normal_at_a_quarter_and_the_threshold_at_one_half():
    scores, maps = known_sample()
    cal = calibrate(scores, maps, fpr=0.01)
    assert cal.normalise_score(cal.image_threshold) == 0.5
    assert cal.normalise_score(np.median(scores)) == pytest.approx(0.25)
    spread = cal.image_threshold - np.median(scores)
    assert cal.normalise_score(cal.image_threshold + spread) == pytest.approx(0.75)
    assert cal.normalise_map(np.float32(cal.pixel_threshold)) == 0.5
    norm = cal.normalise_score(scores)
    assert np.all((norm > 0.5) == cal.label(scores)) and cal.label(scores).sum() == 2
    assert not cal.label(cal.image_threshold) and cal.label(cal.image_threshold + 1e-9)


def test_one_images_score_does_not_depend_on_the_other_images():
    scores, maps = known_sample()
    cal = calibrate(scores, maps)
    batch = np.array([150.0, 3.0, 199.5, 1e6])
    together = cal.normalise_score(batch)
    alone = [cal.normalise_score(x) for x in batch]
    assert together.tolist() == alone
    assert cal.normalise_score(batch[:1])[0] == cal.normalise_score(np.append(batch, -5.0))[0]
    m = maps[7]
    assert np.array_equal(cal.normalise_map(m), cal.normalise_map(maps)[7])


def test_anomalies_add_the_achieved_tpr():
    scores, maps = known_sample()
    anomalous = np.array([10.0, 196.0, 197.0, 198.0, 500.0])
    amaps = np.zeros((2, 4, 4), np.float32)
    amaps[0, :2] = 5000.0  # 8 pixels far above the pixel threshold
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 0, :2] = True  # 2 defect pixels the map misses
    cal = calibrate(
        scores, maps, anomalous_scores=anomalous, anomalous_maps=amaps, anomalous_masks=masks
    )
    assert cal.image_tpr == 2 / 5 and cal.n_anomalous_images == 5
    assert cal.pixel_tpr == 8 / 10
    no_anomalies = calibrate(scores, maps)
    assert no_anomalies.image_tpr is None and no_anomalies.pixel_tpr is None
    # anomalies never move the thresholds or the normalisation
    assert (cal.image_threshold, cal.image_scale) == (
        no_anomalies.image_threshold,
        no_anomalies.image_scale,
    )


def test_json_roundtrip():
    scores, maps = known_sample()
    cal = calibrate(scores, maps, class_name="bottle", extra={"checkpoint_sha256": "ab"})
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    many = calibrations_from_dict(json.loads(json.dumps(calibrations_to_dict({"bottle": cal}))))
    assert many == {"bottle": cal}
    with pytest.raises(ValueError, match="version"):
        Calibration.from_dict({**cal.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="version 1 holds thresholds of the earlier"):
        Calibration.from_dict({**cal.to_dict(), "version": 1})
    d = cal.to_dict()
    del d["image_threshold"]
    with pytest.raises(ValueError, match="image_threshold"):
        Calibration.from_dict(d)


def test_maps_of_different_sizes_and_degenerate_normals():
    maps = [np.zeros((3, 5), np.float32), np.ones((4, 4), np.float32)]
    cal = calibrate([0.2, 0.2], maps, fpr=0.25)
    assert cal.n_normal_pixels == 31 and cal.image_scale > 0  # constant scores: a step
    assert cal.normalise_score(0.2) == 0.5 and 0.9999 < cal.normalise_score(0.3) < 1.0


def test_normalised_scores_spread_instead_of_piling_up_at_0_and_1():
    """12 normals, as in the issue: ordinary normal and anomalous images keep distinct
    normalised scores strictly inside (0, 1), ordered as their raw scores."""
    rng = np.random.default_rng(0)
    normals = 0.5 + 0.01 * rng.standard_normal(12)
    cal = calibrate(normals, rng.random((12, 4, 4)).astype(np.float32), fpr=0.01)
    images = np.concatenate([0.5 + 0.01 * rng.standard_normal(5), 0.55 + 0.02 * rng.random(5)])
    norm = cal.normalise_score(images)
    assert np.all((norm > 0.0) & (norm < 1.0))
    assert np.all((norm > 0.02) & (norm < 0.98))  # none saturated at 4 decimals
    assert len(np.unique(np.round(norm, 4))) == len(images)
    assert np.array_equal(np.argsort(norm), np.argsort(images))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fpr": 0.0}, "fpr"),
        ({"fpr": 1.0}, "fpr"),
        ({"normal_scores": []}, "no values"),
        ({"normal_scores": [np.nan, 1.0]}, "NaN"),
        ({"normal_scores": [1.0, 2.0, 3.0]}, "3 normal image scores but 2 maps"),
    ],
)
def test_bad_inputs_are_one_line(kwargs, match):
    args = {"normal_scores": [1.0, 2.0], "normal_maps": np.zeros((2, 2, 2)), **kwargs}
    with pytest.raises(ValueError, match=match):
        calibrate(**args)


# --------------------------------------------------------------------------- storage


def test_stored_beside_the_checkpoint_and_read_back(tmp_path):
    from aaclip import __version__
    from aaclip.calibration import calibration_path, load_calibration, save_calibration
    from aaclip.digests import file_sha256

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights v1")
    assert load_calibration(checkpoint) is None  # none yet: raw scores only
    scores, maps = known_sample()
    cals = {"bottle": calibrate(scores, maps, class_name="bottle", extra={"domain": "industrial"})}
    path = save_calibration(checkpoint, cals, 0.01)
    assert path == calibration_path(checkpoint) == tmp_path / "model.safetensors.calibration.json"
    doc = json.loads(path.read_text())
    assert doc["checkpoint_sha256"] == file_sha256(checkpoint)
    assert doc["fpr"] == 0.01 and doc["aaclip_version"] == __version__
    assert doc["created"].endswith("+00:00") and doc["checkpoint"] == "model.safetensors"
    assert load_calibration(checkpoint) == cals
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_a_calibration_of_another_checkpoint_is_refused_in_one_line(tmp_path):
    from aaclip.calibration import (
        CalibrationMismatchError,
        calibration_path,
        load_calibration,
        save_calibration,
    )

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights v1")
    scores, maps = known_sample()
    save_calibration(checkpoint, {"bottle": calibrate(scores, maps)}, 0.01)
    checkpoint.write_bytes(b"weights v2, retrained")  # same name, other content
    with pytest.raises(CalibrationMismatchError, match="calibrated for another checkpoint") as e:
        load_calibration(checkpoint)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    calibration_path(checkpoint).write_text("{not json")
    with pytest.raises(CalibrationMismatchError, match="not a readable calibration"):
        load_calibration(checkpoint)
