"""Window/level mapping (PS3.3 C.11.2.1.2.1) and header defaults."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from conftest import EDGE_CASES, P001
from ctscreen.imaging.windowing import PRESETS, default_window_from_header, window_lut, window_to_uint8


def test_presets():
    assert PRESETS == {"lung": (1500, -600), "mediastinum": (350, 40), "bone": (2000, 500), "soft": (400, 50)}


def test_linear_function_exact_values():
    hu = np.array([-1351, -1350, -600, 149, 150, 3000, -32768, 32767], dtype=np.int16)
    out = window_to_uint8(hu, 1500, -600)
    assert out.dtype == np.uint8
    # x <= c - 0.5 - (w-1)/2 = -1350  -> 0 ; x > c - 0.5 + (w-1)/2 = 149 -> 255
    assert out.tolist() == [0, 0, 128, 255, 255, 255, 0, 255]


def test_lut_path_equals_float_path_over_whole_int16_range():
    hu = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16).reshape(256, 256)
    for width, level in list(PRESETS.values()) + [(1, 0), (2, -0.5), (0.2, 10)]:
        np.testing.assert_array_equal(window_to_uint8(hu, width, level),
                                      window_to_uint8(hu.astype(np.float32), width, level))


def test_monotonic_and_shape_preserved():
    hu = np.linspace(-2000, 2000, 4001).astype(np.int16).reshape(1, 1, -1)
    out = window_to_uint8(hu, 350, 40)
    assert out.shape == hu.shape
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)
    assert out.min() == 0 and out.max() == 255


def test_lut_is_cached_and_read_only():
    assert window_lut(1500.0, -600.0) is window_lut(1500.0, -600.0)
    assert not window_lut(1500.0, -600.0).flags.writeable


def test_default_window_from_headers():
    if not EDGE_CASES.exists():
        pytest.skip("shared data not found")
    p001 = pydicom.dcmread(sorted(P001.glob("*.dcm"))[0], stop_before_pixels=True)
    assert default_window_from_header(p001) == (350.0, 50.0)  # first of two stored windows
    ect = pydicom.dcmread(EDGE_CASES / "eCT_Supplemental.dcm", stop_before_pixels=True)
    assert default_window_from_header(ect) == (102.0, 49.0)  # Frame VOI LUT functional group
    assert default_window_from_header(Dataset()) is None
    bad = Dataset()
    bad.WindowWidth, bad.WindowCenter = 0, 40
    assert default_window_from_header(bad) is None
