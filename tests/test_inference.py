"""Networks, model files, the intensity contract, evaluation and training (CPU, small)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ctscreen.errors import ModelLoadError
from ctscreen.inference import nets
from ctscreen.inference.evaluate import EvaluationInputError, evaluate
from ctscreen.inference.models import MODELS_DIR, available_models, default_model_name, load_model, save_model
from ctscreen.inference.preprocess import (HU_HIGH, HU_LOW, hu_to_unit, slices_to_model_input, thorax_box)
from ctscreen.inference.segment import labels_from_probs, segment_batch

SEMISEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-semiseg"
needs_semiseg = pytest.mark.skipif(not SEMISEG.exists(), reason="../shared/data/covid-semiseg not present")


@pytest.mark.parametrize("arch", ["unet", "deeplab"])
def test_networks_output_three_classes_at_input_size(arch):
    net = nets.build(arch).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    layers = net.cam_layers()
    # the UNet default (first) layer is decoder1 since issue 9 (benchmarks/explanations.py)
    assert next(iter(layers)) == ("decoder1" if arch == "unet" else "aspp")


def test_intensity_contract_matches_calibration():
    assert hu_to_unit(np.array([HU_LOW, HU_HIGH, -5000, 3000])).tolist() == [0.0, 1.0, 0.0, 1.0]
    # aerated lung (-850 HU) lands at the training images' parenchyma grey level (44/255)
    assert abs(float(hu_to_unit(np.array(-850.0))) * 255 - 44) < 1.0
    # soft tissue (+40 HU) at their soft-tissue level (214/255)
    assert abs(float(hu_to_unit(np.array(40.0))) * 255 - 214) < 1.0


def test_thorax_box_excludes_air_and_table():
    hu = np.full((3, 100, 120), -1000, np.int16)
    hu[:, 20:80, 30:100] = 40  # body
    hu[:, 92:95, 5:115] = 200  # table, separate component
    assert thorax_box(hu, margin_px=0) == (20, 80, 30, 100)
    x = slices_to_model_input(hu, (20, 80, 30, 100), size=32)
    assert x.shape == (3, 1, 32, 32) and abs(float(x.mean()) - float(hu_to_unit(np.array(40.0)))) < 1e-5


def test_labels_follow_the_evaluation_rule():
    probs = np.zeros((1, 3, 1, 4), np.float32)
    probs[0, :, 0, 0] = [0.6, 0.2, 0.2]   # bg wins -> 0
    probs[0, :, 0, 1] = [0.4, 0.3, 0.3]   # lesion 0.6 >= 0.5 although bg is the largest single class -> GGO
    probs[0, :, 0, 2] = [0.1, 0.3, 0.6]   # consolidation
    probs[0, :, 0, 3] = [0.5, 0.25, 0.25]  # exactly 0.5 -> lesion
    assert labels_from_probs(probs)[0, 0].tolist() == [0, 1, 2, 1]


def test_save_load_roundtrip_and_bad_files(tmp_path):
    net = nets.build("unet", {"channels": [4, 8]})
    p = save_model(net, "unet", tmp_path / "tiny.pt", {"version": "tiny-1"})
    m = load_model(p, "cpu")
    assert m.arch == "unet" and m.version == "tiny-1" and m.default_cam_layer == "decoder1"
    hu = np.full((2, 40, 40), -850, np.int16)
    probs = segment_batch(m, hu, (0, 40, 0, 40), tta=4)
    assert probs.shape == (2, 3, 40, 40)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)

    with pytest.raises(ModelLoadError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        load_model(bad)
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "ctscreen-model/1", "arch": "deeplab", "config": {}, "state_dict": net.state_dict()}, wrong)
    with pytest.raises(ModelLoadError, match="do not match"):
        load_model(wrong)


def test_shipped_models_have_cards_and_load():
    assert set(available_models()) >= {"unet", "deeplab"}
    assert default_model_name() == "unet"
    for name in ("unet", "deeplab"):
        card = json.loads((MODELS_DIR / f"{name}.json").read_text())
        for key in ("command", "git_commit", "hardware", "training_seconds", "data", "recipe"):
            assert card[key], key
        assert (MODELS_DIR / f"{name}.md").exists()
        assert (MODELS_DIR / f"{name}.pt").stat().st_size < 20 * 2**20
        m = load_model(name, "cpu")
        assert m.name == name and m.version.startswith(name)


def _mini_semiseg(tmp_path: Path, n: int) -> Path:
    root = tmp_path / "semiseg"
    for sub in ("train/Imgs", "train/GT", "train-multiclass/GT"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        (root / "train/Imgs" / f"{i}.jpg").symlink_to(SEMISEG / "train/Imgs" / f"{i}.jpg")
        (root / "train/GT" / f"{i}.png").symlink_to(SEMISEG / "train/GT" / f"{i}.png")
        (root / "train-multiclass/GT" / f"{i}.png").symlink_to(SEMISEG / "train-multiclass/GT" / f"{i}.png")
    return root


@needs_semiseg
def test_shipped_default_segments_real_slices():
    """The default model finds the radiologists' lesions on labelled slices (a sanity floor)."""
    res = evaluate(SEMISEG / "train/Imgs", SEMISEG / "train-multiclass/GT", load_model(None, "cpu"))
    assert res["images"] == 50
    assert res["dice"] > 0.75 and res["specificity"] > 0.9
    assert "dice_ggo" in res and "dice_consolidation" in res


@needs_semiseg
def test_evaluate_lists_mismatched_names(tmp_path):
    root = _mini_semiseg(tmp_path, 3)
    (root / "train/GT" / "1.png").unlink()
    (root / "train/GT" / "99.png").write_bytes((SEMISEG / "train/GT/5.png").read_bytes())
    with pytest.raises(EvaluationInputError) as e:
        evaluate(root / "train/Imgs", root / "train/GT", load_model(None, "cpu"))
    assert "1" in str(e.value) and "99" in str(e.value) and "without a mask" in str(e.value)


@needs_semiseg
def test_train_writes_weights_and_card_and_saves_on_ctrl_c(tmp_path, monkeypatch):
    from ctscreen.inference import train as train_mod

    root = _mini_semiseg(tmp_path, 5)
    out = tmp_path / "m.pt"
    card = train_mod.train(root, "unet", out, epochs=1, device="cpu", val_fraction=0.4, use_pseudo=False,
                           progress=False, batch_size=2)
    assert out.exists() and out.with_suffix(".json").exists()
    assert card["validation"]["images"] == 2 and 0 <= card["validation"]["dice"] <= 1
    assert card["recipe"]["steps"] == 2 and not card["interrupted"]
    assert load_model(out, "cpu").arch == "unet"

    calls = {"n": 0}
    real = train_mod.augment

    def interrupt_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "augment", interrupt_after_two)
    out2 = tmp_path / "interrupted.pt"
    card2 = train_mod.train(root, "unet", out2, epochs=50, device="cpu", val_fraction=0.4, use_pseudo=False,
                            progress=False, batch_size=2)
    assert card2["interrupted"] and card2["recipe"]["steps"] == 2
    assert load_model(out2, "cpu").card["interrupted"] is True
