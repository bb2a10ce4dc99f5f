"""Classical (threshold + morphology) lung segmentation, split into right and left lung.

No learning, no torch: a chest CT's lungs are the large air-filled regions
inside the body. The steps follow the classic pipeline of Hu, Hoffman and
Reinhardt, "Automatic lung segmentation for accurate quantitation of
volumetric X-ray CT images", IEEE TMI 20(6):490-498, 2001:

1. work on an in-plane block-averaged copy (about 1.5 mm pixels) for speed;
2. threshold air (< -500 HU);
3. drop air connected to the image border in each slice (outside the body);
4. keep the large 3-D air components that reach the upper half of the
   chest (lungs, airways), dropping bowel and stomach gas and small pockets;
5. find the trachea in the top slices (small, round, central) and follow it
   and the main bronchi down slice by slice until they enter the lung, then
   their pure-air lumen for another ``LUMEN_FOLLOW_MM``;
6. split right from left: two large 3-D components, else erode until two
   appear and grow them back inside the mask (a geodesic, watershed-like
   assignment);
7. per lung and per slice: small air islands (up to ``MAX_ISLAND_MM2``) that
   lie inside the lung's outline but that the rest of the lung, closed, does
   not reach are dropped first: with thick slices a gas bubble of the stomach
   right under the diaphragm touches the lung through the slice above, and the
   closing would bridge to it and pull stomach content into the lung; then a
   morphological closing with a ~10 mm disk, then the dents of the slice's
   convex hull that open onto the chest wall (their
   mouth runs along the ribs, they are at most 30 mm deep) are added, so a
   consolidation against the pleura is lung, while the heart, hilum and the
   liver or spleen dome stay out; holes are filled (small ones per slice,
   large ones only when closed in 3-D), so vessels and lesions inside the
   lung are lung;
8. back to full resolution.

Labels: 0 outside, 1 = patient's right lung, 2 = patient's left lung, decided
from the DICOM direction (LPS +x is patient left), never from the screen.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import cv2
import numpy as np
from scipy import ndimage as ndi

from ctscreen.imaging.volume import Volume

__all__ = [
    "RIGHT",
    "LEFT",
    "lung_mask",
    "lung_mask_from_hu",
    "iter_lung_mask",
    "iter_lung_mask_from_hu",
]

RIGHT = 1
LEFT = 2

#: HU below which a (block-averaged) voxel counts as air/lung.
AIR_HU = -500.0
#: Target in-plane pixel size of the working grid.
WORK_PIXEL_MM = 1.5
#: Radius of the per-slice closing that brings dense lesions along the pleura into the lung.
CLOSING_RADIUS_MM = 10.0
#: Dents of a lung slice opening onto the chest wall are lung up to this depth (mm) ...
MAX_PLEURAL_POCKET_MM = 30.0
#: ... when no point of their mouth lies more than this (mm) deeper under the skin than the shallower end of the mouth.
POCKET_MOUTH_TOLERANCE_MM = 15.0
#: A kept air component must hold at least this fraction of the largest one ...
MIN_COMPONENT_FRACTION = 0.02
#: ... and at least this many millilitres.
MIN_COMPONENT_ML = 20.0
#: A trachea seed in the top slices is at most this big (mm^2) ...
TRACHEA_MAX_AREA_MM2 = 700.0
#: ... and at most this far (mm) from the body's midline.
TRACHEA_MAX_OFFSET_MM = 30.0

#: Block-averaged HU below which a voxel is airway lumen rather than aerated lung.
LUMEN_HU = -950.0
#: How far (mm, craniocaudally) the airway lumen is followed once it has merged with the lung.
LUMEN_FOLLOW_MM = 20.0

#: Holes of one slice up to this area (mm^2) are lung (vessels, nodules); bigger ones only when closed in 3-D.
MAX_SLICE_HOLE_MM2 = 500.0

#: A lung's 2-D piece in one slice up to this area (mm^2) is an island. An island inside the slice's lung
#: outline that the closing, pockets and holes of the rest of the lung leave out is dropped before the
#: closing (gas under the diaphragm that touches the lung only through the slice above, e.g. in the stomach).
MAX_ISLAND_MM2 = 30.0

_ProgressFn = Callable[[float], None]


def lung_mask(volume: Volume, progress: _ProgressFn | None = None) -> np.ndarray:
    """Label the right (1) and left (2) lung of a chest CT volume.

    Parameters
    ----------
    volume
        The CT volume (``hu`` in (z, y, x) order, see :mod:`ctscreen.imaging.volume`).
    progress
        Optional callback receiving the fraction done (0..1).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of ``volume.shape``: 0 outside, 1 right lung, 2 left lung.
    """
    return lung_mask_from_hu(volume.hu, volume.spacing_mm, volume.direction, progress=progress)


def lung_mask_from_hu(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    direction: np.ndarray | None = None,
    progress: _ProgressFn | None = None,
) -> np.ndarray:
    """:func:`lung_mask` on a bare HU array.

    Parameters
    ----------
    hu
        (z, y, x) array in Hounsfield units.
    spacing_mm
        Voxel spacing (z, y, x) in mm.
    direction
        3x3 matrix whose column ``i`` is the LPS unit vector of array axis ``i``
        (as :attr:`Volume.direction`). When None, or when array axis 0 does not
        run head-feet (e.g. the identity placeholder of a hand-made ``Volume``),
        the standard axial layout is assumed: index 0 is the most superior
        slice, rows run posterior, columns run towards the patient's left.
    progress
        Optional callback receiving the fraction done (0..1).
    """
    gen = iter_lung_mask_from_hu(hu, spacing_mm, direction)
    while True:
        try:
            frac = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(frac)


def iter_lung_mask(volume: Volume) -> Generator[float, None, np.ndarray]:
    """Generator form of :func:`lung_mask`: yields fractions done (0..1), returns the mask.

    The caller may stop iterating (``close()``) between yields to cancel.
    """
    return (yield from iter_lung_mask_from_hu(volume.hu, volume.spacing_mm, volume.direction))


def iter_lung_mask_from_hu(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    direction: np.ndarray | None = None,
) -> Generator[float, None, np.ndarray]:
    """Generator form of :func:`lung_mask_from_hu`: yields fractions, returns the mask."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"lung mask needs a (z, y, x) volume, got shape {hu.shape}")
    direction = _axial_direction(direction)
    dz, dy, dx = (float(s) for s in spacing_mm)
    full_shape = hu.shape

    # 1. block-average in-plane to ~1.5 mm pixels.
    fy = max(1, int(round(WORK_PIXEL_MM / dy)))
    fx = max(1, int(round(WORK_PIXEL_MM / dx)))
    small = _block_mean(hu, fy, fx)
    spacing = (dz, dy * fy, dx * fx)
    # Fractions follow the measured share of the run time of each step.
    yield 0.03

    # 2-3. air inside the body.
    air = small < AIR_HU
    inside_air, body = _split_air(air)
    del air  # each step below drops what it no longer needs: the peak is the sum of what is alive
    yield 0.12

    # 4. large air components reaching the upper half of the chest.
    superior_first = _superior_is_low_index(direction)
    lungs = _select_lung_components(inside_air, spacing, superior_first)
    del inside_air
    yield 0.18

    # 5. large airways.
    airway = _track_large_airways(lungs, body, small, spacing, superior_first)
    del small
    lungs &= ~airway
    yield 0.22

    # 6. right / left.
    labels = _split_right_left(lungs, spacing, direction)
    del lungs
    yield 0.5

    # 7. closing, pleural dents and hole filling per lung; keep airways out.
    labels = _close_and_fill(labels, spacing, body)
    cross = _disk_struct_2d(1)[0].astype(np.uint8)
    for k in np.nonzero(airway.any(axis=(1, 2)))[0]:
        labels[k][cv2.dilate(airway[k].view(np.uint8), cross).astype(bool)] = 0
    del airway, body
    yield 0.95

    # 8. back to the full grid.
    out = _upsample_labels(labels, fy, fx, full_shape)
    yield 1.0
    return out


# ----------------------------------------------------------------------------- helpers


#: Voxels of the full grid per slab of :func:`_block_mean` (its integer sums and padding are per slab,
#: so their memory stays a few MB instead of twice the volume).
_SLAB_VOXELS = 1 << 20


def _block_mean(hu: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean over fy x fx in-plane blocks (edges padded with air).

    Slices are independent, so the work runs on slabs of slices written into the
    float32 result; each voxel gets the same sum in the same order as one pass over the volume.
    """
    nz, ny, nx = hu.shape
    if fy == 1 and fx == 1:
        return hu.astype(np.float32)
    out = np.empty((nz, -(-ny // fy), -(-nx // fx)), dtype=np.float32)
    step = max(1, _SLAB_VOXELS // max(1, ny * nx))
    for z in range(0, nz, step):
        out[z:z + step] = _block_mean_slab(hu[z:z + step], fy, fx)
    return out


def _block_mean_slab(hu: np.ndarray, fy: int, fx: int) -> np.ndarray:
    nz, ny, nx = hu.shape
    py, px = (-ny) % fy, (-nx) % fx
    a = hu
    if py or px:
        a = np.pad(a, ((0, 0), (0, py), (0, px)), constant_values=-1000)
    if np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2 and fy * fx * 65536 < 2**24:
        # Integer sums are exact in any order (and in float32 below 2**24): rows, then columns, same numbers.
        rows = a[:, 0::fy].astype(np.int32)
        for oy in range(1, fy):
            rows += a[:, oy::fy]
        cols = rows[:, :, 0::fx].copy()
        for ox in range(1, fx):
            cols += rows[:, :, ox::fx]
        acc = cols.astype(np.float32)
        acc /= fy * fx
        return acc
    acc = np.zeros((nz, a.shape[1] // fy, a.shape[2] // fx), dtype=np.float32)
    for oy in range(fy):
        for ox in range(fx):
            acc += a[:, oy::fy, ox::fx]
    acc /= fy * fx
    return acc


_STRUCT_2D_IN_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_2D_IN_3D[1] = ndi.generate_binary_structure(2, 1)


def _label(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``ndimage.label`` with uint16 labels when there are fewer than 65536 components, else int32.

    The same numbering either way (ndimage labels in the same scan order); uint16
    halves the labelled volume's bytes, and most masks here have a few hundred components.
    """
    try:
        return ndi.label(mask, structure=structure, output=np.uint16)
    except RuntimeError:  # more components than uint16 holds
        return ndi.label(mask, structure=structure)


def _label_sizes(lab: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(lab.ravel(), minlength=n + 1)`` by slabs of slices.

    bincount casts its input to intp (8 bytes a voxel); by slabs that copy stays a few MB.
    """
    sizes = np.zeros(n + 1, dtype=np.intp)
    if lab.ndim < 2 or lab.size == 0:
        return sizes + np.bincount(lab.ravel(), minlength=n + 1)[: n + 1]
    step = max(1, _SLAB_VOXELS // max(1, lab[0].size))
    for z in range(0, lab.shape[0], step):
        sizes += np.bincount(lab[z:z + step].ravel(), minlength=n + 1)
    return sizes


def _split_air(air: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: air inside the body, and the body (all not reached from the border through air)."""
    outside = np.zeros_like(air)
    for k in range(air.shape[0]):  # 4-connected per slice (OpenCV's labelling is several times ndimage's speed)
        n, lab = cv2.connectedComponents(np.ascontiguousarray(air[k]).view(np.uint8), connectivity=4)
        if n <= 1:
            continue
        border = np.zeros(n, dtype=bool)
        for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
            border[edge] = True
        border[0] = False
        outside[k] = border[lab]
    return air & ~outside, ~outside


#: Standard axial layout of ctscreen volumes (see ``ctscreen.io.dicom``):
#: axis 0 towards the feet, axis 1 posterior, axis 2 towards the patient's left.
_STANDARD_AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


def _axial_direction(direction: np.ndarray | None) -> np.ndarray:
    if direction is None:
        return _STANDARD_AXIAL
    d = np.asarray(direction, dtype=float)
    if d.shape != (3, 3) or abs(d[2, 0]) < 0.5:
        return _STANDARD_AXIAL
    return d


def _superior_is_low_index(direction: np.ndarray) -> bool:
    """True when array index 0 is the most superior slice (LPS +z = head)."""
    return bool(direction[2, 0] <= 0)


def _select_lung_components(
    inside_air: np.ndarray, spacing: tuple[float, float, float], superior_first: bool
) -> np.ndarray:
    lab, n = _label(inside_air)
    if n == 0:
        return np.zeros_like(inside_air)
    sizes = _label_sizes(lab, n)
    sizes[0] = 0
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    biggest = int(np.argmax(sizes))
    slices = ndi.find_objects(lab)
    nz = inside_air.shape[0]

    def top_and_bottom(i: int) -> tuple[int, int]:
        # Rank 0 = most superior slice.
        z0, z1 = slices[i - 1][0].start, slices[i - 1][0].stop - 1
        if superior_first:
            return z0, z1
        return nz - 1 - z1, nz - 1 - z0

    b_top, b_bottom = top_and_bottom(biggest)
    mid = (b_top + b_bottom) / 2.0
    keep = np.zeros(n + 1, dtype=bool)
    keep[biggest] = True
    min_size = max(MIN_COMPONENT_FRACTION * sizes[biggest], MIN_COMPONENT_ML / voxel_ml)
    for i in np.nonzero(sizes >= min_size)[0]:
        top, _ = top_and_bottom(int(i))
        if top <= mid:
            keep[i] = True
    return keep[lab]


def _disk_struct_2d(radius_px: int) -> np.ndarray:
    r = max(0, int(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy * yy + xx * xx) <= r * r + 0.5
    return disk[None]


def _track_large_airways(
    lungs: np.ndarray,
    body: np.ndarray,
    hu_small: np.ndarray,
    spacing: tuple[float, float, float],
    superior_first: bool,
) -> np.ndarray:
    """Trachea and main bronchi: follow the central airway down until it enters the lung.

    Seeds are the small, central air blobs of the top slices of the air mask;
    each next slice keeps the 2-D blobs that overlap the previous airway and
    did not suddenly grow (a sudden growth means the airway merged with lung).
    """
    nz, ny, nx = lungs.shape
    airway = np.zeros_like(lungs)
    order = range(nz) if superior_first else range(nz - 1, -1, -1)
    px_area = spacing[1] * spacing[2]
    max_seed_px = TRACHEA_MAX_AREA_MM2 / px_area
    max_off_px = TRACHEA_MAX_OFFSET_MM / spacing[2]
    zs = [k for k in order if lungs[k].any()]
    if not zs:
        return airway
    seeding = max(2, int(round(30.0 / spacing[0])))  # seeds within the top ~30 mm
    prev: np.ndarray | None = None
    # Inside the lung only the main bronchi are followed, not the lobar ones.
    follow_left = max(1, int(round(LUMEN_FOLLOW_MM / spacing[0])))
    for step, k in enumerate(zs):
        lab, n = ndi.label(lungs[k])
        if n == 0:
            break
        followed = False
        areas = np.bincount(lab.ravel(), minlength=n + 1)
        cur = np.zeros((ny, nx), dtype=bool)
        if prev is not None and prev.any():
            hit = np.unique(lab[prev & (lab > 0)])
            for i in hit:
                comp_prev_area = int((prev & (lab == i)).sum())
                # Merged into the lung: the blob is much bigger than what it continues.
                if areas[i] <= max(2.0 * comp_prev_area, comp_prev_area + 40.0 / px_area) and areas[i] <= 2 * max_seed_px:
                    cur |= lab == i
                elif follow_left > 0:
                    cont = _lumen_continuation(lab == i, prev, hu_small[k], comp_prev_area)
                    if cont.any():
                        cur |= cont
                        followed = True
        if step < seeding:
            bx = np.nonzero(body[k].any(axis=0))[0]
            mid_x = (bx[0] + bx[-1]) / 2.0 if bx.size else nx / 2.0
            for i in range(1, n + 1):
                if areas[i] > max_seed_px or (cur & (lab == i)).any():
                    continue
                yy, xx = np.nonzero(lab == i)
                if abs(xx.mean() - mid_x) > max_off_px:
                    continue
                # A round tube, not an elongated apex sliver.
                h, w = np.ptp(yy) + 1, np.ptp(xx) + 1
                if max(h, w) > 2.5 * min(h, w):
                    continue
                if step == 0 or prev is None or not prev.any():
                    cur |= lab == i
        if not cur.any():
            if step >= seeding:
                break
            prev = None
            continue
        airway[k] = cur
        prev = cur
        follow_left -= int(followed)
    return airway


def _lumen_continuation(blob: np.ndarray, prev: np.ndarray, hu: np.ndarray, prev_area: int) -> np.ndarray:
    """Where an airway merges with the lung in a slice, follow its lumen (pure air) a little further.

    The lumen of a main bronchus is near -1000 HU, aerated lung about -850; the
    part of the merged blob below ``LUMEN_HU`` that continues the previous
    airway is kept when it did not grow much (else it is leaking into lung).
    """
    near = cv2.dilate(prev.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    lumen = blob & (hu < LUMEN_HU)
    lab, n = ndi.label(lumen)
    if n == 0:
        return np.zeros_like(blob)
    keep = np.unique(lab[near & lumen])
    keep = keep[keep > 0]
    cont = np.isin(lab, keep)
    if not cont.any() or cont.sum() > 1.5 * max(prev_area, 1):
        return np.zeros_like(blob)
    return cont


def _center_of_mass(mask: np.ndarray) -> np.ndarray:
    """Index-space centroid of a boolean volume, from its three projections (much cheaper than ndimage's)."""
    total = int(np.count_nonzero(mask))
    if total == 0:
        return np.full(mask.ndim, np.nan)
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        counts = np.count_nonzero(mask, axis=other)
        out.append(float(np.dot(np.arange(counts.size, dtype=np.float64), counts)) / total)
    return np.array(out)


def _lps_x_of_centroid(mask: np.ndarray, spacing, direction: np.ndarray) -> float:
    idx = _center_of_mass(mask)
    return float(direction[0] @ (idx * np.asarray(spacing, dtype=float)))


def _split_right_left(lungs: np.ndarray, spacing, direction: np.ndarray) -> np.ndarray:
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    if not lungs.any():
        return labels
    lab, n = _label(lungs)
    sizes = _label_sizes(lab, n)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    a, b = int(order[0]), int(order[1]) if n >= 2 else 0
    if n >= 2 and sizes[b] >= 0.15 * sizes[a]:
        seeds = [lab == a, lab == b]
        # Other kept components: give them to the nearer lung below.
    else:
        seeds = _erode_until_two(lab == a)
    del lab  # not needed any more; frees its bytes before the feature transform below
    if seeds is None:
        # One lung only: decide its side from where it lies.
        side = LEFT if _lps_x_of_centroid(lungs, spacing, direction) > _body_center_x(lungs, spacing, direction) else RIGHT
        labels[lungs] = side
        return labels
    x0 = _lps_x_of_centroid(seeds[0], spacing, direction)
    x1 = _lps_x_of_centroid(seeds[1], spacing, direction)
    # LPS +x is the patient's left.
    right_seed, left_seed = (seeds[0], seeds[1]) if x0 < x1 else (seeds[1], seeds[0])
    labels[right_seed] = RIGHT
    labels[left_seed] = LEFT
    _grow_labels_within(labels, lungs, spacing)
    return labels


def _body_center_x(lungs, spacing, direction) -> float:
    nz, ny, nx = lungs.shape
    idx = np.array([(nz - 1) / 2.0, (ny - 1) / 2.0, (nx - 1) / 2.0])
    return float(direction[0] @ (idx * np.asarray(spacing, dtype=float)))


def _erode_until_two(mask: np.ndarray, max_iter: int = 12) -> list[np.ndarray] | None:
    """Erode in-plane until the mask falls apart into two large components.

    ``k`` erosions with the 4-neighbour cross are the pixels whose in-plane
    city-block distance to the background (the box's outside included) exceeds
    ``k``; that distance is computed once per slice instead of eroding the
    volume ``k`` times.
    """
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    # City-block distances are whole numbers; only "> it" for it <= max_iter is asked, so
    # uint8 capped at 255 gives the same answers as float32 with a quarter of the bytes.
    dist = np.empty(sub.shape, dtype=np.uint8)
    for k in range(sub.shape[0]):
        # Zero ring: OpenCV does not count the outside of the image as background.
        d = cv2.distanceTransform(np.pad(sub[k].view(np.uint8), 1), cv2.DIST_L1, 3)
        dist[k] = np.minimum(d[1:-1, 1:-1], 255)
    for it in range(1, max_iter + 1):
        cur = dist > it
        lab, n = _label(cur)
        if n < 2:
            if n == 0:
                return None
            continue
        sizes = _label_sizes(lab, n)
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        a, b = int(order[0]), int(order[1])
        if sizes[b] >= 0.1 * cur.sum():
            seeds = []
            for i in (a, b):
                full = np.zeros_like(mask)
                full[box] = lab == i
                seeds.append(full)
            return seeds
    return None


def _grow_labels_within(labels: np.ndarray, mask: np.ndarray, spacing) -> None:
    """Give every unlabelled voxel of ``mask`` the label of the nearest labelled voxel (in place)."""
    free = mask & (labels == 0)
    if not free.any():
        return
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    sub = labels[box]
    idx = ndi.distance_transform_edt(sub == 0, sampling=spacing, return_distances=False, return_indices=True)
    f = free[box]
    sub[f] = sub[idx[0][f], idx[1][f], idx[2][f]]


def _bbox(m: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """In-plane bounding box of a 2-D mask grown by ``margin`` (clipped to the slice); None when empty."""
    pts = cv2.findNonZero(m.view(np.uint8) if m.dtype == bool else m)
    if pts is None:
        return None
    x0, y0, w, h = cv2.boundingRect(pts)
    ny, nx = m.shape
    return (slice(max(0, y0 - margin), min(ny, y0 + h + margin)), slice(max(0, x0 - margin), min(nx, x0 + w + margin)))


def _close_and_fill(labels: np.ndarray, spacing, body: np.ndarray) -> np.ndarray:
    r_px = max(1, int(round(CLOSING_RADIUS_MM / float(spacing[2]))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r_px + 1, 2 * r_px + 1))
    px_mm = float(spacing[2])
    out = np.zeros_like(labels)
    pad = r_px + 1
    max_island_px = MAX_ISLAND_MM2 / (float(spacing[1]) * float(spacing[2]))
    dropped = np.zeros(labels.shape, dtype=bool)
    sides = (RIGHT, LEFT)
    closed = {side: np.zeros(labels.shape, dtype=bool) for side in sides}
    # Slice by slice, both lungs of a slice together: the distance under the skin is computed
    # once per slice and dropped after it, instead of kept for the whole volume (the work of
    # each lung and slice does not depend on the order).
    for k in np.nonzero(labels.reshape(labels.shape[0], -1).any(axis=1))[0]:
        skin_k = None
        for side in sides:
            m_k = labels[k] == side
            if not m_k.any():
                continue
            if skin_k is None:
                skin_k = cv2.distanceTransform(body[k].astype(np.uint8), cv2.DIST_L2, 5) * px_mm
            # Everything below stays inside the lung's bounding box (a closing and the convex hull do),
            # so it runs on that box with the margin the pleural pockets look at.
            crop = _bbox(m_k, 4)
            mk = m_k[crop]
            lk = labels[k][crop]
            skin = skin_k[crop]
            blocked = (lk > 0) & (lk != side)
            core, islands = _split_islands(mk, max_island_px)
            # Judge the islands against the lung without them, so that a stray one
            # cannot pull the tissue around it into the closing. Closing and pockets
            # stay inside the hull, so islands not stray beside the bare rest are not
            # stray beside the closed rest either: close only when there are candidates.
            stray = _stray_islands(islands, core) if islands.any() else islands
            if stray.any():
                rest = _close_with_pockets(core, kernel, pad, skin, blocked, px_mm)
                stray = _stray_islands(stray, rest)
                if stray.any():
                    dropped[k][crop] |= stray
                    mk = mk & ~stray
            closed[side][k][crop] = _close_with_pockets(mk, kernel, pad, skin, blocked, px_mm)
    for side in sides:
        c = closed.pop(side)
        if not c.any():
            continue
        box = _padded_box(c, 1)
        c[box] = _fill_holes(c[box], spacing)
        out[c & (out == 0)] = side
        del c
    # Where the closings overlap, the original label wins (stray islands are not restored).
    orig = (labels > 0) & ~dropped
    out[orig] = labels[orig]
    return out


def _close_with_pockets(
    m: np.ndarray, kernel: np.ndarray, pad: int, skin_mm: np.ndarray, blocked: np.ndarray, px_mm: float
) -> np.ndarray:
    """Closing of one lung slice (or a crop of it holding the lung), plus its pleural pockets.

    The zero padding of ``pad`` (> the kernel's radius) makes the closing of a crop that holds
    the whole lung equal to that of the full slice.
    """
    sl = np.pad(m.astype(np.uint8), pad)
    c = cv2.morphologyEx(sl, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    return _add_pleural_pockets(c, skin_mm, blocked, px_mm)


def _split_islands(m: np.ndarray, max_island_px: float) -> tuple[np.ndarray, np.ndarray]:
    """One lung slice: its pieces larger than ``max_island_px`` (core) and the smaller ones (islands).

    When the slice has no large piece (the tip of a lung), all of it is core.
    """
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    islands = np.zeros_like(m)
    if n <= 2:
        return m, islands
    small = np.zeros(n, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] <= max_island_px
    if small[1:].all() or not small.any():
        return m, islands
    islands = small[lab]
    return m & ~islands, islands


def _stray_islands(islands: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Islands inside the convex outline of a closed lung slice that it does not reach.

    ``lung`` is the slice's lung without its islands, closed and with its
    pleural pockets. An island inside its outline that it neither covers nor
    surrounds is cut off in-plane by tissue that is no pleural pocket and no
    hole of the lung: the mediastinum, or the abdomen under the dome of the
    diaphragm, where with thick slices a gas bubble of the stomach or colon
    touches the lung only through the slice above. Islands outside the outline
    (the costophrenic recesses, the anterior tip along the sternum) stay.
    """
    out = np.zeros_like(islands)
    if not lung.any() or not islands.any():
        return out
    lung_u8 = lung.astype(np.uint8)
    x0, y0, w, h = cv2.boundingRect(cv2.findNonZero(lung_u8))
    crop = (slice(y0, y0 + h), slice(x0, x0 + w))
    isl = islands[crop]  # islands outside the lung's bounding box are outside its hull
    n, lab = cv2.connectedComponents(isl.astype(np.uint8), connectivity=8)
    if n <= 1:
        return out
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, _hull_points(lung_u8[crop]), 1)
    # Covered or surrounded (in a hole of any size: a nodule or consolidation with air in it).
    flood = np.pad(lung_u8[crop], 1)
    cv2.floodFill(flood, None, (0, 0), 2)
    covered = flood[1:-1, 1:-1] != 2
    keep = np.zeros(n, dtype=bool)
    keep[0] = True
    keep[np.unique(lab[covered & isl])] = True
    keep[np.unique(lab[isl & (hull == 0)])] = True
    out[crop] = ~keep[lab]
    # Islands partly outside the box are outside the hull.
    outside_box = islands.copy()
    outside_box[crop] = False
    if outside_box.any():
        n_all, lab_all = cv2.connectedComponents(islands.astype(np.uint8), connectivity=8)
        out &= ~np.isin(lab_all, np.unique(lab_all[outside_box]))
    return out


def _hull_points(m: np.ndarray) -> np.ndarray:
    """Convex hull of a non-empty 2-D mask's pixels, from each row's first and last pixel (the same hull)."""
    rows = np.flatnonzero(m.any(axis=1))
    sub = m[rows].astype(bool, copy=False)
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    pts = np.concatenate([np.stack([first, rows], axis=1), np.stack([last, rows], axis=1)]).astype(np.int32)
    return cv2.convexHull(pts[:, None, :])


def _add_pleural_pockets(m: np.ndarray, skin_mm: np.ndarray, blocked: np.ndarray, px_mm: float) -> np.ndarray:
    """Add the dents of one lung slice that open onto the chest wall (dense lesions at the pleura).

    Dents are the parts of the slice's convex hull the lung does not fill. A
    dent is taken as lung when its mouth (the part on the hull) runs along the
    chest wall: no point of the mouth lies more than ``POCKET_MOUTH_TOLERANCE_MM``
    deeper under the skin than the shallower of its two ends (where it meets
    the lung). A mouth across the
    mediastinum (heart, hilum) dips far from the skin in its middle and is left
    out. Dents deeper than ``MAX_PLEURAL_POCKET_MM`` or larger than half the
    lung's area in the slice (the liver or spleen dome rounded by a thin lung
    base) are left out too.
    """
    mb = m.astype(bool)
    area = int(mb.sum())
    if area < 50:
        return mb
    pts = cv2.findNonZero(m.astype(np.uint8))
    x0, y0, w, h = cv2.boundingRect(pts)
    crop = (slice(max(0, y0 - 4), y0 + h + 4), slice(max(0, x0 - 4), x0 + w + 4))
    out = mb.copy()
    out[crop] = _pockets_in_crop(mb[crop], skin_mm[crop], blocked[crop], px_mm, area)
    return out


def _pockets_in_crop(mb: np.ndarray, skin_mm: np.ndarray, blocked: np.ndarray, px_mm: float, area: int) -> np.ndarray:
    m = mb.astype(np.uint8)
    hull = np.zeros(m.shape, np.uint8)
    cv2.fillConvexPoly(hull, _hull_points(m), 1)
    hb = hull.astype(bool)
    edge = hb & ~cv2.erode(hull, np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
    dent = hb & ~mb & ~blocked
    if not dent.any():
        return mb
    n, lab, stats, _ = cv2.connectedComponentsWithStats(dent.astype(np.uint8), connectivity=4)
    # The rules of _mouth_along_chest_wall, for all dents at once: a slice has dozens of dents (most of
    # them one-pixel steps of the rasterised hull), too many for a Python loop over them.
    my, mx = np.nonzero(edge & dent)
    mouth_lab = lab[my, mx]
    cand = np.zeros(n, dtype=bool)
    cand[mouth_lab] = True  # has a mouth (else a hole; hole filling deals with it)
    cand[0] = False
    cand &= stats[:, cv2.CC_STAT_AREA] <= 0.5 * area
    if not cand.any():
        return mb
    ok = _mouths_along_chest_wall(cand, lab, my, mx, mouth_lab, edge & mb, skin_mm)
    if not ok.any():
        return mb
    depth = cv2.distanceTransform(hull, cv2.DIST_L2, 5) * px_mm
    dy, dx = np.nonzero(dent)
    dl = lab[dy, dx]
    sel = ok[dl]
    deepest = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(deepest, dl[sel], depth[dy[sel], dx[sel]].astype(np.float64))
    ok &= deepest <= MAX_PLEURAL_POCKET_MM
    return mb | ok[lab]


#: Offsets of the 5 x 5 ring around a mouth pixel, and half of the 8-neighbourhood (each pair once).
_RING_DY, _RING_DX = (a.reshape(1, -1) for a in np.mgrid[-2:3, -2:3])
_HALF_DY = np.array([[0, 1, 1, 1]])
_HALF_DX = np.array([[1, -1, 0, 1]])


def _mouths_along_chest_wall(cand: np.ndarray, lab: np.ndarray, my: np.ndarray, mx: np.ndarray,
                             mouth_lab: np.ndarray, pleura: np.ndarray, skin_mm: np.ndarray) -> np.ndarray:
    """Per dent label: closed by lung at both ends of its mouth, and the mouth runs along the chest wall.

    ``my, mx, mouth_lab``: the mouth pixels (dent pixels on the hull's edge) and their dent;
    ``pleura``: lung pixels on the hull's edge. A dent's ends are the 8-connected pieces of
    the pleura within the 5 x 5 ring of its mouth; the shallower end is the one whose deepest
    pixel lies least deep under the skin. Computed for all dents at once as a graph whose
    nodes are (dent, pleura pixel) pairs, the result of :func:`_mouth_along_chest_wall` for each.
    """
    n = cand.size
    ny, nx = lab.shape
    keep = cand[mouth_lab]
    my, mx, mouth_lab = my[keep], mx[keep], mouth_lab[keep]
    mouth_img = np.zeros((ny + 4, nx + 4), np.int32)  # padded by the ring's reach
    mouth_img[my + 2, mx + 2] = mouth_lab
    py, px = np.nonzero(pleura)
    npx = py.size
    ok = np.zeros(n, dtype=bool)
    if npx == 0:
        return ok
    d = mouth_img[py[:, None] + 2 + _RING_DY, px[:, None] + 2 + _RING_DX]  # (pleura pixel, ring offset)
    hit, _ = np.nonzero(d)
    keys = np.unique(d[d > 0].astype(np.int64) * npx + hit)  # node = dent * npx + pleura pixel, sorted
    if keys.size == 0:
        return ok
    node_dent = keys // npx
    node_pix = keys % npx
    pidx = np.full((ny + 2, nx + 2), -1, np.int64)
    pidx[py + 1, px + 1] = np.arange(npx)
    q = pidx[py[node_pix][:, None] + 1 + _HALF_DY, px[node_pix][:, None] + 1 + _HALF_DX]  # (node, offset)
    node, off = np.nonzero(q >= 0)
    other = node_dent[node] * npx + q[node, off]
    j = np.searchsorted(keys, other)
    j[j == keys.size] = 0
    linked = keys[j] == other
    comp = _components(keys.size, node[linked], j[linked])
    n_comp = int(comp.max()) + 1
    comp_dent = np.zeros(n_comp, np.int64)
    comp_dent[comp] = node_dent
    comp_deepest = np.full(n_comp, -np.inf)
    np.maximum.at(comp_deepest, comp, skin_mm[py[node_pix], px[node_pix]].astype(np.float64))
    ends = np.bincount(comp_dent, minlength=n)
    shallow_end = np.full(n, np.inf)
    np.minimum.at(shallow_end, comp_dent, comp_deepest)
    mouth_deepest = np.full(n, -np.inf)
    np.maximum.at(mouth_deepest, mouth_lab, skin_mm[my, mx].astype(np.float64))
    return cand & (ends >= 2) & ~(mouth_deepest > shallow_end + POCKET_MOUTH_TOLERANCE_MM)


def _components(n_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of a small undirected graph (edges ``a[i] - b[i]``): labels 0..k-1 per node.

    Minimum-label hooking with pointer jumping, all in numpy: a slice's graph has a few
    hundred nodes, where scipy.sparse's per-call overhead would dominate.
    """
    lab = np.arange(n_nodes)
    while a.size:
        la, lb = lab[a], lab[b]
        low = np.minimum(la, lb)
        new = lab.copy()
        np.minimum.at(new, la, low)
        np.minimum.at(new, lb, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            break
        lab = new
    return np.unique(lab, return_inverse=True)[1].reshape(-1)


def _mouth_along_chest_wall(i: int, lab: np.ndarray, stats: np.ndarray, edge: np.ndarray, mb: np.ndarray,
                            skin_mm: np.ndarray) -> bool:
    """Dent ``i``: closed by lung at both ends of its mouth, and the mouth runs along the chest wall."""
    x0, y0, w, h = (int(v) for v in stats[i, :4])
    box = (slice(max(0, y0 - 3), y0 + h + 3), slice(max(0, x0 - 3), x0 + w + 3))
    comp = lab[box] == i
    mouth = comp & edge[box]
    if not mouth.any():
        return False  # a hole; hole filling deals with it
    # Lung pleura right beside the mouth: its two ends.
    beside = cv2.dilate(mouth.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & edge[box] & mb[box]
    if not beside.any():
        return False
    n_end, end_lab = cv2.connectedComponents(beside.astype(np.uint8), connectivity=8)
    if n_end < 3:
        return False  # not closed by lung at both ends: it opens onto the other lung or the mediastinum
    sk = skin_mm[box]
    shallow_end = min(float(sk[end_lab == j].max()) for j in range(1, n_end))
    return not float(sk[mouth].max()) > shallow_end + POCKET_MOUTH_TOLERANCE_MM


def _padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` in-plane (whole slices in z)."""
    if not mask.any():
        return (slice(0, 0),) * 3
    ys = np.nonzero(mask.any(axis=(0, 2)))[0]
    xs = np.nonzero(mask.any(axis=(0, 1)))[0]
    ny, nx = mask.shape[1:]
    return (
        slice(None),
        slice(max(0, ys[0] - pad), min(ny, ys[-1] + pad + 1)),
        slice(max(0, xs[0] - pad), min(nx, xs[-1] + pad + 1)),
    )


def _fill_holes(mask: np.ndarray, spacing) -> np.ndarray:
    """Fill small holes in every slice and every hole enclosed in 3-D.

    A slice-wise fill alone would also swallow the dome of the liver or a
    gas-filled colon wherever the lung base rings it in one slice; those
    openings continue downwards in 3-D, so large 2-D holes are only filled
    when they are closed in 3-D as well (a lesion or nodule inside the lung).
    """
    lab, enclosed = _enclosed(~mask, _STRUCT_2D_IN_3D, in_plane=True)
    areas_mm2 = _label_sizes(lab, enclosed.size - 1) * (spacing[1] * spacing[2])
    out = mask | (enclosed & (areas_mm2 <= MAX_SLICE_HOLE_MM2))[lab]
    del lab
    # The 3-D fill, as ndimage.binary_fill_holes (6-connected, every face of the box is outside) but
    # with one labelling instead of an iterated dilation.
    lab, enclosed = _enclosed(~out, None, in_plane=False)
    return out | enclosed[lab]


def _enclosed(free: np.ndarray, structure, in_plane: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels of ``free``'s components, and per label whether it stays off the box's border.

    With ``in_plane`` only the four in-plane sides count as border (per-slice holes).
    """
    lab, n = _label(free, structure=structure)
    border = np.zeros(n + 1, dtype=bool)
    faces = [lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]]
    if not in_plane:
        faces += [lab[0], lab[-1]]
    for face in faces:
        border[np.unique(face)] = True
    border[0] = True  # label 0 = not free
    return lab, ~border


def _upsample_labels(labels: np.ndarray, fy: int, fx: int, full_shape) -> np.ndarray:
    nz, ny, nx = full_shape
    if fy == 1 and fx == 1:
        return labels[:, :ny, :nx].astype(np.uint8)
    out = np.zeros(full_shape, dtype=np.uint8)
    sy, sx = labels.shape[1] * fy, labels.shape[2] * fx
    for k in np.nonzero(labels.any(axis=(1, 2)))[0]:
        for side in (RIGHT, LEFT):
            m = (labels[k] == side).astype(np.float32)
            if not m.any():
                continue
            up = cv2.resize(m, (sx, sy), interpolation=cv2.INTER_LINEAR)[:ny, :nx]
            out[k][(up >= 0.5) & (out[k] == 0)] = side
    return out
