"""The torch-free list of Grad-CAM layers agrees with the networks, and reads a model file's architecture."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctscreen.inference import camlayers


@pytest.mark.parametrize("arch", sorted(camlayers.CAM_LAYERS))
def test_list_agrees_with_the_networks(arch):
    torch = pytest.importorskip("torch")  # noqa: F841
    from ctscreen.inference import nets

    net = nets.build(arch)
    assert tuple(net.cam_layers()) == camlayers.CAM_LAYERS[arch]
    assert camlayers.default_layer(arch) == next(iter(net.cam_layers()))
    assert set(camlayers.CAM_LAYER_NOTES[arch]) == set(camlayers.CAM_LAYERS[arch])


def test_defaults_and_descriptions():
    # decoder1 became the UNet default in issue 9 (benchmarks/explanations.py: maps in the lung, on the lesion)
    assert camlayers.default_layer("unet") == "decoder1" and camlayers.default_layer("deeplab") == "aspp"
    assert camlayers.describe("unet", "decoder1").endswith("pixel by pixel (default)")
    assert "(default)" not in camlayers.describe("unet", "decoder4")
    assert camlayers.layers_for("nope") == () and camlayers.default_layer(None) == ""
    with pytest.raises(ValueError, match="choose one of: aspp, decoder, layer3, layer2"):
        camlayers.check_layer("deeplab", "decoder4")


def test_arch_of_model_files(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from ctscreen.inference import models, nets

    path = models.save_model(nets.build("deeplab", {"widths": [8, 8, 8, 8], "aspp_channels": 8}), "deeplab",
                             tmp_path / "mine.pt", {"version": "t"})
    assert camlayers.arch_of_model(str(path)) == "deeplab"
    net = nets.build("unet", {"channels": [4, 8, 16]})  # a plain torch.save with an OrderedDict state_dict
    torch.save({"format": models.FORMAT, "arch": "unet", "config": net.config, "state_dict": net.state_dict()},
               tmp_path / "plain.pt")
    assert camlayers.arch_of_model(str(tmp_path / "plain.pt")) == "unet"
    assert camlayers.arch_of_model("deeplab") == "deeplab"
    assert camlayers.arch_of_model(str(tmp_path / "missing.pt")) is None
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    assert camlayers.arch_of_model(str(tmp_path / "junk.pt")) is None


def test_no_torch_import():
    code = ("import sys\nfrom ctscreen.inference import camlayers\n"
            "camlayers.arch_of_model(None); camlayers.arch_of_model('deeplab')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
