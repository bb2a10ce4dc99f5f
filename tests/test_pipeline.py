"""The analysis generator on a small synthetic chest with a random-initialised model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ctscreen.errors import Cancelled, NotAnalysable
from ctscreen.imaging.result import AnalysisResult
from ctscreen.imaging.volume import Volume
from ctscreen.inference import pipeline, segment
from ctscreen.inference.models import load_model, save_model
from ctscreen.inference.nets import UNet
from ctscreen.inference.pipeline import AnalyzeOptions, Progress, analyze, cam_slice_indices, run_analysis

NZ = 6


def synthetic_volume(nz: int = NZ, n: int = 96, **kw) -> Volume:
    """Air, an elliptic body (40 HU), two lungs (-850 HU) and a denser patch in the right lung."""
    yy, xx = np.mgrid[:n, :n]
    hu = np.full((nz, n, n), -1000, np.int16)
    hu[:, ((yy - n / 2) / (0.42 * n)) ** 2 + ((xx - n / 2) / (0.46 * n)) ** 2 < 1] = 40
    for cx in (0.3 * n, 0.7 * n):
        hu[:, ((yy - n / 2) / (0.28 * n)) ** 2 + ((xx - cx) / (0.15 * n)) ** 2 < 1] = -850
    hu[2:4, int(0.45 * n):int(0.55 * n), int(0.25 * n):int(0.33 * n)] = -300
    return Volume(hu=hu, spacing_mm=(5.0, 3.0, 3.0), z_mm=tuple(5.0 * k for k in range(nz)),
                  sop_instance_uids=tuple(f"1.2.826.0.1.3.{k}" for k in range(nz)),
                  instance_numbers=tuple(range(1, nz + 1)), series_instance_uid="1.2.826.0.1.3",
                  series_description="synthetic chest", **kw)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 16))
    with torch.no_grad():  # make "lesion" win somewhere so Grad-CAM has lesion slices to explain
        net.head.bias.copy_(torch.tensor([0.0, 0.05, -2.0]))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(net, "unet", path, {"version": "test-1", "input_size": 64})
    return str(path)


def _drain(gen):
    ticks = []
    while True:
        try:
            ticks.append(next(gen))
        except StopIteration as stop:
            return ticks, stop.value


@pytest.mark.parametrize("fused", [True, False], ids=["cam-in-segmentation-pass", "cam-own-pass"])
def test_analyze_yields_increasing_progress_and_an_immutable_result(model_file, monkeypatch, fused):
    if not fused:  # the path a GPU takes: Grad-CAM as a stage of its own
        monkeypatch.setattr(pipeline, "FUSED_CAM_DEVICES", ())
    vol = synthetic_volume()
    ticks, result = _drain(analyze(vol, AnalyzeOptions(model=model_file, device="cpu", batch_size=4, cam="all")))
    assert isinstance(result, AnalysisResult)
    assert ticks and all(isinstance(p, Progress) for p in ticks)
    fractions = [p.fraction for p in ticks]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    stages = ("model", "lung_mask", "segmentation") + (() if fused else ("gradcam",)) + ("measurements", "screening")
    assert [s for i, s in enumerate(p.stage for p in ticks) if i == 0 or ticks[i - 1].stage != s] == list(stages)
    for stage in stages:
        done = [p.done for p in ticks if p.stage == stage]
        assert done and done == sorted(done), stage
    seg = [p for p in ticks if p.stage == "segmentation"]
    assert (seg[-1].done, seg[-1].total) == (NZ, NZ)
    assert all(p.eta_s is None or p.eta_s >= 0 for p in ticks)
    assert all(p.eta_s is not None for p in seg[1:])  # measured rates give an ETA once a batch is done

    assert result.lung.shape == result.lesion.shape == result.lesion_prob.shape == vol.shape
    assert result.lung.dtype == np.uint8 and result.lesion.dtype == np.uint8
    assert result.lesion_prob.dtype == np.float16
    assert set(np.unique(result.lesion)) <= {0, 1, 2}
    assert not result.lesion[result.lung == 0].any()  # constrained to the lung
    assert 0 <= float(result.lesion_prob.min()) and float(result.lesion_prob.max()) <= 1.001
    # labels follow the validated rule: lesion where P(GGO) + P(consolidation) >= 0.5, inside the lung
    prob = result.lesion_prob.astype(np.float32)
    inside = result.lung > 0
    mismatch = (result.lesion > 0) != (prob >= 0.5)
    assert not (mismatch & inside & (np.abs(prob - 0.5) > 1e-3)).any()  # float16 rounding aside
    with pytest.raises(ValueError):
        result.lesion[0, 0, 0] = 1  # read-only
    assert result.model_name == "tiny" and result.model_version == "test-1"
    assert result.device.startswith("cpu")
    assert set(result.timings_s) == {"model", "lung_mask", "segmentation", "gradcam", "measurements", "screening"}

    assert sorted(result.cam) == list(range(NZ))  # cam="all"
    for k, m in result.cam.items():
        assert m.shape == vol.shape[1:] and m.dtype == np.float16  # stored as float16 (half the memory)
        assert 0.0 <= m.min() and m.max() <= 1.0
        assert 0.0 <= result.cam_outside_fraction[k] <= 1.0
    assert result.cam_layer == "decoder1"  # the full-resolution stage, the default since issue 9
    assert result.cam_method == "seg-hirescam"
    y0, y1, x0, x1 = result.thorax_box
    assert 0 <= y0 < y1 <= vol.shape[1] and 0 <= x0 < x1 <= vol.shape[2]


def test_cam_lesions_only_and_layer_choice(model_file):
    vol = synthetic_volume()
    result = run_analysis(vol, AnalyzeOptions(model=model_file, device="cpu", cam="lesions", cam_layer="decoder1"))
    assert result.cam_layer == "decoder1"
    assert sorted(result.cam) == cam_slice_indices(result.lesion, "lesions")
    none = run_analysis(vol, AnalyzeOptions(model=model_file, device="cpu", cam="none"))
    assert none.cam == {} and "gradcam" not in none.timings_s
    # On the CPU the segmentation pass doubles as the Grad-CAM pass: it must segment exactly as
    # segment.segment_labels does (cam="none" uses segment_labels itself) ...
    np.testing.assert_array_equal(none.lesion, result.lesion)
    np.testing.assert_allclose(none.lesion_prob.astype(np.float32), result.lesion_prob.astype(np.float32),
                               atol=2e-3)
    # ... and explain exactly as gradcam_batch does.
    from ctscreen.inference.gradcam import gradcam_batch
    from ctscreen.inference.models import load_model

    ks = sorted(result.cam)
    maps, outside = gradcam_batch(load_model(model_file, "cpu"), vol.hu[ks], result.thorax_box, result.lung[ks],
                                  "decoder1", region=result.lesion[ks])
    assert all(result.cam[k].dtype == np.float16 for k in ks)  # stored as float16: steps of <= 4.9e-4 in [0, 1]
    np.testing.assert_allclose(np.stack([result.cam[k] for k in ks]).astype(np.float32), maps, atol=5e-4)
    np.testing.assert_allclose([result.cam_outside_fraction[k] for k in ks], outside, atol=1e-4)


def test_cancel_raises_and_returns_nothing(model_file):
    cancel = threading.Event()
    gen = analyze(synthetic_volume(), AnalyzeOptions(model=model_file, device="cpu", batch_size=1, cancel=cancel))
    seen = []
    with pytest.raises(Cancelled):
        for p in gen:
            seen.append(p)
            if p.stage == "segmentation" and p.done == 2:
                cancel.set()
    assert seen[-1].stage == "segmentation" and seen[-1].done == 2  # stopped at the next batch boundary
    with pytest.raises(StopIteration):
        next(gen)  # the generator is finished: no result object exists


def test_gpu_out_of_memory_halves_the_batch_then_falls_back_to_cpu(model_file, monkeypatch):
    model = load_model(model_file, device="cpu")
    model.device = torch.device("cuda")  # pretend; the fake below fails on any "GPU" batch
    real = segment.segment_labels
    tried: list[tuple[str, int]] = []

    def fake_segment_labels(m, hu_slices, box, tta=True):
        tried.append((m.device.type, len(hu_slices)))
        if m.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(m, hu_slices, box, tta=tta)

    monkeypatch.setattr(segment, "segment_labels", fake_segment_labels)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    result = run_analysis(synthetic_volume(), AnalyzeOptions(model=model, batch_size=4, cam="none"))
    assert tried[:4] == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 4)]
    assert result.device.startswith("cpu")
    assert any("ran out of memory" in w and "CPU" in w for w in result.warnings)


def test_other_errors_are_not_mistaken_for_out_of_memory(model_file, monkeypatch):
    def broken(m, hu_slices, box, tta=True):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(segment, "segment_labels", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_analysis(synthetic_volume(), AnalyzeOptions(model=model_file, device="cpu", cam="none"))


def test_not_analysable_volume_is_refused_before_any_work(model_file):
    vol = synthetic_volume(modality="MR", not_analysable_reason="modality MR is not CT")
    gen = analyze(vol, AnalyzeOptions(model=model_file, device="cpu"))
    with pytest.raises(NotAnalysable, match="synthetic chest.*modality MR is not CT"):
        next(gen)


def test_unknown_cam_layer_is_refused_before_the_segmentation(model_file):
    gen = analyze(synthetic_volume(), AnalyzeOptions(model=model_file, device="cpu", cam_layer="nope"))
    stages = []
    with pytest.raises(ValueError, match="unknown Grad-CAM layer 'nope'"):
        for p in gen:
            stages.append(p.stage)
    assert "segmentation" not in stages


def test_options_are_validated():
    with pytest.raises(ValueError):
        AnalyzeOptions(cam="some")
    with pytest.raises(ValueError):
        AnalyzeOptions(batch_size=0)


def test_slices_without_lung_skip_the_network(model_file, monkeypatch):
    vol = synthetic_volume(nz=NZ)
    hu = vol.hu.copy()
    hu[-1][hu[-1] == -850] = 40  # last slice: body without lungs (upper abdomen)
    vol = Volume(**{**vol.__dict__, "hu": hu})
    seen: list[int] = []
    real = segment.segment_labels

    def counting(m, hu_slices, box, tta=True):
        seen.append(len(hu_slices))
        return real(m, hu_slices, box, tta=tta)

    monkeypatch.setattr(segment, "segment_labels", counting)
    result = run_analysis(vol, AnalyzeOptions(model=model_file, device="cpu", cam="none"))
    assert not result.lung[-1].any() and result.lung[:-1].any()
    assert sum(seen) == NZ - 1
    assert not result.lesion_prob[-1].any() and not result.lesion[-1].any()
