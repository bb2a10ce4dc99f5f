"""Lung mask on the shared real series and on a synthetic chest.

The real series are read in place from ``../shared/data/dicom``; each is loaded
and masked once per test module.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctscreen.io.dicom import load_series
from ctscreen.imaging.lungmask import LEFT, RIGHT, iter_lung_mask, lung_mask, lung_mask_from_hu
from ctscreen.imaging.volume import Volume

DICOM_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
SERIES = {
    "P001": DICOM_ROOT / "covid-ct-md" / "P001",
    "cap001": DICOM_ROOT / "covid-ct-md" / "cap001",
    "normal001": DICOM_ROOT / "covid-ct-md" / "normal001",
    "A0002": DICOM_ROOT / "lung-pet-ct-dx-A0002",
}
#: Series where the right lung is clearly the larger (see test_right_lung_is_larger_where_expected).
RIGHT_LARGER = ("P001", "normal001")


def _load(path: Path) -> Volume:
    return load_series(path)


_CACHE: dict[str, tuple[Volume, np.ndarray, float]] = {}


@pytest.fixture(scope="module", params=list(SERIES))
def series(request):
    name = request.param
    if not SERIES[name].is_dir():
        pytest.skip(f"{SERIES[name]} not present")
    if name not in _CACHE:
        vol = _load(SERIES[name])
        t = time.perf_counter()
        mask = lung_mask(vol)
        _CACHE[name] = (vol, mask, time.perf_counter() - t)
    vol, mask, seconds = _CACHE[name]
    return name, vol, mask, seconds


# ----------------------------------------------------------------------------- real series


def test_both_lungs_present_with_plausible_volumes(series):
    name, vol, mask, seconds = series
    assert mask.dtype == np.uint8 and mask.shape == vol.shape
    assert set(np.unique(mask)) == {0, RIGHT, LEFT}
    right_l = (mask == RIGHT).sum() * vol.voxel_volume_ml / 1000.0
    left_l = (mask == LEFT).sum() * vol.voxel_volume_ml / 1000.0
    print(f"{name}: right {right_l:.2f} L, left {left_l:.2f} L, mask {seconds:.2f} s")
    assert 1.0 <= right_l <= 5.0
    assert 1.0 <= left_l <= 5.0
    # The two lungs of one adult differ, but not by more than this even with disease.
    assert 0.6 <= right_l / left_l <= 1.5
    assert seconds < 20.0  # a loose guard; the target (<= 3 s for 150 x 512 x 512) is in the report


def test_right_lung_is_larger_where_expected(series):
    """Right > left holds for P001 and normal001.

    It does not for cap001 (dense dependent right base) nor A0002 (right
    hilar tumour, large heart): there the right lung is the smaller one.
    """
    name, vol, mask, _ = series
    if name not in RIGHT_LARGER:
        pytest.skip(f"{name}: right lung not expected to be larger")
    assert (mask == RIGHT).sum() > (mask == LEFT).sum()


def test_right_lung_is_on_the_patients_right(series):
    """Label 1 lies at lower LPS x (patient right) than label 2."""
    _, vol, mask, _ = series
    cols = np.arange(vol.shape[2])
    x_right = (mask == RIGHT).sum(axis=(0, 1)) @ cols / (mask == RIGHT).sum()
    x_left = (mask == LEFT).sum(axis=(0, 1)) @ cols / (mask == LEFT).sum()
    # LPS x grows with the column index when direction[0, 2] > 0.
    assert (x_left - x_right) * np.sign(vol.direction[0, 2]) > 0


def _track_trachea(vol: Volume, k0: int, depth_mm: float = 40.0) -> list[tuple[int, np.ndarray]]:
    """The central airway from slice ``k0`` downwards, independent of the mask code."""
    dz, dy, dx = vol.spacing_mm
    out: list[tuple[int, np.ndarray]] = []
    prev = None
    for k in range(k0, min(vol.shape[0], k0 + int(depth_mm / dz) + 1)):
        lab, n = ndi.label(vol.hu[k] < -900)
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
        areas = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(n + 1)) * dy * dx
        if prev is None:
            cols = np.nonzero((vol.hu[k] > -300).any(axis=0))[0]
            mid = (cols[0] + cols[-1]) / 2.0
            cands = [i for i in range(1, n + 1) if i not in border and 80 <= areas[i] <= 600]
            cands = [i for i in cands if abs(np.nonzero(lab == i)[1].mean() - mid) * dx <= 20]
            if not cands:
                break
            best = min(cands, key=lambda i: abs(np.nonzero(lab == i)[1].mean() - mid))
        else:
            hits = [i for i in np.unique(lab[prev]) if i and 0.5 * prev.sum() * dy * dx <= areas[i] <= 1.6 * prev.sum() * dy * dx]
            if not hits:
                break
            best = max(hits, key=lambda i: (lab[prev] == i).sum())
        prev = lab == best
        out.append((k, prev))
    return out


def test_trachea_is_not_lung(series):
    name, vol, mask, _ = series
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    superior_first = vol.direction[2, 0] < 0
    k0 = int(zs[0] if superior_first else zs[-1])
    if not superior_first:
        pytest.skip("tracker written for index 0 = most superior")
    trachea = _track_trachea(vol, max(0, k0 - 1))
    assert trachea, f"{name}: no central airway found at the lung apex"
    inside = sum(int(mask[k][comp].astype(bool).sum()) for k, comp in trachea)
    total = sum(int(comp.sum()) for _, comp in trachea)
    assert inside <= 0.02 * total, f"{name}: {inside} of {total} trachea pixels in the lung mask"


def test_flipping_columns_keeps_patient_sides():
    """Mirror the stored columns and the x direction: the patient's right lung stays label 1."""
    vol = _CACHE.get("A0002", (None,))[0] or _load(SERIES["A0002"])
    ref = lung_mask(vol)
    flipped_dir = vol.direction.copy()
    flipped_dir[:, 2] *= -1  # columns now run towards the patient's right
    flipped = Volume(hu=vol.hu[:, :, ::-1].copy(), spacing_mm=vol.spacing_mm, direction=flipped_dir)
    out = lung_mask(flipped)[:, :, ::-1]
    swapped = ((out == RIGHT) & (ref == LEFT)) | ((out == LEFT) & (ref == RIGHT))
    assert swapped.sum() == 0
    # Rasterising hulls and ties is not exactly mirror-symmetric; the masks agree all but a rim.
    assert (out == ref).mean() > 0.999


def test_slice_order_does_not_matter():
    vol = _CACHE.get("A0002", (None,))[0] or _load(SERIES["A0002"])
    ref = lung_mask(vol)
    rev_dir = vol.direction.copy()
    rev_dir[:, 0] *= -1  # index 0 now the most inferior slice
    rev = Volume(hu=vol.hu[::-1].copy(), spacing_mm=vol.spacing_mm, direction=rev_dir)
    out = lung_mask(rev)
    agree = (out[::-1] == ref).mean()
    assert agree > 0.999


# ----------------------------------------------------------------------------- synthetic chest


def _synthetic_chest(rng_seed: int = 0):
    """Body (40 HU), two ellipsoid lungs (-850 HU), a trachea and main bronchi (-1000 HU).

    Index 0 is the most superior slice, columns run towards the patient's left,
    so the right lung sits at low column indices.
    """
    dz, dy, dx = 2.5, 0.75, 0.75
    nz, ny, nx = 80, 384, 384
    z = (np.arange(nz) * dz)[:, None, None]
    y = ((np.arange(ny) - ny / 2) * dy)[None, :, None]
    x = ((np.arange(nx) - nx / 2) * dx)[None, None, :]
    hu = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    body = (y / 110.0) ** 2 + (x / 135.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, hu.shape)] = 40.0
    zc, ry, rx, rz = 110.0, 70.0, 45.0, 80.0
    right = ((z - zc) / rz) ** 2 + (y / ry) ** 2 + ((x + 60.0) / rx) ** 2 <= 1.0
    left = ((z - zc) / rz) ** 2 + (y / ry) ** 2 + ((x - 60.0) / rx) ** 2 <= 1.0
    hu[right | left] = -850.0
    # Trachea from the top down to the carina at z = 90 mm, then main bronchi into each lung.
    trachea = ((y + 20.0) ** 2 + x ** 2 <= 9.0 ** 2) & (z <= 90.0)
    bronchi = ((y + 20.0) ** 2 + (z - 90.0) ** 2 <= 5.0 ** 2) & (np.abs(x) <= 45.0)
    hu[trachea | bronchi] = -1000.0
    # Dense lesion against the lateral pleura of the right lung, at mid height.
    blob = (z - zc) ** 2 + y ** 2 + (x + 60.0 + rx - 4.0) ** 2 <= 9.0 ** 2
    blob_in_lung = blob & right
    hu[blob_in_lung] = 40.0
    # Stomach gas under the left lung's base, not touching it.
    gas = (z - 195.0) ** 2 + (y + 60.0) ** 2 + (x - 30.0) ** 2 <= 28.0 ** 2
    hu[gas & body] = -1000.0
    hu += np.random.default_rng(rng_seed).normal(0.0, 15.0, hu.shape).astype(np.float32)
    return hu.astype(np.int16), (dz, dy, dx), right, left, trachea, blob_in_lung, gas & body


@pytest.fixture(scope="module")
def synthetic():
    hu, spacing, right, left, trachea, blob, gas = _synthetic_chest()
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    _GAS["gas"] = gas
    return hu, spacing, direction, right, left, trachea, blob, lung_mask_from_hu(hu, spacing, direction)


_GAS: dict[str, np.ndarray] = {}


def test_gas_below_the_diaphragm_is_not_lung(synthetic):
    *_, mask = synthetic
    gas = _GAS["gas"]
    assert gas.sum() * 2.5 * 0.75 * 0.75 / 1000.0 > 45.0  # big enough to pass the size rule alone
    assert not mask[gas].any()


def test_synthetic_lungs_are_found_and_sided(synthetic):
    hu, spacing, direction, right, left, trachea, blob, mask = synthetic
    for label, truth in ((RIGHT, right), (LEFT, left)):
        got = mask == label
        dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
        assert dice > 0.95, (label, dice)


def test_dense_lesion_against_the_pleura_is_lung(synthetic):
    hu, spacing, direction, right, left, trachea, blob, mask = synthetic
    assert blob.sum() > 1500
    # The lesion is 13 mm deep with a 16 mm wide base on the pleura: no air around it in-plane.
    assert (mask[blob] == RIGHT).mean() > 0.9
    # What is missed is the one-pixel rim on the pleura, as for the rest of the lung surface.
    deep = blob & (ndi.distance_transform_edt(right, sampling=spacing) > 1.5)
    assert (mask[deep] == RIGHT).mean() > 0.99


def test_synthetic_trachea_is_not_lung(synthetic):
    *_, trachea, blob, mask = synthetic
    # Above the last 10 mm before the carina (z = 90 mm, slice 36): where the
    # bronchi branch off, the tracker meets the lungs and stops.
    top = trachea.copy()
    top[int(80.0 / 2.5):] = False
    assert top.sum() > 5000
    assert (mask[top] > 0).mean() < 0.01
    assert (mask[trachea] > 0).mean() < 0.1


def test_progress_generator_yields_fractions_and_returns_mask(synthetic):
    hu, spacing, direction, *_, mask = synthetic
    vol = Volume(hu=hu, spacing_mm=spacing, direction=direction)
    gen = iter_lung_mask(vol)
    fractions = []
    while True:
        try:
            fractions.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 < fractions[0]
    np.testing.assert_array_equal(result, mask)
    seen = []
    lung_mask(vol, progress=seen.append)
    assert seen == fractions


def test_empty_and_airless_volumes():
    hu = np.full((4, 32, 32), 40, np.int16)
    assert not lung_mask_from_hu(hu, (2.0, 1.0, 1.0)).any()
    with pytest.raises(ValueError):
        lung_mask_from_hu(hu[0], (1.0, 1.0))


# ----------------------------------------------------------------------------- stomach under the left dome


def test_a0002_left_lung_does_not_bulge_into_the_stomach():
    """A0002 slice index 22 (8 mm slices): mottled stomach content under the left dome stays out.

    A gas bubble of the stomach touches the lung only through the slice above;
    the per-slice closing used to bridge to it and pull a wedge of stomach
    content into the left lung. This slice holds no dense lesion on the left, so
    every left-lung pixel lies close to the slice's own aerated left lung.
    """
    vol = _CACHE.get("A0002", (None,))[0] or _load(SERIES["A0002"])
    mask = _CACHE["A0002"][1] if "A0002" in _CACHE else lung_mask(vol)
    k = 22
    _, dy, dx = vol.spacing_mm
    air = vol.hu[k] < -500
    lab, _ = ndi.label(air)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    sizes = np.bincount(lab.ravel())
    sizes[border] = 0
    sizes[0] = 0
    left = mask[k] == LEFT
    ids = np.unique(lab[left & air])
    ids = ids[sizes[ids] > 0]
    main = ids[np.argmax(sizes[ids])]  # the aerated left lung of this slice
    dist_mm = ndi.distance_transform_edt(lab != main, sampling=(dy, dx))
    far = left & (dist_mm > 8.0)
    assert far.sum() == 0, f"{far.sum()} left-lung pixels > 8 mm from the aerated left lung (median {np.median(vol.hu[k][far]):.0f} HU)"


def _chest_with_stomach_bubble(rng_seed: int = 0):
    """Thick (8 mm) slices; under the left lung's dome a stomach with a gas bubble.

    In slices 8-9 the stomach (soft tissue) indents the left lung's base from the
    medial side; a 3 mm gas bubble in it, 12 mm from the lung in-plane, lies right
    under the full lung of slice 7, so it touches the lung in 3-D.
    """
    dz, dy, dx = 8.0, 1.5, 1.5
    nz, ny, nx = 12, 200, 240
    y = ((np.arange(ny) - ny / 2) * dy)[None, :, None]
    x = ((np.arange(nx) - nx / 2) * dx)[None, None, :]
    k = np.arange(nz)[:, None, None]
    hu = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    body = np.broadcast_to((y / 130.0) ** 2 + (x / 160.0) ** 2 <= 1.0, hu.shape)
    hu[body] = 40.0
    in_lungs = k <= 9
    right = in_lungs & ((y / 80.0) ** 2 + ((x + 70.0) / 45.0) ** 2 <= 1.0)
    left = in_lungs & ((y / 80.0) ** 2 + ((x - 70.0) / 45.0) ** 2 <= 1.0)
    stomach_r = np.where(k == 8, 30.0, np.where(k >= 9, 38.0, 0.0))
    stomach = (y ** 2 + (x - 50.0) ** 2 <= stomach_r ** 2) & body
    left &= ~stomach
    hu[right | left] = -850.0
    bubble = (k == 8) & (y ** 2 + (x - 65.0) ** 2 <= 3.0 ** 2)
    hu[bubble] = -1000.0
    hu += np.random.default_rng(rng_seed).normal(0.0, 15.0, hu.shape).astype(np.float32)
    return hu.astype(np.int16), (dz, dy, dx), left, stomach


def test_gas_bubble_under_the_dome_does_not_pull_the_stomach_into_the_lung():
    hu, spacing, left, stomach = _chest_with_stomach_bubble()
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = lung_mask_from_hu(hu, spacing, direction)
    # Beyond the one-pixel rim that every lung boundary may be off by.
    inner = stomach & (ndi.distance_transform_edt(~left, sampling=spacing) > 3.0)
    assert inner[8].sum() > 1000
    assert not mask[inner].any(), f"{int((mask[inner] > 0).sum())} stomach voxels in the lung mask"
    got = mask == LEFT
    dice = 2 * (got & left).sum() / (got.sum() + left.sum())
    assert dice > 0.95, dice
