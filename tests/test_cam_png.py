"""``--png cam``: annotated PNGs with the activation map, its colour bar, method and layer (issue 9)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from ctscreen.io import export, export_png
from test_export_fixtures import synthetic_result


@pytest.fixture()
def cam_result(tmp_path):
    res = synthetic_result(tmp_path)
    k = export.lesion_slice_indices(res)[0]
    h, w = res.volume.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    cam = np.exp(-((yy - h * 0.5) ** 2 + (xx - w * 0.35) ** 2) / (2 * (h / 8) ** 2)).astype(np.float16)
    return k, dataclasses.replace(res, cam={k: cam}, cam_outside_fraction={k: 0.1}, cam_layer="decoder1",
                                  cam_method="seg-hirescam")


def test_png_cam_writes_one_annotated_png_per_map(cam_result, tmp_path, monkeypatch):
    k, res = cam_result
    drawn: list[str] = []
    real = export_png._put_text
    monkeypatch.setattr(export_png, "_put_text", lambda img, text, *a, **kw: (drawn.append(text), real(img, text, *a, **kw)))
    written = export.export_all(res, tmp_path / "out", png="cam", seg=False)
    pngs = [p for p in written if p.suffix == ".png"]
    assert [p.name for p in pngs] == [export.slice_png_name(k)]  # only the slice with a map
    assert "Grad-CAM seg-hirescam at decoder1: 0 .. slice max" in drawn
    img = cv2.cvtColor(cv2.imread(str(pngs[0])), cv2.COLOR_BGR2RGB).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)  # the hot end of the map and its bar
    assert red.sum() > 50
    # the colour bar: a horizontal ramp from blue to red in the legend band, below the image
    h = img.shape[0]
    band = img[int(h * 0.8):]
    assert ((band[..., 2] > 200) & (band[..., 0] < 60)).any() and ((band[..., 0] > 200) & (band[..., 2] < 60)).any()


def test_png_cam_is_planned_like_lesion_pngs(cam_result, tmp_path):
    _, res = cam_result
    assert export.SLICE_PNG_PATTERN in export.planned_outputs(png="cam")
    export.export_all(res, tmp_path / "o", png="cam", seg=False)
    with pytest.raises(Exception, match="exists"):
        export.export_all(res, tmp_path / "o", png="cam", seg=False)


def test_png_cam_without_maps_is_refused_before_any_work(tmp_path, capsys):
    from ctscreen.cli import main

    code = main(["analyze", str(tmp_path), "--out", str(tmp_path / "out"), "--png", "cam", "--cam", "none"])
    err = capsys.readouterr().err
    assert code != 0 and "--png cam draws the activation maps" in err and not (tmp_path / "out").exists()
