"""Exact numbers on synthetic label volumes for ctscreen.imaging.measurements."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ctscreen.imaging.measurements import (
    Measurements,
    SliceRow,
    constrain_to_lung,
    count_lesions,
    measure,
    measure_volume,
    severity_score,
)
from ctscreen.imaging.volume import Volume


def _lung_column(nz: int = 30, side: int = 1, ny: int = 10, nx: int = 10) -> np.ndarray:
    """A lung that is a 10 x 10 pixel column through ``nz`` slices (100 px per slice)."""
    lung = np.zeros((nz, ny, nx), dtype=np.uint8)
    lung[:] = side
    return lung


# ----------------------------------------------------------------------------- volumes


def test_cube_of_10_mm_is_one_ml_at_1_mm():
    lesion = np.zeros((20, 30, 30), np.uint8)
    lesion[5:15, 5:15, 5:15] = 2
    lung = np.ones_like(lesion)
    m = measure(lesion, lung, (1.0, 1.0, 1.0))
    assert m.consolidation_volume_ml == pytest.approx(1.000, abs=1e-12)
    assert m.lesion_volume_ml == pytest.approx(1.000, abs=1e-12)
    assert m.ggo_volume_ml == 0.0
    assert m.lung_volume_ml == pytest.approx(18.0)
    assert m.right_lung_volume_ml == pytest.approx(18.0)
    assert m.left_lung_volume_ml == 0.0
    assert m.percent_involved == pytest.approx(100.0 / 18.0)
    assert math.isnan(m.percent_left)


def test_cube_of_10_mm_is_one_ml_at_anisotropic_spacing():
    # 10 mm / 2.5 mm = 4 slices, 10 mm / 0.5 mm = 20 pixels.
    lesion = np.zeros((8, 40, 40), np.uint8)
    lesion[2:6, 10:30, 10:30] = 2
    m = measure(lesion, np.ones_like(lesion), (2.5, 0.5, 0.5))
    assert m.consolidation_volume_ml == pytest.approx(1.000, abs=1e-12)
    assert [r.lesion_area_mm2 for r in m.rows] == pytest.approx([100.0] * 4)


def test_ggo_and_consolidation_are_split():
    lesion = np.zeros((20, 30, 30), np.uint8)
    lesion[5:10, 5:15, 5:15] = 1
    lesion[10:15, 5:15, 5:15] = 2
    m = measure(lesion, np.ones_like(lesion), (1.0, 1.0, 1.0))
    assert m.ggo_volume_ml == pytest.approx(0.5)
    assert m.consolidation_volume_ml == pytest.approx(0.5)
    assert m.lesion_volume_ml == pytest.approx(1.0)
    assert m.lesion_count == 1  # a consolidating core touching its GGO is one lesion
    first, last = m.rows[0], m.rows[-1]
    assert (first.index, first.ggo_area_mm2, first.consolidation_area_mm2) == (5, 100.0, 0.0)
    assert (last.index, last.ggo_area_mm2, last.consolidation_area_mm2) == (14, 0.0, 100.0)
    assert len(m.rows) == 10


def test_lesion_outside_lung_counts_in_volume_not_in_percent():
    lung = np.zeros((3, 10, 10), np.uint8)
    lung[:, :, :5] = 1
    lesion = np.zeros_like(lung)
    lesion[1, 0, 5:] = 1  # 5 px, all outside
    m = measure(lesion, lung, (1.0, 1.0, 1.0))
    assert m.ggo_volume_ml == pytest.approx(0.005)
    assert m.percent_involved == 0.0
    assert m.severity_total == 0
    (row,) = m.rows
    assert (row.lungs, row.zone, row.percent_of_slice_lung) == ("outside", "", 0.0)
    assert constrain_to_lung(lesion, lung).sum() == 0


def test_constrain_to_lung_keeps_labels_inside():
    lung = np.array([[[0, 1, 2, 1]]], np.uint8)
    lesion = np.array([[[2, 1, 2, 0]]], np.uint8)
    out = constrain_to_lung(lesion, lung)
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 1, 2, 0]]]
    with pytest.raises(ValueError):
        constrain_to_lung(lesion, lung[:, :, :2])


# ----------------------------------------------------------------------------- slices


def test_percent_of_slice_lung_and_identifiers():
    lung = _lung_column(3)
    lesion = np.zeros_like(lung)
    lesion[1, :3, :] = 1  # 30 px
    lesion[1, 3, :7] = 2  # 7 px
    m = measure(
        lesion, lung, (2.0, 0.5, 0.5), z_mm=[10.0, 8.0, 6.0],
        sop_instance_uids=["1.2.a", "1.2.b", "1.2.c"], instance_numbers=[7, 8, 9],
    )
    (row,) = m.rows
    assert row == SliceRow(
        index=1, z_mm=8.0, sop_instance_uid="1.2.b", instance_number=8,
        ggo_area_mm2=7.5, consolidation_area_mm2=1.75, lesion_area_mm2=9.25,
        lungs="right", zone="R middle", percent_of_slice_lung=37.0,
    )


# ----------------------------------------------------------------------------- zones


def _zone_of_each_slice(lesion_side: int, z_mm, nz: int = 30) -> list[str]:
    zones = []
    lung = _lung_column(nz, side=lesion_side)
    for k in range(nz):
        lesion = np.zeros_like(lung)
        lesion[k, 0, 0] = 1
        (row,) = measure(lesion, lung, (1.0, 1.0, 1.0), z_mm=z_mm).rows
        zones.append(row.zone)
    return zones


def test_zones_are_thirds_of_a_30_slice_lung_superior_first():
    zones = _zone_of_each_slice(1, z_mm=[100.0 - k for k in range(30)])
    assert zones == ["R upper"] * 10 + ["R middle"] * 10 + ["R lower"] * 10


def test_zones_follow_z_not_index():
    # Index 0 is now the most *inferior* slice (z grows with index, +z = head).
    zones = _zone_of_each_slice(2, z_mm=[float(k) for k in range(30)])
    assert zones == ["L lower"] * 10 + ["L middle"] * 10 + ["L upper"] * 10


def test_zones_without_z_take_index_0_as_superior():
    zones = _zone_of_each_slice(1, z_mm=None)
    assert zones == ["R upper"] * 10 + ["R middle"] * 10 + ["R lower"] * 10


def test_empty_identifiers_are_like_none():
    # A hand-made Volume has empty z_mm / uid tuples; the pipeline passes them on.
    lung = _lung_column(30)
    lesion = np.zeros_like(lung)
    lesion[0, 0, 0] = 1
    (row,) = measure(lesion, lung, (1.0, 1.0, 1.0), z_mm=(), sop_instance_uids=(), instance_numbers=()).rows
    assert (row.zone, row.z_mm, row.sop_instance_uid, row.instance_number) == ("R upper", None, None, None)
    with pytest.raises(ValueError):
        measure(lesion, lung, (1.0, 1.0, 1.0), z_mm=[0.0, 1.0])


def test_zones_are_per_lung_and_both_lungs_listed():
    # Right lung in slices 0-29, left lung in slices 15-44 (index 0 superior).
    lung = np.zeros((45, 10, 20), np.uint8)
    lung[0:30, :, :10] = 1
    lung[15:45, :, 10:] = 2
    lesion = np.zeros_like(lung)
    lesion[20, 0, 0] = 1  # right: 21st of 30 slices -> lower
    lesion[20, 0, 19] = 2  # left: 6th of 30 slices -> upper
    m = measure(lesion, lung, (1.0, 1.0, 1.0), z_mm=[-float(k) for k in range(45)])
    (row,) = m.rows
    assert (row.lungs, row.zone) == ("both", "R lower, L upper")
    assert m.percent_right_lower == pytest.approx(100.0 / 1000.0)
    assert m.percent_left_upper == pytest.approx(100.0 / 1000.0)
    assert m.percent_right_upper == 0.0
    assert (m.severity_right_lower, m.severity_left_upper, m.severity_right_upper) == (1, 1, 0)
    assert m.severity_total == 2


# ----------------------------------------------------------------------------- severity


@pytest.mark.parametrize(
    ("percent", "score"),
    [(0.0, 0), (0.001, 1), (4.999, 1), (5.0, 2), (25.0, 2), (25.001, 3), (26.0, 3), (50.0, 3),
     (50.001, 4), (75.0, 4), (75.001, 5), (100.0, 5), (float("nan"), 0)],
)
def test_severity_bands(percent, score):
    assert severity_score(percent) == score


@pytest.mark.parametrize(("lesion_px", "score"), [(0, 0), (49, 1), (50, 2), (250, 2), (251, 3), (260, 3),
                                                  (500, 3), (501, 4), (750, 4), (751, 5), (1000, 5)])
def test_zone_severity_at_band_boundaries(lesion_px, score):
    # Upper third of a 30-slice lung of 100 px per slice holds 1000 px.
    lung = _lung_column(30)
    lesion = np.zeros_like(lung)
    lesion[:10].reshape(-1)[:lesion_px] = 1
    m = measure(lesion, lung, (1.0, 1.0, 1.0))
    assert m.percent_right_upper == pytest.approx(lesion_px / 10.0)
    assert m.severity_right_upper == score
    assert m.severity_total == score
    assert m.zone_severity("right", "upper") == score


# ----------------------------------------------------------------------------- lesion count


def test_lesion_count_26_connected_and_minimum_volume():
    lesion = np.zeros((20, 20, 20), np.uint8)
    lesion[1:4, 1:4, 1:4] = 1  # 27 mm^3
    lesion[4:7, 4:7, 4:7] = 2  # touches the first one only at a corner: same lesion
    lesion[10:13, 10:13, 10:13] = 1  # separate, 27 mm^3
    lesion[18, 18, 18] = 1  # 1 mm^3 speck, below 0.01 mL
    m = measure(lesion, np.ones_like(lesion), (1.0, 1.0, 1.0))
    assert m.lesion_count == 2
    assert m.min_lesion_volume_ml == pytest.approx(0.01)
    assert count_lesions(lesion, 0.001, min_volume_ml=0.001) == 3  # the speck counts at 1 mm^3
    assert count_lesions(lesion, 0.001, min_volume_ml=0.0271) == 1  # 54 mm^3 piece only


# ----------------------------------------------------------------------------- export & volume


def test_to_dict_is_json_with_units_and_no_nan():
    lung = _lung_column(5)
    lesion = np.zeros_like(lung)
    lesion[2, 0, :4] = 2
    m = measure(lesion, lung, (1.0, 1.0, 1.0))
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["consolidation_volume_ml"] == pytest.approx(0.004)
    assert d["percent_left"] is None  # no left lung
    assert d["rows"][0]["consolidation_area_mm2"] == 4.0
    assert d["rows"][0]["z_mm"] is None
    assert isinstance(m, Measurements)
    with pytest.raises(Exception):
        m.lesion_count = 3  # frozen


_FEET_FIRST_AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # axis 0 -> +z (head)


def test_measure_volume_uses_volume_geometry():
    lung = _lung_column(30)
    lesion = np.zeros_like(lung)
    lesion[0, 0, 0] = 1
    # Index 0 is the most inferior slice: axis 0 runs towards the head.
    vol = Volume(hu=np.zeros(lung.shape, np.int16), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0.0, 0.0, -300.0),
                 direction=_FEET_FIRST_AXIAL, z_mm=tuple(-300.0 + 2.0 * k for k in range(30)),
                 sop_instance_uids=tuple(f"1.{k}" for k in range(30)), instance_numbers=tuple(range(1, 31)))
    m = measure_volume(vol, lesion, lung)
    (row,) = m.rows
    assert (row.zone, row.z_mm, row.sop_instance_uid, row.instance_number) == ("R lower", -300.0, "1.0", 1)
    assert m.ggo_volume_ml == pytest.approx(0.002)


def test_measure_volume_prefers_lps_z_when_z_mm_runs_the_other_way():
    lung = _lung_column(30)
    lesion = np.zeros_like(lung)
    lesion[0, 0, 0] = 1
    # z_mm along a slice normal pointing to the feet, but axis 0 runs towards the head.
    vol = Volume(hu=np.zeros(lung.shape, np.int16), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0.0, 0.0, -300.0),
                 direction=_FEET_FIRST_AXIAL, z_mm=tuple(300.0 - 2.0 * k for k in range(30)))
    (row,) = measure_volume(vol, lesion, lung).rows
    assert row.zone == "R lower"
    # The default (identity) direction carries no z information: z_mm is trusted.
    vol_default = Volume(hu=vol.hu, spacing_mm=vol.spacing_mm, z_mm=vol.z_mm)
    (row,) = measure_volume(vol_default, lesion, lung).rows
    assert row.zone == "R upper"
