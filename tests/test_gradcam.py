"""Grad-CAM on tiny synthetic networks whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctscreen.inference.gradcam import (
    cam_from_activations,
    gradcam_batch,
    gradcam_slice,
    normalise,
    outside_fraction,
    target_region,
)

S = 32  # network input size


class FakeModel:
    """The LoadedModel surface Grad-CAM uses: crop to ``box``, resize to S x S, HU / 1000."""

    def __init__(self, net: nn.Module, cam_layer: str):
        self.net = net.eval()
        self.default_cam_layer = cam_layer

    def cam_layers(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.net.named_modules() if n}

    def prepare(self, hu_slices: np.ndarray, box) -> torch.Tensor:
        y0, y1, x0, x1 = box
        t = torch.from_numpy(np.asarray(hu_slices, dtype=np.float32)[:, None, y0:y1, x0:x1] / 1000.0)
        return F.interpolate(t, size=(S, S), mode="bilinear", align_corners=False)

    def restore(self, t: torch.Tensor, box, out_shape) -> np.ndarray:
        y0, y1, x0, x1 = box
        inside = F.interpolate(t.detach().float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        out = np.zeros((t.shape[0], t.shape[1], *out_shape), dtype=np.float32)
        out[:, :, y0:y1, x0:x1] = inside.numpy()
        return out


class LeftGate(nn.Module):
    """Zeroes the right half of the image: everything after it depends only on the left half."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(a)
        mask[..., : a.shape[-1] // 2] = 1
        return a * mask


class LeftHalfNet(nn.Module):
    """Lesion logits depend only on the left half of the input; background logit is constant."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.gate = LeftGate()
        self.head = nn.Conv2d(4, 3, 1)
        torch.manual_seed(0)
        with torch.no_grad():
            self.features[0].weight.fill_(0.1)
            self.features[0].bias.fill_(0.0)
            self.head.weight.zero_()
            self.head.weight[1:, :] = 1.0
            self.head.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))

    def forward(self, x):
        return self.head(self.gate(self.features(x)))


class ChannelNet(nn.Module):
    """Two feature channels: 0 fires on bright tissue, 1 on dark air. Only channel 0 feeds the lesion logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU(inplace=True)  # in-place after the hooked layer must still work
        self.head = nn.Conv2d(2, 3, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[1, 0] = 2.0
            self.head.weight[2, 0] = 1.0
            self.head.bias.copy_(torch.tensor([0.3, 0.0, 0.0]))

    def forward(self, x):
        return self.head(self.act(self.features(x)))


def _blob_slices(n=2, size=64, left=True):
    """Air (-1000 HU) with a bright square (+200 HU) on the left (or right) half."""
    hu = np.full((n, size, size), -1000, dtype=np.int16)
    xs = slice(8, 24) if left else slice(40, 56)
    hu[:, 24:40, xs] = 200
    return hu


def test_cam_mass_on_the_left_when_lesion_logits_see_only_the_left_half():
    model = FakeModel(LeftHalfNet(), "gate")
    hu = np.full((2, 64, 64), 300, dtype=np.int16)  # uniform: only the network makes a side special
    box = (0, 64, 0, 64)
    maps, _ = gradcam_batch(model, hu, box)
    assert maps.shape == hu.shape and maps.dtype == np.float32
    left, right = maps[..., :32].sum(), maps[..., 32:].sum()
    assert left > 0 and right / (left + right) < 0.05


def test_cam_follows_the_channel_that_drives_the_lesion_logit():
    model = FakeModel(ChannelNet(), "features")
    for left in (True, False):
        hu = _blob_slices(left=left)
        maps, _ = gradcam_batch(model, hu, (0, 64, 0, 64))
        blob = hu > 0
        # Nearly all mass in the bright square, none in the (much larger) dark area channel 1 fires on.
        assert maps[blob].sum() / maps.sum() > 0.9
        assert maps[blob].max() == pytest.approx(1.0)


def test_maps_are_in_unit_range_with_slice_shape_and_zero_outside_box():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
                        nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 1))
    model = FakeModel(net, "3")
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 400, size=(3, 50, 70)).astype(np.int16)
    box = (5, 45, 10, 60)
    maps, outside = gradcam_batch(model, hu, box, layer="2")
    assert maps.shape == (3, 50, 70)
    assert maps.min() >= 0 and maps.max() <= 1
    assert np.all(maps[:, :5] == 0) and np.all(maps[:, :, :10] == 0)
    assert np.all(outside == 0)  # no lung mask given
    # Per-slice normalisation: each non-empty map peaks at 1.
    for m in maps:
        assert m.max() == 0 or m.max() == pytest.approx(1.0)


def test_batch_equals_one_slice_at_a_time():
    model = FakeModel(ChannelNet(), "features")
    hu = np.concatenate([_blob_slices(1, left=True), _blob_slices(1, left=False)])
    maps, _ = gradcam_batch(model, hu, (0, 64, 0, 64))
    for k in range(2):
        single, _ = gradcam_slice(model, hu[k], (0, 64, 0, 64))
        np.testing.assert_allclose(maps[k], single, atol=1e-5)


def test_outside_fraction_and_slice_helper():
    model = FakeModel(ChannelNet(), "features")
    hu = _blob_slices(1, left=True)[0]
    lung_right_half = np.zeros_like(hu, dtype=np.uint8)
    lung_right_half[:, 32:] = 1
    lung_left_half = 1 - lung_right_half
    m, frac = gradcam_slice(model, hu, (0, 64, 0, 64), lung_right_half)
    assert m.shape == hu.shape
    assert frac > 0.9
    _, frac_in = gradcam_slice(model, hu, (0, 64, 0, 64), lung_left_half)
    assert frac_in < 0.1


def test_parameters_keep_requires_grad_and_unknown_layer_is_refused():
    net = ChannelNet()
    model = FakeModel(net, "features")
    gradcam_batch(model, _blob_slices(1), (0, 64, 0, 64))
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="unknown Grad-CAM layer"):
        gradcam_batch(model, _blob_slices(1), (0, 64, 0, 64), layer="nope")


def test_building_blocks():
    A = torch.zeros(1, 2, 4, 4)
    A[0, 0, :2] = 1.0
    A[0, 1] = 1.0
    g = torch.zeros_like(A)
    g[0, 0] = 1.0
    g[0, 1] = -1.0
    cam = cam_from_activations(A, g)
    assert torch.equal(cam[0, :2], torch.zeros(2, 4)) and torch.equal(cam[0, 2:], torch.zeros(2, 4))
    g[0, 1] = 0.0
    assert torch.equal(cam_from_activations(A, g)[0], A[0, 0])

    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 0] = 1.0
    logits[0, 1, 0, 0] = 5.0  # one lesion pixel on slice 0, none on slice 1
    region = target_region(logits)
    assert region[0, 0].tolist() == [[1, 0], [0, 0]] and region[1].sum() == 4

    maps = np.array([[[0, 2], [4, -1]], [[0, 0], [0, 0]]], dtype=np.float32)
    out = normalise(maps.copy())
    np.testing.assert_allclose(out[0], [[0, 0.5], [1, 0]])
    assert np.all(out[1] == 0)
    lung = np.array([[[1, 1], [0, 0]], [[1, 1], [1, 1]]])
    np.testing.assert_allclose(outside_fraction(out, lung), [1 / 1.5, 0.0])

    # Faint diffuse activation outside the lung does not outweigh a peak inside it ...
    faint = np.full((1, 10, 10), 0.1, dtype=np.float32)
    faint[0, 4:6, 4:6] = 1.0
    lung = np.zeros((1, 10, 10), dtype=np.uint8)
    lung[0, 3:7, 3:7] = 1
    assert outside_fraction(faint, lung)[0] == 0.0
    # ... unless asked for the plain sum: 84 px x 0.1 outside against 4 x 1 + 12 x 0.1 inside.
    np.testing.assert_allclose(outside_fraction(faint, lung, min_level=0), [8.4 / (8.4 + 5.2)])


def test_gradcam_for_result_uses_the_results_box_and_lung():
    from types import SimpleNamespace

    from ctscreen.inference.gradcam import gradcam_for_result

    model = FakeModel(ChannelNet(), "features")
    hu = _blob_slices(3, left=True)
    lung = np.zeros_like(hu, dtype=np.uint8)
    lung[:, :, 32:] = 2
    lesion = (hu > 0).astype(np.uint8)
    result = SimpleNamespace(volume=SimpleNamespace(hu=hu), lung=lung, lesion=lesion, thorax_box=(0, 64, 0, 64))
    m, frac = gradcam_for_result(model, result, 1)
    expected, expected_frac = gradcam_slice(model, hu[1], (0, 64, 0, 64), lung[1], region=lesion[1])
    np.testing.assert_array_equal(m, expected)
    assert frac == expected_frac and frac > 0.9


class DualNet(nn.Module):
    """Lesion logit = 2 ReLU(bright channel) + ReLU(dark channel): where the region lies decides the channel."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        self.head = nn.Conv2d(2, 3, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[1] = torch.tensor([2.0, 1.0]).view(2, 1, 1)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.features(x)))


def test_region_selects_what_is_explained():
    model = FakeModel(DualNet(), "features")
    hu = _blob_slices(1, left=True)
    box = (0, 64, 0, 64)
    blob = hu[0] > 0
    on_blob, _ = gradcam_slice(model, hu[0], box, region=blob)
    assert on_blob[blob].sum() / on_blob.sum() > 0.9
    dark_patch = np.zeros_like(blob)
    dark_patch[4:12, 40:60] = True  # air: explained by the dark channel, which fires everywhere but the blob
    on_air, _ = gradcam_slice(model, hu[0], box, region=dark_patch)
    assert on_air[blob].sum() / on_air.sum() < 0.05
    # An empty region falls back to the whole slice rather than an all-zero map.
    whole, _ = gradcam_slice(model, hu[0], box, region=np.zeros_like(blob))
    assert whole.max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- map methods (issue 9)


class EverywhereNet(nn.Module):
    """One feature channel that fires on every pixel (bias); the lesion logit is that channel."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1)
        self.head = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.features.weight.fill_(0.1)
            self.features.bias.fill_(1.0)
            self.head.weight.zero_()
            self.head.weight[1, 0] = 1.0
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.features(x)))


def test_cam_kinds_by_their_formulas():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 4, 5)
    g = torch.randn(2, 3, 4, 5)
    np.testing.assert_allclose(cam_from_activations(a, g, "hirescam"), torch.relu((a * g).sum(1)), rtol=1e-6)
    np.testing.assert_allclose(cam_from_activations(a, g, "gradcam"),
                               torch.relu((a * g.mean((2, 3), keepdim=True)).sum(1)), rtol=1e-6)
    # Grad-CAM++ (Chattopadhyay et al.): alpha = g^2 / (2 g^2 + sum(A) g^3), w = sum(alpha ReLU(g))
    s = a.sum((2, 3), keepdim=True)
    alpha = g ** 2 / (2 * g ** 2 + s * g ** 3)
    w = (alpha * torch.relu(g)).sum((2, 3), keepdim=True)
    np.testing.assert_allclose(cam_from_activations(a, g, "gradcam++"), torch.relu((w * a).sum(1)), rtol=1e-4)
    with pytest.raises(ValueError, match="unknown CAM kind"):
        cam_from_activations(a, g, "scorecam")


def test_hirescam_stays_on_the_explained_region_where_gradcam_spreads():
    """A channel that fires everywhere: Grad-CAM paints the whole slice, HiResCAM only the region explained."""
    model = FakeModel(EverywhereNet(), "features")
    hu = np.full((1, 64, 64), -800, dtype=np.int16)
    region = np.zeros((1, 64, 64), bool)
    region[0, 20:36, 10:26] = True
    box = (0, 64, 0, 64)
    hires, _ = gradcam_batch(model, hu, box, region=region, method="seg-hirescam")
    plain, _ = gradcam_batch(model, hu, box, region=region, method="seg-gradcam")
    assert hires[region].sum() / hires.sum() > 0.9
    assert plain[region].sum() / plain.sum() < 0.2
    # Without "seg-" the whole slice is explained: the region given does not matter.
    whole_a, _ = gradcam_batch(model, hu, box, region=region, method="hirescam")
    whole_b, _ = gradcam_batch(model, hu, box, region=None, method="hirescam")
    np.testing.assert_array_equal(whole_a, whole_b)
    assert whole_a[region].sum() / whole_a.sum() < 0.2


def test_methods_listed_without_torch_agree_and_unknown_is_refused():
    from ctscreen.inference.camlayers import CAM_METHOD_NAMES, DEFAULT_CAM_METHOD
    from ctscreen.inference.gradcam import CAM_METHODS, check_method
    from ctscreen.inference.pipeline import AnalyzeOptions

    assert tuple(CAM_METHODS) == CAM_METHOD_NAMES and check_method(None) == DEFAULT_CAM_METHOD
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'; choose one of: seg-hirescam"):
        check_method("scorecam")
    with pytest.raises(ValueError, match="unknown CAM method"):
        AnalyzeOptions(cam_method="scorecam")
