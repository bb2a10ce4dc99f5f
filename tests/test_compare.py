"""Follow-up comparison: anatomy-based alignment and the change table.

Synthetic pairs: one patient's anatomy (two ellipsoid lungs, spherical lesions) is defined in
patient millimetres and sampled on two scans with different origins (the patient lay elsewhere),
ranges, slice spacings and orientations, so the true offset and the true change are known.
Real study: P001 against itself (zero change) and against a shifted, cropped copy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from conftest import P001

from ctscreen.imaging.compare import REGIONS, TOLERANCE_ML, compare
from ctscreen.imaging.measurements import measure_volume
from ctscreen.imaging.result import CONSOLIDATION, GGO, AnalysisResult
from ctscreen.imaging.volume import STANDARD_AXIAL_DIRECTION, Volume

RIGHT_C = np.array([-75.0, 0.0, -150.0])   # LPS: patient right is -x
LEFT_C = np.array([75.0, 0.0, -150.0])
LUNG_AXES = np.array([50.0, 65.0, 100.0])


def phantom_result(*, shift_mm=(0.0, 0.0, 0.0), z_top=-30.0, nz=110, dz=2.5, n=96, px=4.0,
                   lesions=(), direction=STANDARD_AXIAL_DIRECTION) -> AnalysisResult:
    """Sample the anatomy (moved by ``shift_mm`` in LPS) on an axial grid; ``lesions`` are
    (centre LPS before the shift, radius mm, label) spheres inside the lungs."""
    shift = np.asarray(shift_mm, float)
    d = np.asarray(direction, float)
    origin = np.array([-(n - 1) * px / 2, -(n - 1) * px / 2, z_top])
    if d[0, 2] < 0:  # columns run to the patient's right: voxel 0 sits at the left edge
        origin[0] = -origin[0]
    k, i, j = np.meshgrid(np.arange(nz), np.arange(n), np.arange(n), indexing="ij")
    idx = np.stack([k * dz, i * px, j * px], axis=-1)
    lps = origin + idx @ d.T - shift  # anatomical coordinates of each voxel
    hu = np.full((nz, n, n), 40, np.int16)
    lung = np.zeros((nz, n, n), np.uint8)
    for label, c in ((1, RIGHT_C), (2, LEFT_C)):
        inside = (((lps - c) / LUNG_AXES) ** 2).sum(axis=-1) <= 1
        lung[inside] = label
        hu[inside] = -850
    lesion = np.zeros_like(lung)
    for centre, radius, label in lesions:
        sphere = (((lps - np.asarray(centre)) / radius) ** 2).sum(axis=-1) <= 1
        lesion[sphere & (lung > 0)] = label
    vol = Volume(hu=hu, spacing_mm=(dz, px, px), origin_mm=tuple(origin), direction=d,
                 z_mm=tuple(float(origin[2] + d[2, 0] * dz * kk) for kk in range(nz)))
    return AnalysisResult(volume=vol, lung=lung, lesion=lesion, lesion_prob=(lesion > 0).astype(np.float16),
                          measurements=measure_volume(vol, lesion, lung), model_name="phantom",
                          model_version="0", device="cpu")


RLL = (-75.0, 10.0, -205.0)  # right lower zone
LUL = (75.0, -10.0, -95.0)   # left upper zone


def test_known_offset_and_known_change():
    prior = phantom_result(lesions=[(RLL, 14.0, GGO), (LUL, 18.0, CONSOLIDATION)])
    shift = (12.0, -8.0, 37.0)
    current = phantom_result(shift_mm=shift, z_top=-10.0, nz=100, dz=2.0,
                             lesions=[(RLL, 22.0, GGO), (LUL, 9.0, CONSOLIDATION)])
    cmp = compare(prior, current)
    # current LPS + offset = prior LPS: the offset undoes the patient's shift
    assert cmp.registration.method == "lung-profile"
    assert np.allclose(cmp.registration.offset_mm, -np.asarray(shift), atol=1.5), cmp.registration
    assert cmp.registration.residual_mm < 2.0
    # the change table's numbers are the voxel counts of each study
    rv_p, rv_c = prior.volume.voxel_volume_ml, current.volume.voxel_volume_ml
    both = cmp.row("both")
    assert both.prior["lesion_ml"] == pytest.approx(np.count_nonzero(prior.lesion) * rv_p)
    assert both.current["lesion_ml"] == pytest.approx(np.count_nonzero(current.lesion) * rv_c)
    assert both.change["lesion_ml"] == pytest.approx(both.current["lesion_ml"] - both.prior["lesion_ml"])
    rl = cmp.row("right_lower")
    want_p, want_c = 4 / 3 * math.pi * 14 ** 3 / 1000, 4 / 3 * math.pi * 22 ** 3 / 1000
    assert rl.prior["ggo_ml"] == pytest.approx(want_p, rel=0.15)
    assert rl.current["ggo_ml"] == pytest.approx(want_c, rel=0.15)
    assert rl.direction == "worse" and rl.change["lesion_ml"] > 25
    assert rl.current["consolidation_ml"] == 0
    lu = cmp.row("left_upper")
    assert lu.prior["consolidation_ml"] == pytest.approx(4 / 3 * math.pi * 18 ** 3 / 1000, rel=0.15)
    assert lu.direction == "better" and lu.change["consolidation_ml"] < -15
    assert lu.change["severity"] <= 0 and lu.change["percent_involved"] < 0
    for region in ("right_upper", "right_middle", "left_middle", "left_lower"):
        r = cmp.row(region)
        assert r.direction == "unchanged" and r.prior["lesion_ml"] == 0 == r.current["lesion_ml"]
    # the right lung only holds the GGO, the left only the consolidation
    assert cmp.row("right").current["lesion_ml"] == pytest.approx(rl.current["lesion_ml"])
    assert cmp.row("left").prior["lesion_ml"] == pytest.approx(lu.prior["lesion_ml"])
    assert [r.region for r in cmp.rows] == list(REGIONS)


def test_slice_mapping_follows_anatomy_not_slice_number():
    prior = phantom_result()
    shift = (0.0, 0.0, 37.0)
    current = phantom_result(shift_mm=shift, z_top=-10.0, nz=100, dz=2.0)
    cmp = compare(prior, current)
    for kc in (10, 40, 75):
        z_cur = current.volume.z_mm[kc]
        z_anat = z_cur - shift[2]  # the anatomy shown on that slice
        kp = cmp.map_current_to_prior(kc)
        assert abs(prior.volume.z_mm[kp] - z_anat) <= prior.volume.spacing_mm[0] / 2 + 1.5
        assert abs(cmp.map_prior_to_current(kp) - kc) <= 2
    # prior slice 0 shows anatomy above the current scan: the edge slice, or None when not clipped
    assert cmp.map_prior_to_current(0, clip=False) is None
    assert cmp.map_prior_to_current(0) == 0
    assert cmp.map_current_to_prior(0) == 7  # (-10 - 37 + 30) / -2.5 = 6.8
    p = cmp.map_current_voxel(50, 48, 48)
    assert cmp.map_prior_voxel(*p) == pytest.approx([50, 48, 48], abs=1e-6)


def test_flipped_feet_first_grid_aligns():
    """Current stored feet-first with columns to the patient's right: the geometry, not the index, aligns."""
    d = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # k to the head, j to the patient's right
    prior = phantom_result(lesions=[(RLL, 14.0, GGO)])
    current = phantom_result(shift_mm=(5.0, 3.0, -20.0), z_top=-290.0, nz=120, dz=2.5, direction=d,
                             lesions=[(RLL, 14.0, GGO)])
    cmp = compare(prior, current)
    assert np.allclose(cmp.registration.offset_mm, [-5.0, -3.0, 20.0], atol=1.5)
    assert cmp.row("both").direction == "unchanged"
    assert cmp.row("right_lower").prior["lesion_ml"] == pytest.approx(cmp.row("right_lower").current["lesion_ml"],
                                                                      rel=0.1)


def test_no_lung_is_a_clear_error():
    prior = phantom_result(nz=20)
    empty = dataclasses.replace(prior, lung=np.zeros_like(prior.lung))
    with pytest.raises(ValueError, match="no lung"):
        compare(prior, empty)


# -- a real study -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def p001_result():
    """P001 with its real lung mask; lesions from the lung's HU (-750..-300 GGO, > -300 consolidation),
    a stand-in for the model that keeps this test fast: the comparison only reads the label maps."""
    if not P001.exists():
        pytest.skip(f"{P001} not found")
    from ctscreen.imaging.lungmask import lung_mask
    from ctscreen.io.dicom import load_series

    vol = load_series(P001)
    lung = lung_mask(vol)
    hu = vol.hu
    lesion = np.zeros(vol.shape, np.uint8)
    lesion[(lung > 0) & (hu > -750) & (hu <= -300)] = GGO
    lesion[(lung > 0) & (hu > -300)] = CONSOLIDATION
    return AnalysisResult(volume=vol, lung=lung, lesion=lesion, lesion_prob=(lesion > 0).astype(np.float16),
                          measurements=measure_volume(vol, lesion, lung), model_name="hu-threshold",
                          model_version="test", device="cpu")


def test_real_study_against_itself_is_zero_change(p001_result):
    cmp = compare(p001_result, p001_result)
    assert cmp.registration.offset_mm == pytest.approx((0.0, 0.0, 0.0), abs=0.3)
    assert cmp.row("both").prior["lesion_ml"] > 5  # a real lesion burden, not an empty comparison
    for r in cmp.rows:
        assert r.direction == "unchanged"
        for k, v in r.change.items():
            assert v == 0 or (isinstance(v, float) and math.isnan(v)), (r.region, k, v)
    assert all(cmp.map_current_to_prior(k) == k for k in range(0, p001_result.volume.shape[0], 7))
    # with both scans covering the lungs, the comparison's zones are the report's zones
    m = p001_result.measurements
    for side in ("right", "left"):
        for third in ("upper", "middle", "lower"):
            row = cmp.row(f"{side}_{third}")
            assert row.prior["percent_involved"] == pytest.approx(m.zone_percent(side, third), nan_ok=True)
            assert row.prior["severity"] == m.zone_severity(side, third)
    assert cmp.row("both").prior["severity"] == m.severity_total
    assert cmp.row("both").prior["percent_involved"] == pytest.approx(m.percent_involved)


def _shifted_cropped(res: AnalysisResult, z0: int, z1: int, y0: int, x0: int, table_mm: tuple) -> AnalysisResult:
    """A copy that sees the same patient moved by ``table_mm`` (LPS) and cropped to slices z0:z1,
    rows y0:, columns x0: (origins follow the crop, so world positions stay true)."""
    v = res.volume
    sl = (slice(z0, z1), slice(y0, None), slice(x0, None))
    d = np.asarray(v.direction, float)
    origin = np.asarray(v.origin_mm, float) + d @ (np.array([z0, y0, x0]) * np.asarray(v.spacing_mm)) + table_mm
    vol = dataclasses.replace(v, hu=v.hu[sl], origin_mm=tuple(origin),
                              z_mm=tuple(np.asarray(v.z_mm[z0:z1]) + table_mm[2]),
                              sop_instance_uids=v.sop_instance_uids[z0:z1], instance_numbers=v.instance_numbers[z0:z1],
                              headers=(), source_files=())
    lung, lesion = res.lung[sl], res.lesion[sl]
    return dataclasses.replace(res, volume=vol, lung=lung, lesion=lesion, lesion_prob=res.lesion_prob[sl],
                               measurements=measure_volume(vol, lesion, lung))


def test_real_study_against_shifted_and_cropped_copy(p001_result):
    lung_z = np.flatnonzero(p001_result.lung.reshape(p001_result.lung.shape[0], -1).any(axis=1))
    table = (14.3, -9.1, 23.0)
    # crop only slices and borders without lung: the same totals, a different grid
    z0, z1 = max(0, lung_z[0] - 2), lung_z[-1] + 3
    shifted = _shifted_cropped(p001_result, z0, z1, 40, 25, table)
    cmp = compare(p001_result, shifted)
    assert cmp.registration.offset_mm == pytest.approx(tuple(-t for t in table), abs=1.0)
    for r in cmp.rows:
        assert r.direction == "unchanged", r
        assert r.change["lesion_ml"] == pytest.approx(0, abs=1e-6)
    k = int(lung_z[len(lung_z) // 2])
    assert cmp.map_current_to_prior(k - z0) == k
    # now cut 20 slices of lung at the base as well: the offset is still found from what both hold
    cut = _shifted_cropped(p001_result, z0, lung_z[-1] - 20, 40, 25, table)
    cmp2 = compare(p001_result, cut)
    assert cmp2.registration.offset_mm[2] == pytest.approx(-table[2], abs=1.5)
    assert np.allclose(cmp2.registration.offset_mm[:2], [-table[0], -table[1]], atol=2.0)
    assert any("same length of lung" in w for w in cmp2.warnings)
    assert cmp2.map_current_to_prior(k - z0) == k
    assert abs(cmp2.row("both").current["lesion_ml"] - cmp2.row("both").prior["lesion_ml"]) > TOLERANCE_ML


def test_real_study_cut_short_keeps_zones_anatomical(p001_result):
    """A follow-up scan that stops short of the lung base (but below every lesion) shows no change in
    any zone: zones are cut from the lungs of both studies together, not from each scan's own range."""
    n = p001_result.volume.shape[0]
    lung_z = np.flatnonzero(p001_result.lung.reshape(n, -1).any(axis=1))
    stop = int(lung_z[-1]) - 12  # 12 slices (24 mm) of lung base missing from the follow-up
    lesion = p001_result.lesion.copy()
    lesion[stop - 3:] = 0  # no lesion in the part that is cut (nor just above it)
    base = dataclasses.replace(p001_result, lesion=lesion,
                               measurements=measure_volume(p001_result.volume, lesion, p001_result.lung))
    cut = _shifted_cropped(base, 0, stop, 0, 0, (0.0, 0.0, 11.0))
    own = cut.measurements  # the cut scan's own report: its thirds moved up
    m = base.measurements
    assert own.lesion_volume_ml == pytest.approx(m.lesion_volume_ml)
    cmp = compare(base, cut)
    assert cmp.registration.offset_mm[2] == pytest.approx(-11.0, abs=1.0)
    for r in cmp.rows:
        assert r.change["lesion_ml"] == pytest.approx(0, abs=1e-6), r.region
        assert r.direction == "unchanged", r.region
    # whereas comparing each report's own zones would have claimed changes
    from ctscreen.imaging.compare import region_figures

    fp, fc = region_figures(base), region_figures(cut)  # each scan's own thirds
    assert max(abs(fc[r]["lesion_ml"] - fp[r]["lesion_ml"]) for r in REGIONS[3:]) > 1.0
