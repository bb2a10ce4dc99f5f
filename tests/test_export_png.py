"""Annotated PNG exports on a small synthetic series (flipped on disk, display order in memory)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import ExportError
from ctscreen.io import export, export_png
from ctscreen.imaging.result import CONSOLIDATION, GGO

from test_export_fixtures import DISPLAY_AXIAL_DIRECTION, FAKE_ID, FAKE_NAME, synthetic_result


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    return synthetic_result(tmp_path_factory.mktemp("png"))


@pytest.fixture
def drawn(monkeypatch):
    """Every text drawn by the PNG renderer."""
    texts: list[str] = []
    real = export_png._put_text

    def spy(img, text, *a, **kw):
        texts.append(str(text))
        return real(img, text, *a, **kw)

    monkeypatch.setattr(export_png, "_put_text", spy)
    return texts


def _find_image(out, img):
    """Row offset where the bare slice image sits unchanged inside the render, else None."""
    h, w = img.shape[:2]
    f = export_png.FRAME_PX
    for y0 in range(out.shape[0] - h + 1):
        if np.array_equal(out[y0:y0 + h, f:f + w], img):
            return y0
    return None


def test_render_is_rgb_with_notice_band_outside_the_anatomy(res, drawn):
    k = export.lesion_slice_indices(res)[1]
    out = export.render_slice_png(res, k)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert RESEARCH_NOTICE in drawn
    img, _, _ = export_png._render_image(res, k, export_png.DEFAULT_WINDOW, True, 0.45, False)
    y0 = _find_image(out, img)
    assert y0 is not None, "the slice image must appear untouched (no text over anatomy)"
    below = out[y0 + img.shape[0] + export_png.FRAME_PX:]
    near_notice = np.abs(below.astype(int) - export_png.NOTICE_RGB).sum(axis=2) < 60
    assert near_notice.sum() > 50, "the notice is drawn in the bottom band"
    assert f"Slice {k + 1}/{res.volume.shape[0]}" in " ".join(drawn)
    assert any("W 1500 L -600" in t for t in drawn)
    assert any(res.model_name in t for t in drawn)
    assert any(t.endswith("cm") or t.endswith("mm") for t in drawn)  # scale bar label


def test_square_pixels_after_resampling(res):
    vol = res.volume
    img, pixel_mm, _ = export_png._render_image(res, 1, export_png.DEFAULT_WINDOW, True, 0.45, False)
    h, w = img.shape[:2]
    ny, nx = vol.shape[1:]
    assert h / w == pytest.approx((ny * vol.spacing_mm[1]) / (nx * vol.spacing_mm[2]), rel=0.02)
    assert w * pixel_mm == pytest.approx(nx * vol.spacing_mm[2], rel=0.01)


def test_overlay_colours_where_the_mask_is(res):
    k = next(i for i in export.lesion_slice_indices(res) if (res.lesion[i] == CONSOLIDATION).any())
    img, _, _ = export_png._render_image(res, k, export_png.DEFAULT_WINDOW, True, 0.45, False)
    h, w = img.shape[:2]
    small = cv2.resize(res.lesion[k], (w, h), interpolation=cv2.INTER_NEAREST)
    ggo = cv2.erode((small == GGO).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    cons = cv2.erode((small == CONSOLIDATION).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    px_g, px_c = img[ggo].astype(int), img[cons].astype(int)
    assert (px_g[:, 0] - px_g[:, 2] > 60).all(), "GGO tinted amber"
    assert (px_c[:, 2] - px_c[:, 1] > 60).all(), "consolidation tinted magenta"
    outside = ~cv2.dilate((small > 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert (img[outside].max(axis=1) - img[outside].min(axis=1) == 0).all(), "no tint away from lesions"
    outline, _, _ = export_png._render_image(res, k, export_png.DEFAULT_WINDOW, False, 0.45, False)
    assert (outline == export_png.GGO_RGB).all(axis=2).any()
    assert (outline == export_png.CONSOLIDATION_RGB).all(axis=2).any()
    assert (outline[ggo].max(axis=1) == outline[ggo].min(axis=1)).mean() > 0.5


def test_legend_swatches_present(res):
    out = export.render_slice_png(res, 1)
    for colour in (export_png.GGO_RGB, export_png.CONSOLIDATION_RGB):
        assert (out == colour).all(axis=2).sum() >= 14 * 14


def test_orientation_letters_from_direction():
    assert export.orientation_letters(DISPLAY_AXIAL_DIRECTION) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    mirrored = DISPLAY_AXIAL_DIRECTION.copy()
    mirrored[:, 2] *= -1
    mirrored[:, 1] *= -1
    assert export.orientation_letters(mirrored) == {"left": "L", "right": "R", "top": "P", "bottom": "A"}


def test_patient_left_out_unless_asked(res, drawn):
    assert res.volume.patient_name == FAKE_NAME
    export.render_slice_png(res, 1)
    export.render_montage(res)
    joined = "\n".join(drawn)
    assert FAKE_NAME not in joined and "Doe" not in joined and FAKE_ID not in joined
    drawn.clear()
    export.render_slice_png(res, 1, include_patient=True)
    assert any(FAKE_NAME in t and FAKE_ID in t for t in drawn)


def test_anonymous_render_has_no_patient_pixels(res):
    anon = dataclasses.replace(res, volume=dataclasses.replace(res.volume, patient_name="", patient_id=""))
    assert np.array_equal(export.render_slice_png(res, 2), export.render_slice_png(anon, 2))
    assert not np.array_equal(export.render_slice_png(res, 2, include_patient=True),
                              export.render_slice_png(anon, 2, include_patient=True))


def test_gradcam_overlay_when_available(res, drawn):
    k = export.lesion_slice_indices(res)[0]
    cam_map = np.zeros(res.volume.shape[1:], np.float32)
    cam_map[5:20, 5:25] = 1.0
    with_cam = dataclasses.replace(res, cam={k: cam_map})
    plain = export.render_slice_png(with_cam, k)
    heat = export.render_slice_png(with_cam, k, cam=True)
    assert plain.shape != heat.shape or not np.array_equal(plain, heat)
    assert any(t.startswith("Grad-CAM") for t in drawn)
    drawn.clear()
    export.render_slice_png(with_cam, k + 1, cam=True)
    assert "Grad-CAM not computed for this slice" in drawn


def test_write_lesion_pngs_names_and_refusal(res, tmp_path):
    paths = export.write_lesion_pngs(res, tmp_path)
    assert [p.name for p in paths] == [export.slice_png_name(k) for k in export.lesion_slice_indices(res)]
    assert paths[0].name == "slice_0002.png"
    img = cv2.imread(str(paths[0]))
    assert img is not None and img.shape[2] == 3
    with pytest.raises(ExportError, match="--force"):
        export.write_lesion_pngs(res, tmp_path)
    assert len(export.write_lesion_pngs(res, tmp_path, force=True)) == len(paths)


def test_single_slice_and_montage_written(res, tmp_path):
    p = export.write_slice_png(res, 0, tmp_path / "current.png")
    assert cv2.imread(str(p)) is not None
    m = export.write_montage_png(res, tmp_path / export.MONTAGE_NAME, max_tiles=3)
    assert cv2.imread(str(m)).shape[0] > 100


def test_montage_picks_evenly():
    picked = export_png._even_pick(list(range(100)), 24)
    assert len(picked) == 24 and picked[0] == 0 and picked[-1] == 99
    assert export_png._even_pick([3, 4], 24) == [3, 4]


def test_montage_without_lesions(res, drawn):
    empty = dataclasses.replace(res, lesion=np.zeros_like(res.lesion))
    out = export.render_montage(empty)
    assert out.ndim == 3
    assert any("No lesions found" in t for t in drawn)
