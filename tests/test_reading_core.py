"""The reading workstation's non-Qt parts: planes, measurements (annotations) and 3-D lesions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctscreen.imaging import planes
from ctscreen.imaging.annotations import Annotations, ellipse_roi, freehand_roi, probe, ruler
from ctscreen.imaging.lesions import find_lesions
from ctscreen.imaging.measurements import count_lesions
from ctscreen.imaging.result import CONSOLIDATION, GGO, LEFT_LUNG, RIGHT_LUNG
from ctscreen.imaging.volume import Volume


def phantom(nz: int = 20, ny: int = 64, nx: int = 80) -> Volume:
    hu = np.full((nz, ny, nx), -1000, dtype=np.int16)
    hu[4:14, 10:50, 20:70] = 40  # 10 slices x 40 rows x 50 columns = 25 x 28 x 40 mm
    return Volume(hu=hu, spacing_mm=(2.5, 0.7, 0.8), origin_mm=(-30.0, -20.0, 100.0),
                  z_mm=tuple(100.0 - 2.5 * k for k in range(nz)))


def test_planes_are_views_with_true_spacing():
    vol = phantom()
    assert planes.plane_slice(vol.hu, "coronal", 30).shape == (20, 80)
    assert planes.plane_slice(vol.hu, "sagittal", 30).shape == (20, 64)
    assert np.shares_memory(planes.plane_slice(vol.hu, "coronal", 30), vol.hu)
    assert planes.plane_spacing_mm(vol.spacing_mm, "axial") == (0.7, 0.8)
    assert planes.plane_spacing_mm(vol.spacing_mm, "coronal") == (2.5, 0.8)
    assert planes.plane_spacing_mm(vol.spacing_mm, "sagittal") == (2.5, 0.7)
    assert [planes.plane_count(vol.shape, p) for p in planes.PLANES] == [20, 64, 80]
    for plane in planes.PLANES:
        voxel = planes.voxel_of(plane, *planes.plane_position(plane, (3, 5, 7)))
        assert voxel == (3, 5, 7)
    with pytest.raises(ValueError, match="unknown plane"):
        planes.plane_slice(vol.hu, "oblique", 0)


def test_orientation_letters_radiological():
    d = phantom().direction  # head first: slices to the feet, rows posterior, columns to the patient's left
    assert planes.orientation_letters(d, "axial") == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert planes.orientation_letters(d, "coronal") == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert planes.orientation_letters(d, "sagittal") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    flipped = d.copy()
    flipped[:, 0] *= -1  # slices stored feet first
    assert planes.orientation_letters(flipped, "coronal")["top"] == "I"


def test_cam_plane_rows_from_axial_maps():
    cam = {3: np.full((64, 80), 0.5, np.float16), 5: np.arange(64 * 80, dtype=np.float32).reshape(64, 80)}
    cor = planes.cam_plane(cam, "coronal", 10, (20, 64, 80))
    assert cor.shape == (20, 80) and np.all(cor[3] == 0.5) and np.all(cor[4] == 0)
    assert np.array_equal(cor[5], cam[5][10])
    sag = planes.cam_plane(cam, "sagittal", 7, (20, 64, 80))
    assert np.array_equal(sag[5], cam[5][:, 7])
    assert planes.cam_plane({}, "coronal", 0, (20, 64, 80)) is None
    assert planes.cam_plane(cam, "axial", 4, (20, 64, 80)) is None


def test_ruler_across_phantom_is_exact_in_every_plane():
    vol = phantom()
    for plane, axis_len in (("axial", 40.0), ("coronal", 40.0), ("sagittal", 28.0)):
        image = planes.plane_slice(vol.hu, plane, {"axial": 8, "coronal": 30, "sagittal": 40}[plane])
        row_mm, col_mm = planes.plane_spacing_mm(vol.spacing_mm, plane)
        cols = np.flatnonzero((image > 0).any(axis=0))
        rows = np.flatnonzero((image > 0).any(axis=1))
        # From the left edge of the first phantom pixel to the right edge of the last one.
        across = ruler(plane, 0, (cols[0] * col_mm, 5.0), ((cols[-1] + 1) * col_mm, 5.0))
        assert across.length_mm == pytest.approx(axis_len, abs=1e-9)
        down = ruler(plane, 0, (1.0, rows[0] * row_mm), (1.0, (rows[-1] + 1) * row_mm))
        assert down.length_mm == pytest.approx(28.0 if plane == "axial" else 25.0, abs=1e-9)
    assert ruler("axial", 0, (0.0, 0.0), (3.0, 4.0)).length_mm == 5.0


def test_ellipse_roi_hu_is_exact():
    hu = np.zeros((3, 40, 40), dtype=np.int16)
    hu[1, :, 20:] = 100  # left half 0 HU, right half 100 HU
    vol = Volume(hu=hu, spacing_mm=(2.0, 1.0, 1.0))
    roi = ellipse_roi(vol, "axial", 1, (20.0, 20.0), (5.0, 5.0))  # centred on the border, symmetric
    n = sum((i + 0.5 - 20) ** 2 + (j + 0.5 - 20) ** 2 <= 25 for i in range(40) for j in range(40))
    s = roi.stats
    assert s.pixel_count == n and n % 2 == 0
    assert s.mean_hu == 50.0
    assert s.sd_hu == pytest.approx(50.0 * math.sqrt(n / (n - 1)), rel=1e-12)
    assert (s.min_hu, s.max_hu) == (0.0, 100.0)
    assert s.area_mm2 == pytest.approx(math.pi * 25.0)
    # A coronal ROI over 2 mm slices: radius 2 mm across z covers rows whose centres lie within it.
    cor = ellipse_roi(vol, "coronal", 10, (25.0, 3.0), (2.0, 2.0))
    assert cor.stats.mean_hu == pytest.approx(np.mean(planes.plane_slice(hu, "coronal", 10)[1, 23:27]))


def test_probe_and_annotation_store():
    vol = phantom()
    p = probe(vol, "coronal", 30, (20 * 0.8 + 0.1, 4 * 2.5 + 0.1))
    assert p.voxel == (4, 30, 20) and p.hu == 40.0
    assert probe(vol, "axial", 0, (-1.0, 0.0)) is None
    store = Annotations()
    a = store.add(ruler("axial", 2, (0, 0), (3, 4)))
    b = store.add(p)
    store.add(ellipse_roi(vol, "axial", 8, (30.0, 20.0), (4.0, 3.0)))
    assert [d["id"] for d in store.to_dicts()] == [a, b, 3]
    assert store.to_dicts()[0]["length_mm"] == 5.0 and store.to_dicts()[2]["mean_hu"] == 40.0
    store.remove(a)
    assert len(store) == 2 and store.on_plane("coronal", 30)[0][0] == b


def test_lesions_listed_by_volume_with_lung_zone_and_type():
    nz, ny, nx = 30, 40, 60
    vol = Volume(hu=np.zeros((nz, ny, nx), np.int16), spacing_mm=(2.0, 1.0, 1.0),
                 z_mm=tuple(-2.0 * k for k in range(nz)))
    lung = np.zeros((nz, ny, nx), np.uint8)
    lung[:, 5:35, 2:28] = RIGHT_LUNG
    lung[:, 5:35, 32:58] = LEFT_LUNG
    lesion = np.zeros_like(lung)
    lesion[2:5, 10:14, 5:10] = GGO                 # right upper, 3*4*5 = 60 voxels, GGO
    lesion[22:28, 10:20, 40:50] = GGO              # left lower, 600 voxels, mixed
    lesion[24:26, 12:16, 42:46] = CONSOLIDATION
    lesion[12:16, 20:25, 20:40] = CONSOLIDATION    # crosses both lungs (and the gap), middle, 400 voxels
    lesion[0, 0, 0] = GGO                          # one voxel outside the lungs, below the minimum
    found = find_lesions(lesion, lung, vol, min_volume_ml=0.01)
    assert [les.voxel_count for les in found] == [600, 400, 60]
    assert len(found) == count_lesions(lesion, vol.voxel_volume_ml, 0.01)
    big, middle, small = found
    assert big.volume_ml == pytest.approx(600 * 0.002) and big.kind == "mixed"
    assert big.consolidation_ml == pytest.approx(2 * 4 * 4 * 0.002)
    assert big.lung == "left" and big.zones == ("L lower",)
    assert middle.lung == "both" and middle.kind == "consolidation" and middle.zones == ("R middle", "L middle")
    assert small.lung == "right" and small.zones == ("R upper",) and small.kind == "GGO"
    assert [les.number for les in found] == [1, 2, 3]
    assert lesion[big.centre_voxel] > 0 and lesion[middle.centre_voxel] > 0
    assert big.bbox == (22, 28, 10, 20, 40, 50)
    assert find_lesions(np.zeros_like(lung), lung, vol) == []


def test_freehand_roi_is_exact_on_a_known_region():
    hu = np.zeros((1, 40, 40), dtype=np.int16)
    hu[0, 10:20, 10:30] = 100
    hu[0, 20:30, 10:30] = -100
    vol = Volume(hu=hu, spacing_mm=(1.0, 0.5, 0.5))
    # A rectangle along the pixel edges of rows 10-29, columns 10-29, as a freehand outline (with a
    # redundant point on one edge): 400 pixels, half +100, half -100 HU, area 10 x 10 mm.
    outline = [(5.0, 5.0), (10.0, 5.0), (15.0, 5.0), (15.0, 15.0), (5.0, 15.0)]
    roi = freehand_roi(vol, "axial", 0, outline)
    assert roi.stats.pixel_count == 400 and roi.stats.mean_hu == 0.0
    assert roi.stats.sd_hu == pytest.approx(100.0 * math.sqrt(400 / 399))
    assert roi.stats.area_mm2 == pytest.approx(100.0)
    # A triangle: pixel centres under the diagonal only.
    tri = freehand_roi(vol, "axial", 0, [(5.0, 5.0), (15.0, 5.0), (5.0, 15.0)])
    assert tri.stats.area_mm2 == pytest.approx(50.0)
    assert tri.stats.pixel_count == sum(i + j < 19 for i in range(20) for j in range(20))
    store = Annotations()
    store.add(roi)
    assert store.to_dicts()[0]["pixel_count"] == 400 and store.to_dicts()[0]["kind"] == "freehand"
