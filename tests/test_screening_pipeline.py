"""The pipeline's "screening" stage: the RSNA category always, the classifier's probabilities when it loads."""

from __future__ import annotations

import pytest
import torch

from ctscreen.imaging.screening import Screening
from ctscreen.inference.models import save_model
from ctscreen.inference.nets import UNet
from ctscreen.inference.pipeline import AnalyzeOptions, run_analysis

from test_pipeline import synthetic_volume


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 16))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 0.05, -2.0]))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(net, "unet", path, {"version": "test-1", "input_size": 64})
    return str(path)


def test_screening_stage_without_classifier(tiny_model):
    ticks = []
    res = run_analysis(synthetic_volume(), AnalyzeOptions(model=tiny_model, device="cpu", cam="none",
                                                          classifier="none"), on_progress=ticks.append)
    s = res.screening
    assert isinstance(s, Screening)
    assert s.category in ("typical", "indeterminate", "atypical", "negative")
    assert s.probabilities == {} and s.verdict == ""
    assert "screening" in res.timings_s
    assert ticks[-1].stage == "screening" and ticks[-1].fraction == pytest.approx(1.0)
    # the stage measured the masks the result holds
    burden = s.criterion("burden")
    assert burden.value == pytest.approx(res.measurements.percent_involved)
    assert not any("classifier" in w for w in res.warnings)


def test_missing_classifier_leaves_a_warning_and_the_category(tiny_model, tmp_path):
    missing = tmp_path / "no-such-classifier.pt"
    res = run_analysis(synthetic_volume(), AnalyzeOptions(model=tiny_model, device="cpu", cam="none",
                                                          classifier=str(missing)))
    assert isinstance(res.screening, Screening) and res.screening.probabilities == {}
    notes = [w for w in res.warnings if "No classifier probabilities" in w]
    assert len(notes) == 1 and "no-such-classifier.pt" in notes[0]


def test_rules_failure_does_not_lose_the_analysis(tiny_model, monkeypatch):
    import ctscreen.imaging.screening as screening

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(screening, "assess", broken)
    res = run_analysis(synthetic_volume(), AnalyzeOptions(model=tiny_model, device="cpu", cam="none",
                                                          classifier="none"))
    assert res.screening is None and res.measurements is not None
    assert any("screening category could not be computed" in w for w in res.warnings)


def test_shipped_classifier_probabilities(tiny_model):
    clf_module = pytest.importorskip("ctscreen.inference.classifier")
    try:
        clf = clf_module.load_classifier(None, device="cpu")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no shipped classifier yet: {exc}")
    res = run_analysis(synthetic_volume(), AnalyzeOptions(model=tiny_model, device="cpu", cam="none",
                                                          classifier=clf))
    s = res.screening
    assert set(s.probabilities) == {"covid19", "other_pneumonia", "no_pneumonia"}
    assert sum(s.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert s.verdict == max(s.probabilities, key=s.probabilities.get)
    assert s.model_name == clf.name and s.model_version == clf.version
    assert s.classifier_scoring.startswith(("lesion-area attention", "top-"))  # the protocol, in the report
    assert s.to_dict()["classifier_scoring"] == s.classifier_scoring
    assert all(0 <= k < res.volume.shape[0] for k in s.top_slices)
    assert "classifier:" in s.one_line()
