"""The RSNA reporting category (ctscreen.imaging.screening) on synthetic chests of exact geometry.

Two ellipsoid lungs in a soft-tissue chest; lesions, fluid and gas placed where each
rule looks. Research use only - not for diagnosis.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctscreen import RESEARCH_NOTICE
from ctscreen.imaging import screening as S
from ctscreen.imaging.measurements import measure

SPACING = (2.5, 1.5, 1.5)  # z, y, x mm
SHAPE = (60, 128, 176)
VOXEL_ML = float(np.prod(SPACING)) / 1000.0
#: Lung centres (z, y, x voxels) and semi-axes (voxels): patient's right lung on the screen's left.
CENTRES = {1: (30.0, 62.0, 50.0), 2: (30.0, 62.0, 126.0)}
AXES = (26.0, 42.0, 30.0)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")


Z, Y, X = _grid()


def _radius(lab: int, scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    cz, cy, cx = CENTRES[lab]
    az, ay, ax = (a * s for a, s in zip(AXES, scale))
    return np.sqrt(((Z - cz) / az) ** 2 + ((Y - cy) / ay) ** 2 + ((X - cx) / ax) ** 2)


def _ball(centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    return np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((Z, Y, X), centre, SPACING))) <= radius_mm


def chest() -> tuple[np.ndarray, np.ndarray]:
    """HU (-1000 air, 50 HU chest wall, -850 HU lung) and lung labels (1 right, 2 left)."""
    hu = np.full(SHAPE, -1000, np.int16)
    body = ((Y - 64) / 60.0) ** 2 + ((X - 88) / 86.0) ** 2 <= 1.0
    hu[body] = 50
    lung = np.zeros(SHAPE, np.uint8)
    for lab in (1, 2):
        lung[_radius(lab) <= 1.0] = lab
    hu[lung > 0] = -850
    return hu, lung


def run(hu: np.ndarray, lung: np.ndarray, lesion: np.ndarray) -> S.Screening:
    lesion = np.where(lung > 0, lesion, 0).astype(np.uint8)
    hu = hu.copy()
    hu[lesion == 1] = -600
    hu[lesion == 2] = 30
    return S.assess(hu, lung, lesion, SPACING, measurements=measure(lesion, lung, SPACING))


def peripheral_ggo(lung: np.ndarray, sides: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """GGO in the outer 12 % of each lung's radius on its lateral (chest-wall) side."""
    lesion = np.zeros(SHAPE, np.uint8)
    for lab in sides:
        lateral = X < CENTRES[lab][2] if lab == 1 else X > CENTRES[lab][2]
        lesion[(lung == lab) & (_radius(lab) >= 0.88) & lateral] = 1
    return lesion


def test_bilateral_peripheral_ggo_is_typical():
    hu, lung = chest()
    lesion = peripheral_ggo(lung)
    s = run(hu, lung, lesion)
    assert s.category == "typical"
    assert s.category_label == "Typical appearance"
    assert {c.key for c in s.decisive} == {"bilateral", "peripheral", "ggo"}
    bil = s.criterion("bilateral")
    per_lung = [np.count_nonzero((lesion == 1) & (lung == lab)) * VOXEL_ML for lab in (1, 2)]
    assert bil.met and bil.value == pytest.approx(min(per_lung), rel=1e-6)
    per = s.criterion("peripheral")
    assert per.met and per.value >= 95.0
    assert s.criterion("ggo").value == pytest.approx(100.0)
    assert s.criterion("isolated_consolidation").met is False
    assert any("Bilateral" in r for r in s.reasons)


def test_unilateral_peripheral_ggo_is_indeterminate():
    hu, lung = chest()
    s = run(hu, lung, peripheral_ggo(lung, sides=(2,)))
    assert s.category == "indeterminate"
    assert s.criterion("bilateral").met is False and s.criterion("bilateral").decisive
    assert s.criterion("peripheral").met is True
    assert s.criterion("bilateral").value == pytest.approx(0.0)


def test_central_perihilar_ggo_is_indeterminate():
    hu, lung = chest()
    lesion = np.zeros(SHAPE, np.uint8)
    for lab, toward_mid in ((1, +1), (2, -1)):
        cz, cy, cx = CENTRES[lab]
        medial = (X - cx) * toward_mid >= 12  # the medial 18 voxels (27 mm) of the lung
        lesion[medial & (np.abs(Y - cy) <= 25) & (np.abs(Z - cz) <= 10) & (lung == lab)] = 1
    s = run(hu, lung, lesion)
    assert s.category == "indeterminate"
    per = s.criterion("peripheral")
    assert per.met is False and per.decisive
    assert per.value < 20.0  # medial, deep in the thoracic cavity
    assert s.criterion("bilateral").met is True


def test_single_lobar_consolidation_is_atypical():
    hu, lung = chest()
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[(lung == 1) & (Z >= 36)] = 2  # the base of the right lung, no ground glass
    s = run(hu, lung, lesion)
    assert s.category == "atypical"
    iso = s.criterion("isolated_consolidation")
    assert iso.met and iso.decisive and iso.value == pytest.approx(100.0)
    assert s.criterion("ggo").met is False and s.criterion("ggo").value == pytest.approx(0.0)
    assert s.criterion("bilateral").met is False
    assert s.criterion("cavitation").met is False
    assert s.criterion("effusion").met is False


def test_empty_lung_is_negative_and_noise_floor_is_stated():
    hu, lung = chest()
    s = run(hu, lung, np.zeros(SHAPE, np.uint8))
    assert s.category == "negative" and s.category_label == "Negative for pneumonia"
    b = s.criterion("burden")
    assert b.decisive and b.met is False and b.value == 0.0
    assert f"{S.NOISE_FLOOR_PERCENT:g} %" in b.threshold
    assert [c.key for c in s.decisive] == ["burden"]


def test_burden_just_under_the_floor_is_negative_just_over_is_not():
    hu, lung = chest()
    lung_n = int(np.count_nonzero(lung))
    for fraction, expect_negative in ((0.004, True), (0.008, False)):
        lesion = np.zeros(SHAPE, np.uint8)
        # spread over both lungs' lateral shells, lowest slices first, until the voxel budget is used
        cand = np.flatnonzero(peripheral_ggo(lung).ravel())
        lesion.ravel()[cand[: int(fraction * lung_n)]] = 1
        s = run(hu, lung, lesion)
        assert (s.category == "negative") is expect_negative, (fraction, s.category, s.reasons)


def test_multifocal_rounded_central_ggo_is_typical_by_the_second_rule():
    hu, lung = chest()
    lesion = np.zeros(SHAPE, np.uint8)
    for lab in (1, 2):
        cz, cy, cx = CENTRES[lab]
        for dz in (-8, 8):
            lesion[_ball((cz + dz, cy, cx), 10.0) & (lung == lab)] = 1
    s = run(hu, lung, lesion)
    rounded = s.criterion("rounded")
    assert rounded.met and "4 rounded of 4" in rounded.detail
    assert s.criterion("multifocal").value == 4
    assert s.criterion("peripheral").met is False
    assert s.category == "typical" and {"rounded", "ggo"} <= {c.key for c in s.decisive}


def test_cavity_in_consolidation_is_found_and_air_bronchogram_is_not():
    hu, lung = chest()
    centre = (30.0, 62.0, 42.0)
    solid = _ball(centre, 24.0) & (lung == 1)
    cavity = _ball(centre, 9.0)
    lesion = np.where(solid & ~cavity, 2, 0).astype(np.uint8)
    hu2 = hu.copy()
    hu2[lesion == 2] = 30
    hu2[cavity] = -1000
    s = S.assess(hu2, lung, lesion, SPACING, measurements=measure(lesion, lung, SPACING))
    cav = s.criterion("cavitation")
    assert cav.met is True
    assert cav.value == pytest.approx(18.0, abs=2.0)  # equivalent diameter of the central section
    assert s.category == "atypical" and cav.decisive

    # a 4 mm bronchus through the same consolidation: an air bronchogram, not a cavity
    tube = (np.sqrt(((Y - centre[1]) * 1.5) ** 2 + ((X - centre[2]) * 1.5) ** 2) <= 2.0)
    lesion3 = np.where(solid & ~tube, 2, 0).astype(np.uint8)
    hu3 = hu.copy()
    hu3[lesion3 == 2] = 30
    hu3[tube & solid] = -1000
    s3 = S.assess(hu3, lung, lesion3, SPACING, measurements=measure(lesion3, lung, SPACING))
    assert s3.criterion("cavitation").met is False


def test_dependent_pleural_effusion_is_measured():
    hu, lung = chest()
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[(lung == 1) & (Z >= 36)] = 2
    base = run(hu, lung, lesion)
    assert base.criterion("effusion").value < 1.0

    # a crescent of water density behind the lower half of the right lung, 0-24 mm thick
    r = _radius(1)
    cz, cy, cx = CENTRES[1]
    crescent = (r > 1.0) & (_radius(1, (1.0, 1.4, 1.25)) <= 1.0) & (Y > cy + 10) & (Z >= cz) & (lung == 0)
    hu_f = hu.copy()
    hu_f[crescent] = 10
    hu_f[lesion == 2] = 30
    s = S.assess(hu_f, lung, lesion, SPACING, measurements=measure(lesion, lung, SPACING))
    eff = s.criterion("effusion")
    crescent_ml = np.count_nonzero(crescent) * VOXEL_ML
    assert eff.met is True
    assert S.EFFUSION_MIN_ML <= eff.value <= crescent_ml * 1.1
    assert eff.value >= 0.4 * crescent_ml
    assert "right" in eff.detail
    assert s.category == "atypical" and {"isolated_consolidation", "effusion"} <= {c.key for c in s.decisive}

    # the same fluid in front of the lung (not dependent) is not an effusion
    front = (r > 1.0) & (_radius(1, (1.0, 1.4, 1.25)) <= 1.0) & (Y < cy - 10) & (Z >= cz) & (lung == 0)
    hu_a = hu.copy()
    hu_a[front] = 10
    s2 = S.assess(hu_a, lung, lesion, SPACING, measurements=measure(lesion, lung, SPACING))
    assert s2.criterion("effusion").met is False


def test_no_lung_is_not_called_negative():
    hu, _ = chest()
    lung = np.zeros(SHAPE, np.uint8)
    s = S.assess(hu, lung, np.zeros(SHAPE, np.uint8), SPACING)
    assert s.category == "indeterminate"
    assert "No lung" in s.reasons[0]


def test_to_dict_one_line_and_classifier():
    hu, lung = chest()
    s = run(hu, lung, peripheral_ggo(lung))
    d = s.to_dict()
    text = json.dumps(d, allow_nan=False)  # JSON-ready, no NaN
    assert d["category"] == "typical" and d["notice"] == RESEARCH_NOTICE
    assert set(d["decided_by"]) == {"bilateral", "peripheral", "ggo"}
    keys = {c["key"] for c in d["criteria"]}
    assert {"burden", "bilateral", "peripheral", "multifocal", "rounded", "ggo_predominant", "lower_zone",
            "posterior", "isolated_consolidation", "cavitation", "effusion"} <= keys
    for c in d["criteria"]:
        assert set(c) >= {"key", "label", "value", "unit", "threshold", "met", "decisive"}
    assert d["probabilities"] == {} and d["verdict"] == ""
    assert "Simpson" in text
    assert s.one_line() == "RSNA: typical (research use only - not for diagnosis)"

    s2 = S.with_classifier(s, {"covid19": 0.91, "other_pneumonia": 0.06, "no_pneumonia": 0.03}, (12, 3),
                           "clf", "v1")
    assert s2.verdict == "covid19" and s2.top_slices == (12, 3)
    assert s2.one_line() == ("RSNA: typical; classifier: COVID-19 0.91 / other 0.06 / none 0.03 "
                             "(research use only - not for diagnosis)")
    d2 = s2.to_dict()
    assert d2["top_slice_numbers"] == [13, 4] and d2["model_version"] == "v1"


def test_typical_features_take_precedence_over_an_effusion():
    """The RSNA hierarchy: an atypical feature beside a typical pattern is named, the category stays typical."""
    hu, lung = chest()
    lesion = peripheral_ggo(lung)
    cz, cy, _ = CENTRES[1]
    crescent = (_radius(1) > 1.0) & (_radius(1, (1.0, 1.4, 1.25)) <= 1.0) & (Y > cy + 10) & (Z >= cz) & (lung == 0)
    hu = hu.copy()
    hu[crescent] = 10
    s = run(hu, lung, lesion)
    assert s.criterion("effusion").met is True and not s.criterion("effusion").decisive
    assert s.category == "typical"
    assert any("pleural effusion" in r and "precedence" in r for r in s.reasons)
