"""The faster paths give what the plain ones gave.

* segmentation: the on-device input preparation and label restore against the
  OpenCV / full-probability path (on P001 with the shipped model where the
  shared data is present, on synthetic data otherwise);
* lung mask helpers against the straightforward ndimage formulations;
* measurements against a per-voxel reference;
* thread-pooled lesion PNGs against one-by-one writing.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from ctscreen.errors import ExportError
from ctscreen.imaging import lungmask, measurements
from ctscreen.io import export, export_png
from ctscreen.inference import segment
from ctscreen.inference.preprocess import hu_to_unit, resize_taps, slices_to_model_input, thorax_box, uses_area

P001 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "covid-ct-md" / "P001"


# ----------------------------------------------------------------------------- segmentation


def test_hu_to_unit_is_the_same_float32_on_a_tensor():
    hu = np.random.default_rng(0).integers(-3000, 3000, (4, 37, 41)).astype(np.int16)
    ref = hu_to_unit(hu)
    got = hu_to_unit(torch.from_numpy(hu)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("shape", [(378, 512), (512, 512), (400, 257), (300, 256), (200, 300), (256, 256), (40, 60)])
def test_resize_taps_reproduce_opencv(shape):
    img = np.random.default_rng(1).random(shape, dtype=np.float32)
    area = uses_area(shape, 256)
    ref = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    iy, wy = resize_taps(shape[0], 256, area)
    ix, wx = resize_taps(shape[1], 256, area)
    rows = (img[:, ix] * wx).sum(-1)
    out = (rows[iy] * wy[:, :, None]).sum(1)
    # area: the same sums in the same order; bilinear: within a float32 rounding step
    np.testing.assert_allclose(out, ref, rtol=0, atol=0 if area else 3e-7)


def _synthetic_hu(n: int = 3, size: int = 300) -> np.ndarray:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.4 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1
    sl = np.where(body, 40, -1000).astype(np.int16)
    return np.stack([sl + rng.integers(-300, 300, sl.shape).astype(np.int16) for _ in range(n)])


@pytest.mark.parametrize("size", [300, 200])
def test_prepare_on_device_matches_the_opencv_input(size):
    hu = _synthetic_hu(size=size)
    box = thorax_box(hu)
    ref = slices_to_model_input(hu, box, 64 if size == 200 else 256)
    got = segment.prepare_on_device(hu, box, ref.shape[-1], torch.device("cpu")).numpy()
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_labels_on_device_equal_the_rule_on_restored_probabilities():
    from ctscreen.inference.models import LoadedModel
    from ctscreen.inference.nets import UNet

    torch.manual_seed(0)
    model = LoadedModel("t", "unet", "1", UNet(channels=(4, 8, 16)).eval(), torch.device("cpu"), input_size=64)
    p = torch.softmax(3 * torch.randn(5, 3, 64, 64), dim=1)
    box = (7, 90, 3, 100)
    probs = model.restore(p, box, (96, 110))
    labels, prob = segment.labels_on_device(p, box, (96, 110))
    np.testing.assert_array_equal(labels, segment.labels_from_probs(probs))
    np.testing.assert_array_equal(prob, (probs[:, 1] + probs[:, 2]).astype(np.float16))
    assert labels.dtype == np.uint8 and prob.dtype == np.float16


@pytest.mark.skipif(not P001.is_dir(), reason=f"{P001} not present")
def test_device_path_labels_agree_with_the_cpu_path_on_p001():
    """The whole device path (prepare there, restore there) against the OpenCV path, shipped model, P001."""
    from ctscreen.io.dicom import load_series
    from ctscreen.inference.models import load_model

    hu = np.asarray(load_series(P001).hu)
    box = thorax_box(hu)
    model = load_model(None, "cpu")
    ks = [45, 70, 95]
    p_ref = segment.predict_tensor(model, model.prepare(hu[ks], box), tta=1)
    ref_labels = segment.labels_from_probs(model.restore(p_ref, box, hu.shape[1:]))
    x = segment.prepare_on_device(hu[ks], box, model.input_size, torch.device("cpu"))
    labels, _ = segment.labels_on_device(segment.predict_tensor(model, x, tta=1), box, hu.shape[1:])
    assert (ref_labels > 0).sum() > 1000  # these slices hold lesions
    assert (labels == ref_labels).mean() >= 0.999


# ----------------------------------------------------------------------------- lung mask helpers


def _blobs(seed: int, shape=(6, 48, 56)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), (0.7, 2.5, 2.5)) > 0.5


def test_block_mean_equals_the_float_accumulation():
    hu = np.random.default_rng(3).integers(-1024, 3000, (3, 51, 49)).astype(np.int16)
    for fy, fx in ((2, 2), (3, 2), (1, 3)):
        nz, ny, nx = hu.shape
        a = np.pad(hu, ((0, 0), (0, (-ny) % fy), (0, (-nx) % fx)), constant_values=-1000)
        ref = np.zeros((nz, a.shape[1] // fy, a.shape[2] // fx), np.float32)
        for oy in range(fy):
            for ox in range(fx):
                ref += a[:, oy::fy, ox::fx]
        ref /= fy * fx
        np.testing.assert_array_equal(lungmask._block_mean(hu, fy, fx), ref)


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_equals_the_ndimage_formulation(seed):
    mask = ~_blobs(seed)
    spacing = (2.0, 1.5, 1.5)
    lab, n = ndi.label(~mask, structure=lungmask._STRUCT_2D_IN_3D)
    border = np.zeros(n + 1, bool)
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        border[np.unique(edge)] = True
    border[0] = True
    small = ~border & (np.bincount(lab.ravel(), minlength=n + 1) * spacing[1] * spacing[2] <= lungmask.MAX_SLICE_HOLE_MM2)
    ref = ndi.binary_fill_holes(mask | small[lab])
    np.testing.assert_array_equal(lungmask._fill_holes(mask, spacing), ref)


def test_erode_until_two_equals_repeated_erosion():
    yy, xx = np.mgrid[:40, :60]
    m = (((yy - 20) / 14) ** 2 + ((xx - 18) / 12) ** 2 < 1) | (((yy - 20) / 14) ** 2 + ((xx - 42) / 12) ** 2 < 1)
    m |= (np.abs(yy - 20) <= 2) & (xx > 18) & (xx < 42)  # a bridge that erodes away
    mask = np.stack([m] * 4)
    got = lungmask._erode_until_two(mask)
    cur = mask.copy()
    for _ in range(12):
        cur = ndi.binary_erosion(cur, structure=lungmask._STRUCT_2D_IN_3D)
        lab, n = ndi.label(cur)
        if n >= 2:
            break
    assert got is not None and n == 2
    assert sorted(int(s.sum()) for s in got) == sorted(int((lab == i).sum()) for i in (1, 2))
    assert all(((lab > 0) | ~s).all() for s in got)


def test_centre_of_mass_from_projections():
    m = _blobs(5)
    np.testing.assert_allclose(lungmask._center_of_mass(m), ndi.center_of_mass(m), rtol=0, atol=1e-9)


def test_graph_components():
    a = np.array([0, 1, 3, 5, 6])
    b = np.array([1, 2, 4, 6, 7])
    comp = lungmask._components(9, a, b)
    groups = {}
    for node, c in enumerate(comp):
        groups.setdefault(int(c), set()).add(node)
    assert sorted(map(sorted, groups.values())) == [[0, 1, 2], [3, 4], [5, 6, 7], [8]]


# ----------------------------------------------------------------------------- measurements


@pytest.mark.parametrize("seed", range(3))
def test_measurements_equal_a_per_voxel_reference(seed):
    rng = np.random.default_rng(seed)
    lung = np.zeros((7, 40, 50), np.uint8)
    lung[1:6, 8:30, 5:22] = 1
    lung[1:6, 10:32, 26:45] = 2
    lesion = np.where(_blobs(seed, lung.shape) & (rng.random(lung.shape) < 0.9), rng.integers(1, 3, lung.shape), 0)
    lesion = lesion.astype(np.uint8)
    lesion[0, 0, 0] = 1  # a voxel outside the lung, far from the rest
    m = measurements.measure(lesion, lung, (2.0, 0.5, 0.5))
    vox = 2.0 * 0.25 / 1000
    assert m.ggo_volume_ml == pytest.approx((lesion == 1).sum() * vox)
    assert m.consolidation_volume_ml == pytest.approx((lesion == 2).sum() * vox)
    assert m.right_lung_volume_ml == pytest.approx((lung == 1).sum() * vox)
    assert m.percent_left == pytest.approx(100 * ((lesion > 0) & (lung == 2)).sum() / (lung == 2).sum())
    lab, n = ndi.label(lesion > 0, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    assert m.lesion_count == int((sizes * vox >= measurements.MIN_LESION_VOLUME_ML * (1 - 1e-9)).sum())
    rows = {r.index: r for r in m.rows}
    assert sorted(rows) == [int(k) for k in np.flatnonzero((lesion > 0).any(axis=(1, 2)))]
    for k, r in rows.items():
        assert r.lesion_area_mm2 == pytest.approx((lesion[k] > 0).sum() * 0.25)


def test_measurements_of_empty_arrays():
    z = np.zeros((3, 8, 8), np.uint8)
    m = measurements.measure(z, z, (1.0, 1.0, 1.0))
    assert m.lesion_count == 0 and m.rows == () and np.isnan(m.percent_involved)


# ----------------------------------------------------------------------------- PNG export


@pytest.fixture(scope="module")
def png_result(tmp_path_factory):
    from test_export_fixtures import synthetic_result

    return synthetic_result(tmp_path_factory.mktemp("speed-png"))


def test_pooled_lesion_pngs_equal_one_by_one(png_result, tmp_path, monkeypatch):
    (tmp_path / "pooled").mkdir()
    monkeypatch.setattr(export_png, "png_threads", lambda n: 3)  # a pool even on a one-core machine
    pooled = export_png.write_lesion_pngs(png_result, tmp_path / "pooled")
    ks = export.lesion_slice_indices(png_result)
    assert [p.name for p in pooled] == [export.slice_png_name(k) for k in ks]  # slice order
    monkeypatch.setattr(export_png, "png_threads", lambda n: 1)
    (tmp_path / "single").mkdir()
    single = export_png.write_lesion_pngs(png_result, tmp_path / "single")
    for a, b in zip(pooled, single):
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "pooled").glob(".*.tmp"))  # no temporary files left behind


def test_pooled_lesion_pngs_refuse_to_overwrite(png_result, tmp_path):
    ks = export.lesion_slice_indices(png_result)
    victim = tmp_path / export.slice_png_name(ks[-1])
    victim.write_bytes(b"mine")
    with pytest.raises(ExportError, match="exists"):
        export_png.write_lesion_pngs(png_result, tmp_path)
    assert victim.read_bytes() == b"mine"
    assert [p.name for p in tmp_path.iterdir()] == [victim.name]  # refused before writing anything
    written = export_png.write_lesion_pngs(png_result, tmp_path, force=True)
    assert len(written) == len(ks) and victim.read_bytes() != b"mine"
