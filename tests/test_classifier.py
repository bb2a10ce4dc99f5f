"""The screening classifier (issue 8): network, study pooling, Grad-CAM, CLIs, shipped weights."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ctscreen.cli import main as cli_main
from ctscreen.errors import ModelLoadError
from ctscreen.inference import classifier as C
from ctscreen.inference import train_classifier as T
from ctscreen.inference.models import model_path


def _tiny(head: str = "cosine", classes=C.CLASSES_BINARY) -> C.LoadedClassifier:
    torch.manual_seed(0)
    net = C.SliceClassifier(num_classes=len(classes), channels=(4, 8, 8), head=head, embed_dim=8).eval()
    return C.LoadedClassifier(name="tiny", version="t", classes=tuple(classes), net=net,
                              device=torch.device("cpu"), input_size=32)


def _phantom(n: int = 12, size: int = 64, lesion_slices=(), lesion_px: int = 0):
    """Air around a soft-tissue body with two air-filled 'lungs'; optional lesion squares."""
    hu = np.full((n, size, size), -1000, np.int16)
    hu[:, 8:56, 6:58] = 40
    lung = np.zeros(hu.shape, np.uint8)
    lung[2:n - 2, 14:50, 10:30] = 1
    lung[2:n - 2, 14:50, 34:54] = 2
    hu[lung > 0] = -850
    lesion = np.zeros(hu.shape, np.uint8)
    side = int(np.sqrt(lesion_px)) if lesion_px else 0
    for k in lesion_slices:
        lesion[k, 20:20 + side, 12:12 + side] = 1
        hu[k, 20:20 + side, 12:12 + side] = -500
    return hu, lung, lesion


def test_cosine_head_is_feature_normalised_and_linear_head_is_not():
    clf = _tiny("cosine")
    x = torch.rand(3, 1, 32, 32)
    logits = clf.net(x)
    assert logits.shape == (3, 2)
    s = clf.net.head.scale
    assert float(logits.detach().abs().max()) <= s + 1e-4  # s * cos <= s
    # scaling the embedding does not change cosine logits
    f = clf.net.embedding(clf.net.features(x))
    assert torch.allclose(clf.net.head(f), clf.net.head(5 * f), atol=1e-5)
    lin = _tiny("linear").net
    f2 = lin.embedding(lin.features(x))
    assert not torch.allclose(lin.head(f2), lin.head(5 * f2))
    with pytest.raises(ValueError):
        C.SliceClassifier(head="arcface")


def test_segmentation_encoder_transfers_into_the_classifier():
    unet = torch.load(model_path("unet"), map_location="cpu", weights_only=True)["state_dict"]
    net = C.SliceClassifier(num_classes=2)
    n = net.load_segmentation_encoder(unet)
    assert n >= 40
    w = net.state_dict()["enc.0.0.0.weight"]
    assert torch.equal(w, unet["enc.0.0.0.weight"].float())


def test_burden_probability_is_half_at_the_noise_floor_and_monotone():
    assert C.burden_pneumonia_probability(C.BURDEN_FLOOR_PERCENT) == pytest.approx(0.5)
    ps = [C.burden_pneumonia_probability(b) for b in (0.0, 0.01, 0.1, 1.0, 10.0)]
    assert all(a < b for a, b in zip(ps, ps[1:]))
    assert ps[0] < 0.01 and ps[-1] > 0.99


def test_study_probabilities_follow_the_lesion_burden_and_sum_to_one():
    clf = _tiny()
    hu, lung, empty = _phantom()
    s0 = C.study_probabilities(clf, hu, lung, empty, None)
    assert set(s0.probabilities) == set(C.STUDY_CLASSES)
    assert sum(s0.probabilities.values()) == pytest.approx(1.0)
    assert s0.verdict == "no_pneumonia" and s0.probabilities["no_pneumonia"] > 0.99
    hu, lung, lesion = _phantom(lesion_slices=(4, 5, 6), lesion_px=144)
    s1 = C.study_probabilities(clf, hu, lung, lesion, None)
    assert sum(s1.probabilities.values()) == pytest.approx(1.0)
    assert s1.probabilities["no_pneumonia"] < 0.05  # 432 of 11520 lung px = 3.75 %
    assert s1.pooling.startswith("lesion-area attention")
    assert set(s1.slice_scores) == {4, 5, 6} and set(s1.top_slices) <= {4, 5, 6}
    # pneumonia split = pooled slice P(COVID)
    p = C.slice_probabilities(clf, hu[[4, 5, 6]])[:, 0].mean()
    pneu = 1 - s1.probabilities["no_pneumonia"]
    assert s1.probabilities["covid19"] == pytest.approx(pneu * p, rel=1e-4)


def test_three_class_model_keeps_its_classes_and_agrees_with_the_burden():
    clf = _tiny(classes=("covid19", "influenza_a", "no_pneumonia"))
    hu, lung, lesion = _phantom(lesion_slices=(5,), lesion_px=400)
    s = C.study_probabilities(clf, hu, lung, lesion, None, focus=False)  # the whole-slice scores below
    assert sum(s.probabilities.values()) == pytest.approx(1.0)
    pooled = C.slice_probabilities(clf, hu[[5]])[0]
    assert s.probabilities["no_pneumonia"] == pytest.approx(0.5 * (pooled[2] + 1 - s.p_pneumonia_burden), abs=1e-4)
    ratio = s.probabilities["covid19"] / s.probabilities["other_pneumonia"]
    assert ratio == pytest.approx(pooled[0] / pooled[1], rel=1e-3)


def test_slice_choice_caps_the_work_and_prefers_lesion_slices():
    lung = np.zeros((150, 32, 32), np.uint8)
    lung[10:140, 4:28, 4:28] = 1
    lesion = np.zeros_like(lung)
    lesion[60:120, 8:16, 8:16] = 1
    idx = C.choose_slices(lung, lesion)
    assert len(idx) <= C.MAX_STUDY_SLICES and all(60 <= i < 120 for i in idx)
    idx0 = C.choose_slices(lung, np.zeros_like(lung))
    assert 0 < len(idx0) <= C.MAX_STUDY_SLICES and all(10 <= i < 140 for i in idx0)


def test_classifier_cam_is_a_unit_map_inside_the_thorax():
    clf = _tiny()
    hu, lung, lesion = _phantom(lesion_slices=(5,), lesion_px=100)
    cam = C.classifier_cam(clf, hu[5], lung[5] > 0)
    assert cam.shape == hu[5].shape and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    if cam.max() > 0:
        assert cam.max() == pytest.approx(1.0)
    assert not cam[:2].any()  # outside the thorax box and far from the lung
    assert all(p.requires_grad for p in clf.net.parameters())  # parameters restored


def test_metrics_auc_f1_and_bootstrap():
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.6, 0.2, 0.1])
    m = T.binary_metrics(y, p)
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)
    ci = T.bootstrap_ci(y, p, n_boot=200)
    assert ci["auc"][0] <= m["auc"] <= ci["auc"][1]
    assert T.roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def _write_images(root, n_per_class=4, size=48):
    rng = np.random.default_rng(0)
    for cls, bright in (("COVID", 170), ("NonCOVID", 60)):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n_per_class):
            img = np.clip(rng.normal(bright, 20, (size, size + 8 * i)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{cls}_{i}.png"), img)
    return root


def test_train_classifier_smoke_then_evaluate_json(tmp_path, capsys):
    data = _write_images(tmp_path / "data")
    (data / "NonCOVID" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "m.pt"
    rc = cli_main(["train-classifier", "--data", str(data), "--out", str(out), "--epochs", "1", "--size", "32",
                   "--batch-size", "4", "--device", "cpu", "--init", "none", "--head", "linear", "--quiet"])
    assert rc == 0 and out.exists()
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["head"] == "linear" and card["classes"] == ["covid19", "non_covid"]
    assert "Research use only" in out.with_suffix(".md").read_text()
    assert "broken.png" in capsys.readouterr().err  # named, skipped, training went on
    # no silent overwrite
    assert cli_main(["train-classifier", "--data", str(data), "--out", str(out), "--epochs", "1"]) == 2
    capsys.readouterr()
    rc = cli_main(["evaluate-classifier", "--covid", str(data / "COVID"), "--non-covid", str(data / "NonCOVID"),
                   "--model", str(out), "--device", "cpu", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 8 and {"accuracy", "f1", "auc", "ci95"} <= set(res)
    assert len(res["per_image"]) == 8 and {"file", "p_covid"} <= set(res["per_image"][0])
    clf = C.load_classifier(out, device="cpu")
    assert clf.input_size == 32 and clf.classes == C.CLASSES_BINARY


def test_train_classifier_three_classes_from_a_flat_folder(tmp_path):
    data = _write_images(tmp_path / "d", n_per_class=3)
    (data / "COVID").rename(data / "covid19")
    (data / "NonCOVID").rename(data / "normal")
    (data / "influenza_a").mkdir()
    for i in range(3):
        cv2.imwrite(str(data / "influenza_a" / f"f{i}.png"), np.full((40, 40), 110 + i, np.uint8))
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(2):
        cv2.imwrite(str(extra / f"e{i}.jpg"), np.full((40, 40), 180, np.uint8))
    # a binary model starts the three-way one: the encoder and embedding are copied, the head is new
    binary = C.SliceClassifier(num_classes=2)
    C.save_classifier(binary, C.CLASSES_BINARY, tmp_path / "bin.pt", {"version": "bin-1"})
    res = T.train_classifier(data, tmp_path / "three.pt", epochs=1, size=32, batch_size=4, device="cpu",
                             init=str(tmp_path / "bin.pt"), quiet=True, extra_covid=[extra])
    card = res["card"]
    assert card["classes"] == ["covid19", "influenza_a", "no_pneumonia"]
    assert "bin-1" in card["init_note"] and card["data"]["extra_covid_training"] == ["extra: 2 images"]
    # 3 covid19 images: 1 to validation, 2 + the 2 extra to training (extra images never validate)
    assert card["data"]["val_counts"]["covid19"] == 1 and card["data"]["train_counts"]["covid19"] == 4
    clf = C.load_classifier(tmp_path / "three.pt", device="cpu")
    p = C.slice_probabilities(clf, np.full((2, 40, 40), -800, np.int16))
    assert p.shape == (2, 3) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_shipped_classifier_loads_and_scores_hu_slices():
    try:
        clf = C.load_classifier(None, device="cpu")
    except ModelLoadError as exc:  # pragma: no cover - the weights are shipped
        pytest.fail(str(exc))
    assert clf.classes == C.CLASSES_BINARY and clf.card.get("validation", {}).get("auc", 0) > 0.8
    hu, lung, lesion = _phantom(n=6, size=96)
    p = C.slice_probabilities(clf, hu)
    assert p.shape == (6, 2) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert C.classifier_cam(clf, hu[3]).shape == (96, 96)


def test_missing_classifier_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="train-classifier"):
        C.load_classifier(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "ctscreen-model/1"}, bad)
    with pytest.raises(ModelLoadError, match="not a ctscreen classifier"):
        C.load_classifier(bad)


def test_extra_study_slices_take_the_labelled_infected_slices_and_train_as_non_covid(tmp_path):
    from conftest import synthetic_series

    infected = {2, 4}  # instance numbers labelled infected

    def pixels(k, rows, cols):  # stored = HU + 1024: body, two lungs, a lesion patch on infected slices
        hu = np.full((rows, cols), -1000, np.int16)
        hu[8:56, 6:58] = 40
        hu[14:50, 10:30] = -850
        hu[14:50, 34:54] = -850
        if k + 1 in infected:
            hu[20:30, 12:22] = -300
        return (hu + 1024).astype(np.uint16)

    s = synthetic_series(tmp_path, 6, name="cap9", rows=64, cols=64, pixels=pixels)
    rows = ["sop_instance_uid,instance_number,slice_location_mm,infection"]
    rows += [f"{u},{k + 1},0,{int(k + 1 in infected)}" for k, u in enumerate(s.sop_instance_uids)]
    (tmp_path / "cap9.labels.csv").write_text("\n".join(rows) + "\n")
    imgs, names, note = T.extra_study_slices(s.folder)
    assert len(imgs) == 2 and "2 of 2 slices labelled infected" in note
    lesion_grey = (-300 - (-1080)) / 1335
    assert all(np.isclose(im, lesion_grey, atol=0.01).sum() >= 50 for im in imgs)  # the app's HU window
    data = _write_images(tmp_path / "data")
    res = T.train_classifier(data, tmp_path / "m.pt", epochs=1, size=32, batch_size=4, device="cpu", init="none",
                             quiet=True, extra_studies=[("other_pneumonia", s.folder)], extra_repeat=2)
    card = res["card"]
    # binary model: the other-pneumonia study trains the non-COVID class (2 slices x 2), never validates
    assert card["data"]["val_counts"]["non_covid"] == 1 and card["data"]["train_counts"]["non_covid"] == 3 + 4
    assert "cap9: 2 of 2" in card["data"]["extra_study_training"][0]
    assert "training only" in (tmp_path / "m.md").read_text()
    with pytest.raises(T.DataError, match="influenza_a"):
        T.train_classifier(data, tmp_path / "m2.pt", epochs=1, size=32, device="cpu", init="none", quiet=True,
                           extra_studies=[("influenza_a", s.folder)])


def test_figure_augmentation_adds_paper_artefacts_seeded_and_in_range():
    img = np.tile(np.linspace(0.2, 0.8, 96, dtype=np.float32), (96, 1))
    a = [T.augment(img, 64, np.random.default_rng(s), figure=True) for s in range(40)]
    b = [T.augment(img, 64, np.random.default_rng(s), figure=True) for s in range(40)]
    plain = [T.augment(img, 64, np.random.default_rng(s)) for s in range(40)]
    assert all(x.shape == (64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # seeded
    assert sum(not np.allclose(x, y) for x, y in zip(a, plain)) >= 10  # artefacts on a good share
    rng = np.random.default_rng(0)
    marked = [T.figure_like(np.full((64, 64), 0.5, np.float32), rng) for _ in range(200)]
    # margins, bars and arrows put pure black/white pixels into a flat grey image
    assert sum(bool(((m <= 0.01) | (m >= 0.99)).any()) for m in marked) >= 40


def _member(path, seed: int, size_note: int = 32, classes=C.CLASSES_BINARY):
    torch.manual_seed(seed)
    net = C.SliceClassifier(num_classes=len(classes), channels=(4, 8, 8), embed_dim=8).eval()
    C.save_classifier(net, tuple(classes), path, {"version": f"m{seed}", "input_size": size_note,
                                                   "command": f"train seed {seed}", "data": {
                                                       "root": "d", "extra_study_training": [f"S{seed % 2}: x"]}})
    return net


def test_ensemble_averages_member_probabilities_and_its_cam_uses_every_member(tmp_path, capsys):
    data = _write_images(tmp_path / "val")
    nets = [_member(tmp_path / f"m{i}.pt", i) for i in range(3)]
    out = tmp_path / "ens.pt"
    rc = cli_main(["ensemble-classifier", *[str(tmp_path / f"m{i}.pt") for i in range(3)], "--out", str(out),
                   "--val", str(data)])
    assert rc == 0, capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert [m["version"] for m in card["members"]] == ["m0", "m1", "m2"]
    assert card["validation"]["n"] == 8 and len(card["base_model"]) == 3
    assert card["data"]["extra_study_training"] == ["S0: x", "S1: x"]
    assert card["validation_no_tta"]["n"] == 8 and "Without the flip" in out.with_suffix(".md").read_text()  # any member's training study counts
    assert "Research use only" in out.with_suffix(".md").read_text()
    clf = C.load_classifier(out, device="cpu")
    assert isinstance(clf.net, C.EnsembleClassifier) and clf.input_size == 32
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        want = torch.stack([torch.softmax(n(x), 1) for n in nets]).mean(0)
    got = C.predict_batches(clf, x.numpy())
    assert np.allclose(got, want.numpy(), atol=2e-3)  # float16 weights on disk
    hu, lung, _ = _phantom(n=1, size=64)
    assert len(C.cam_modules(clf.net)) == 3
    cam = C.classifier_cam(clf, hu[0], lung[0])
    assert cam.shape == (64, 64) and cam.max() == pytest.approx(1.0)
    # no silent overwrite; an ensemble is not a member; members must agree
    assert cli_main(["ensemble-classifier", str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt"), "--out", str(out)]) == 2
    assert cli_main(["ensemble-classifier", str(out), str(tmp_path / "m1.pt"), "--out", str(tmp_path / "e2.pt")]) == 2
    _member(tmp_path / "big.pt", 7, size_note=96)
    assert cli_main(["ensemble-classifier", str(tmp_path / "m0.pt"), str(tmp_path / "big.pt"),
                     "--out", str(tmp_path / "e3.pt")]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "already an ensemble" in err and "input sizes" in err
    # members of different input sizes: the ensemble takes the largest and resizes for the others
    n48 = _member(tmp_path / "m48.pt", 8, size_note=48)
    assert cli_main(["ensemble-classifier", str(tmp_path / "m0.pt"), str(tmp_path / "m48.pt"),
                     "--out", str(tmp_path / "mixed.pt")]) == 0
    mixed = C.load_classifier(tmp_path / "mixed.pt", device="cpu")
    assert mixed.input_size == 48
    x48 = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        x32 = torch.nn.functional.interpolate(x48, size=(32, 32), mode="bilinear", antialias=True)
        want = 0.5 * (torch.softmax(nets[0](x32), 1) + torch.softmax(n48(x48), 1))
    assert np.allclose(C.predict_batches(mixed, x48.numpy()), want.numpy(), atol=2e-3)
    assert C.classifier_cam(mixed, hu[0], lung[0]).shape == (64, 64)
    with pytest.raises(T.DataError, match="ensemble"):
        T.train_classifier(data, tmp_path / "ft.pt", epochs=1, size=32, batch_size=4, device="cpu",
                           init=str(out), quiet=True)


def test_ema_and_last_epoch_selection_are_recorded_and_keep_the_averaged_weights(tmp_path):
    data = _write_images(tmp_path / "data")
    res = T.train_classifier(data, tmp_path / "e.pt", epochs=2, size=32, batch_size=4, device="cpu",
                             init="none", quiet=True, val_fraction=0.25, ema=0.9, select="last")
    card = res["card"]
    assert "decay 0.9" in card["recipe"]["ema"] and card["recipe"]["best_epoch"] == 2
    assert card["recipe"]["selection"].startswith("last epoch")
    with pytest.raises(T.DataError, match="ema"):
        T.train_classifier(data, tmp_path / "x.pt", epochs=1, size=32, device="cpu", quiet=True, ema=1.5)


def test_study_level_flip_averaging_is_for_single_networks_only(tmp_path, monkeypatch):
    for i in range(2):
        _member(tmp_path / f"m{i}.pt", i)
    assert cli_main(["ensemble-classifier", str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt"),
                     "--out", str(tmp_path / "ens.pt")]) == 0
    seen = []
    real = C.predict_batches
    monkeypatch.setattr(C, "predict_batches", lambda clf, x, batch_size=16, tta=False: seen.append(tta) or
                        real(clf, x, batch_size, tta))
    hu, lung, lesion = _phantom(lesion_slices=(5, 6), lesion_px=64)
    for path in (tmp_path / "m0.pt", tmp_path / "ens.pt"):
        s = C.study_probabilities(C.load_classifier(path, device="cpu"), hu, lung, lesion)
        assert abs(sum(s.probabilities.values()) - 1.0) < 1e-6
    assert seen == [True, False]


def test_quarter_turn_augmentation_turns_samples_every_way_and_is_recorded(tmp_path):
    img = np.zeros((64, 64), np.float32)
    img[:8] = 1.0  # a bright band at the top: where it ends up tells the turn
    rng = np.random.default_rng(0)

    def side(o):
        return int(np.argmax([o[:4].mean(), o[:, -4:].mean(), o[-4:].mean(), o[:, :4].mean()]))

    assert {side(T.augment(img, 32, rng, quarter_turns=True)) for _ in range(40)} == {0, 1, 2, 3}
    assert {side(T.augment(img, 32, rng)) for _ in range(20)} == {0}  # off by default
    data = _write_images(tmp_path / "data")
    res = T.train_classifier(data, tmp_path / "q.pt", epochs=1, size=32, batch_size=4, device="cpu",
                             init="none", quiet=True, quarter_turns=True)
    assert "quarter turns" in res["card"]["augmentation"]


def test_lesion_crops_zoom_onto_the_segmented_lesion_and_are_recorded(tmp_path):
    img = np.zeros((96, 96), np.float32)
    img[10:22, 70:82] = 1.0  # a bright 'lesion' in the upper right
    mask = np.zeros((T.LESION_MASK_SIDE, T.LESION_MASK_SIDE), bool)
    mask[7:14, 47:54] = True  # the same place on the stored mask's grid
    rng = np.random.default_rng(0)
    zoomed = [T.augment(img, 32, rng, lesion=mask, lesion_crop=1.0).mean() for _ in range(30)]
    plain = [T.augment(img, 32, rng, lesion=mask, lesion_crop=0.0).mean() for _ in range(30)]
    assert np.mean(zoomed) > 2.5 * np.mean(plain)  # the lesion fills far more of a lesion crop
    y0, x0, ch, cw = T.focus_box(96, 96, mask, np.random.default_rng(1))
    assert 0.3 * 96 - 1 <= min(ch, cw) and max(ch, cw) <= 0.6 * 96 * 1.16 + 1
    assert y0 <= 16 <= y0 + ch and x0 <= 76 <= x0 + cw  # the crop holds the lesion
    y0, x0, ch, cw = T.focus_box(96, 96, np.zeros_like(mask), np.random.default_rng(2))  # lesion-free: still a zoom
    assert max(ch, cw) <= 0.6 * 96 * 1.16 + 1 and 0 <= y0 <= 96 - ch
    # masks come from the shipped segmentation, one per training image
    ms = T.lesion_masks([img, np.zeros((40, 50), np.float32)], "cpu")
    assert len(ms) == 2 and ms[0].shape == (T.LESION_MASK_SIDE,) * 2 and not ms[1].any()
    data = _write_images(tmp_path / "data")
    res = T.train_classifier(data, tmp_path / "l.pt", epochs=1, size=32, batch_size=4, device="cpu",
                             init="none", quiet=True, lesion_crops=0.5)
    assert res["card"]["lesion_crops"] == 0.5 and "lesion-centred zoom, p 0.5" in res["card"]["augmentation"]
    clf = C.load_classifier(tmp_path / "l.pt", device="cpu")
    assert C.learned_lesion_crops(clf)
    r = {v: T.evaluate_folders(clf, data / "COVID", data / "NonCOVID", view=v) for v in ("auto", "whole", "focus")}
    assert r["auto"]["view"] == C.IMAGE_VIEW == "both" and r["whole"]["view"] == "whole"  # both, for every model
    pw, pf, pb = ([q["p_covid"] for q in r[v]["per_image"]] for v in ("whole", "focus", "auto"))
    assert np.allclose(pb, 0.5 * (np.array(pw) + np.array(pf)), atol=2e-4)  # both = the mean of the two views
    with pytest.raises(T.DataError, match="view"):
        T.evaluate_folders(clf, data / "COVID", data / "NonCOVID", view="zoom")
    with pytest.raises(T.DataError, match="lesion-crops"):
        T.train_classifier(data, tmp_path / "x.pt", epochs=1, size=32, device="cpu", quiet=True, lesion_crops=2)


def test_study_scores_take_the_lesion_focus_view_of_lesion_slices(monkeypatch):
    hu, lung, lesion = _phantom(n=12, size=64, lesion_slices=(5, 6), lesion_px=36)
    fb = C.focus_box(lesion[5], (8, 56, 6, 58))
    assert fb is not None
    y0, y1, x0, x1 = fb
    assert y1 - y0 == x1 - x0 == round(C.FOCUS_SIDE * 48) == round(0.6 * 48)  # of the shorter box side
    assert y0 <= 23 <= y1 and x0 <= 15 <= x1 and 8 <= y0 and y1 <= 56 and 6 <= x0 and x1 <= 58
    assert C.focus_box(np.zeros((64, 64)), (8, 56, 6, 58)) is None
    x, keep = C.lesion_focus_inputs(hu[4:8], lesion[4:8], 32, (8, 56, 6, 58))
    assert keep == [1, 2] and x.shape == (2, 1, 32, 32)
    clf = _tiny()
    sizes = []
    real = C.predict_batches
    monkeypatch.setattr(C, "predict_batches", lambda c, x, batch_size=16, tta=False: sizes.append(len(x)) or
                        real(c, x, batch_size, tta))
    plain = C.study_probabilities(clf, hu, lung, lesion, tta=False, focus=False)
    assert "focus" not in plain.pooling and len(sizes) == 1
    focus = C.study_probabilities(clf, hu, lung, lesion, tta=False)  # the default, for every model
    assert sizes[0] == 2  # the two lesion slices
    assert "lesion-focus view on 2 slices" in focus.pooling and sizes[1:] == [2]  # zoomed views replace them
    assert abs(sum(focus.probabilities.values()) - 1.0) < 1e-6
    assert focus.slice_scores != plain.slice_scores
    _, _, clean = _phantom(n=12, size=64)
    sizes.clear()
    none = C.study_probabilities(clf, hu, lung, clean, tta=False)  # no lesion: whole slices as before
    assert "focus" not in none.pooling and len(sizes) == 1 and sizes[0] == len(none.slice_scores) > 0
    # an ensemble counts as trained on lesion crops (images scored by both views) only when every member was
    clf.card = {"members": [{"lesion_crops": 0.5}, {"lesion_crops": 0.0}]}
    assert not C.learned_lesion_crops(clf)
    clf.card = {"members": [{"lesion_crops": 0.5}, {"lesion_crops": 0.3}]}
    assert C.learned_lesion_crops(clf)


def test_classifier_cam_of_a_lesion_slice_shows_the_view_the_score_used():
    hu, lung, lesion = _phantom(n=12, size=64, lesion_slices=(5,), lesion_px=36)
    clf = _tiny()
    whole = C.classifier_cam(clf, hu[5])  # no lesion mask given: the whole thorax crop
    focus = C.classifier_cam(clf, hu[5], lesion_slice=lesion[5])
    y0, y1, x0, x1 = C.focus_box(lesion[5], C.thorax_box(hu[5]))
    outside = np.ones(focus.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert focus.max() == pytest.approx(1.0) and not focus[outside].any()  # only inside the lesion view
    assert whole[outside].any()
    assert np.array_equal(C.classifier_cam(clf, hu[5]), C.classifier_cam(clf, hu[5], lesion_slice=np.zeros_like(lesion[5])))
