"""The lesion analysis as one generator: load, lung mask, segmentation, Grad-CAM, measurements.

Research use, not for diagnosis.

:func:`analyze` yields :class:`Progress` objects and *returns* an immutable
:class:`~ctscreen.imaging.result.AnalysisResult` (``StopIteration.value``). The
CLI drives it with a terminal progress bar (:func:`run_analysis` is the
shortcut), the viewer's worker with a QThread; both can cancel it through
``AnalyzeOptions.cancel`` (checked between batches), which raises
:class:`~ctscreen.errors.Cancelled` and produces no result at all.

On a GPU that runs out of memory the batch is halved and retried, down to one
slice; if even that fails the model moves to the CPU and the run goes on there,
with a warning on the result.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterable

import numpy as np

from ctscreen.errors import Cancelled, NotAnalysable
from ctscreen.imaging.measurements import measure_volume
from ctscreen.imaging.result import AnalysisResult
from ctscreen.imaging.volume import Volume
from ctscreen.inference.device import describe_device, free_accelerator_memory, is_out_of_memory

CAM_CHOICES = ("none", "lesions", "all")

#: Device types on which the segmentation's plain forward pass is reused for Grad-CAM.
FUSED_CAM_DEVICES = ("cpu",)

#: Rough share of the run each stage takes on a CPU (P001, 148 slices); only shapes the progress bar and ETA.
STAGE_WEIGHTS = {
    "load": 0.10,
    "model": 0.01,
    "lung_mask": 0.08,
    "segmentation": 0.55,
    "gradcam": 0.22,
    "measurements": 0.04,
    "screening": 0.04,
}

#: Stage names as shown to the user.
STAGE_LABELS = {
    "load": "loading series",
    "model": "loading model",
    "lung_mask": "lung mask",
    "segmentation": "segmentation",
    "gradcam": "Grad-CAM",
    "measurements": "measurements",
    "screening": "screening verdict",
}


@dataclass(frozen=True)
class Progress:
    """One progress tick of :func:`analyze`.

    Attributes
    ----------
    stage : str
        One of :data:`STAGE_WEIGHTS` (``load``, ``model``, ``lung_mask``, ``segmentation``,
        ``gradcam``, ``measurements``).
    done, total : int
        Work units of this stage (slices, or percent where a stage has no natural unit).
    eta_s : float or None
        Estimated seconds until the whole analysis is done (None until it can be estimated).
    message : str
        A short line for the user.
    fraction : float
        Overall fraction of the analysis done, in [0, 1]; never decreases during one run.
    """

    stage: str
    done: int
    total: int
    eta_s: float | None = None
    message: str = ""
    fraction: float = 0.0


@dataclass(frozen=True)
class AnalyzeOptions:
    """What :func:`analyze` should do.

    Attributes
    ----------
    model : str, path, LoadedModel or None
        ``"unet"``, ``"deeplab"``, a weights file, an already loaded model, or None
        for the shipped default.
    device : str
        ``auto|cpu|cuda|mps``; used when the model is loaded here (an already
        loaded model keeps its device).
    batch_size : int
        Slices per forward pass (halved automatically on GPU out-of-memory).
    cam : str
        Grad-CAM for ``"none"``, the ``"lesions"`` slices (any lesion voxel) or ``"all"`` slices.
    cam_layer : str or None
        Network layer for Grad-CAM (a key of ``model.cam_layers()``); None = the model's default.
    cam_method : str or None
        How the maps are made (a key of ``gradcam.CAM_METHODS``: ``seg-hirescam``, ``seg-gradcam``,
        ...); None = the shipped default (``camlayers.DEFAULT_CAM_METHOD``).
    tta : bool or int
        Test-time augmentation in the segmentation (True: the model's default number of
        flipped views for the device, or 1, 2, 4 views; see ``segment.tta_views``).
    classifier : str, path, LoadedClassifier or None
        The learned screening classifier (:mod:`ctscreen.inference.classifier`): None or ``""``
        for the shipped default, ``"none"`` for the RSNA category alone, a name, a weights file or
        an already loaded one. A classifier that cannot be loaded leaves a warning, not an error.
    cleanup : bool
        Remove tiny, z-isolated and rim-only lesion components in 3-D
        (:func:`ctscreen.imaging.postprocess.clean_lesions`). Off by default: on P001, cap001 and
        normal001 it changed the slice-level AUC by at most 0.001 and the normal study's false
        lesion volume from 0.111 % to 0.109 % of the lung (model card).
    cancel : threading.Event or None
        Set it to stop the analysis at the next batch boundary.
    """

    model: Any = None
    device: str = "auto"
    batch_size: int = 8
    cam: str = "lesions"
    cam_layer: str | None = None
    cam_method: str | None = None
    tta: bool | int = True
    cleanup: bool = False
    classifier: Any = None
    cancel: threading.Event | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.cam not in CAM_CHOICES:
            raise ValueError(f"cam must be one of {CAM_CHOICES}, not {self.cam!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.cam_method:
            from ctscreen.inference.camlayers import CAM_METHOD_NAMES, unknown_method_message

            if self.cam_method not in CAM_METHOD_NAMES:
                raise ValueError(unknown_method_message(self.cam_method))


class _Tracker:
    """Turns per-stage progress into overall fraction and ETA; checks the cancel flag."""

    def __init__(self, stages: Iterable[str], cancel: threading.Event | None):
        stages = list(stages)
        total = sum(STAGE_WEIGHTS[s] for s in stages)
        self.weights = {s: STAGE_WEIGHTS[s] / total for s in stages}
        self.base: dict[str, float] = {}
        acc = 0.0
        for s in stages:
            self.base[s] = acc
            acc += self.weights[s]
        self.cancel = cancel
        self.t0 = time.perf_counter()
        self.fraction = 0.0

    def merge(self, stage: str, into: str) -> None:
        """Fold ``stage``'s share into the stage just before it (work done together)."""
        if stage not in self.weights:
            return
        self.weights[into] += self.weights.pop(stage)
        del self.base[stage]

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("analysis cancelled by the user; nothing was saved")

    def tick(self, stage: str, done: int, total: int, message: str = "", eta_s: float | None = None) -> Progress:
        """A :class:`Progress`; ``eta_s`` from the caller's measured rates, else from elapsed time and weights."""
        part = (done / total) if total else 1.0
        self.fraction = max(self.fraction, min(1.0, self.base[stage] + self.weights[stage] * part))
        elapsed = time.perf_counter() - self.t0
        eta = eta_s
        if eta is None and self.fraction >= 0.05 and elapsed > 0.5:
            eta = elapsed * (1.0 - self.fraction) / self.fraction
        label = STAGE_LABELS.get(stage, stage)
        return Progress(stage, int(done), int(total), eta, message or f"{label} {done}/{total}", self.fraction)


def _relay_fraction_generator(gen: Generator[Any, None, Any], tracker: _Tracker, stage: str
                              ) -> Generator[Progress, None, Any]:
    """Relay a generator that yields fractions (0..1) or progress-like objects as :class:`Progress`."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            tracker.check_cancel()
            done, total, msg = _as_done_total(item)
            if not msg and total == 100:
                msg = f"{STAGE_LABELS.get(stage, stage)} {done}%"
            yield tracker.tick(stage, done, total, msg)
    finally:
        gen.close()


def _as_done_total(item: Any) -> tuple[int, int, str]:
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return int(round(100 * float(item))), 100, ""
    done = getattr(item, "done", None)
    total = getattr(item, "total", None)
    if done is not None and total:
        return int(done), int(total), str(getattr(item, "message", "") or "")
    frac = getattr(item, "fraction", None)
    if frac is not None:
        return int(round(100 * float(frac))), 100, str(getattr(item, "message", "") or "")
    return 0, 100, ""


def _is_loaded_model(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "net") and hasattr(obj, "prepare")


def _freeze(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class _Runner:
    """Holds the model across stages so an out-of-memory fall back to the CPU sticks."""

    def __init__(self, model: Any, tracker: _Tracker, warnings: list[str]):
        self.model = model
        self.tracker = tracker
        self.warnings = warnings

    def batched(self, stage: str, indices: list[int], batch_size: int,
                fn: Callable[[Any, list[int]], Any], sink: Callable[[list[int], Any], None],
                eta: Callable[[int, int, float], float] | None = None) -> Generator[Progress, None, None]:
        """Run ``fn(model, batch_indices)`` over ``indices`` in batches; ``sink`` stores each output.

        ``eta(done, total, seconds_so_far)`` estimates the seconds left for the whole analysis.
        """
        n = len(indices)
        bs = max(1, int(batch_size))
        start = 0
        t0 = time.perf_counter()
        while start < n:
            self.tracker.check_cancel()
            batch = indices[start:start + bs]
            try:
                out = fn(self.model, batch)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc) or self.model.device.type == "cpu":
                    raise
                del exc
                free_accelerator_memory(self.model.device)
                if bs > 1:
                    bs = max(1, bs // 2)
                    continue
                old = describe_device(self.model.device)
                self.model = self.model.to("cpu")
                self.warnings.append(
                    f"The GPU ({old}) ran out of memory even with one slice at a time during {STAGE_LABELS[stage]}; "
                    "the analysis went on on the CPU, which is slower. Close other GPU programs or use --device cpu.")
                bs = max(1, int(batch_size))
                continue
            sink(batch, out)
            start += len(batch)
            left = eta(start, n, time.perf_counter() - t0) if eta is not None else None
            yield self.tracker.tick(stage, start, n, eta_s=left)


def _load_volume(source: Any, tracker: _Tracker) -> Generator[Progress, None, Volume]:
    from ctscreen.io.dicom import iter_load_series

    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return (yield from _relay_fraction_generator(iter_load_series(source, cancel=tracker.cancel), tracker, "load"))


def _load_model(options: AnalyzeOptions) -> Any:
    if _is_loaded_model(options.model):
        return options.model
    from ctscreen.inference.models import load_model

    model = options.model
    return load_model(os.fspath(model) if isinstance(model, os.PathLike) else model, device=options.device)


def _series_name(volume: Volume) -> str:
    return volume.series_description or volume.series_instance_uid or "the series"




def _segment_and_explain(model: Any, hu_slices: np.ndarray, lung_slices: np.ndarray, box: tuple[int, ...],
                         options: AnalyzeOptions, views: int, cam_layer: str, cam_method: str,
                         constrain: Callable[[np.ndarray, list[int]], np.ndarray], idx: list[int],
                         store_cam: Callable[[list[int], np.ndarray, np.ndarray], None],
                         cam_s: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation with TTA whose plain view is recorded for Grad-CAM, then the maps it needs.

    Gives the labels and lesion probability :func:`segment.segment_labels` gives (the same
    views, averaged the same way; ``tests/test_pipeline.py`` checks it) and saves one
    forward pass per Grad-CAM slice.
    """
    import torch

    from ctscreen.inference import segment
    from ctscreen.inference.gradcam import recorded_forward

    flips = segment.TTA_FLIPS[views]  # the segment module's TTA views; the first is the plain slice
    assert flips[0] == (), "the first TTA view must be the unflipped slice"
    x = segment.prepare_input(model, hu_slices, box)
    rec = recorded_forward(model, x, cam_layer)
    with torch.inference_mode():
        p = torch.softmax(rec.logits.detach().float(), dim=1)
        for dims in flips[1:]:
            pi = torch.softmax(model.net(torch.flip(x, dims=list(dims))).float(), dim=1)
            p = p + torch.flip(pi, dims=list(dims))
        p = p / len(flips)
    labels, prob = segment.labels_on_device(p, box, hu_slices.shape[-2:])
    labels = constrain(labels, idx)
    rows = [j for j in range(len(idx)) if options.cam == "all" or labels[j].any()]
    if rows:
        from ctscreen.inference.gradcam import CAM_METHODS

        kind, restrict = CAM_METHODS[cam_method]
        t = time.perf_counter()
        maps, outside = rec.maps(rec.region_weights(labels, box, restrict), box, hu_slices.shape[-2:], lung_slices,
                                 rows, kind=kind)
        store_cam([idx[j] for j in rows], maps, outside)
        cam_s[0] += time.perf_counter() - t
    return labels, prob


_CLASSIFIERS: dict[tuple[str, str], Any] = {}
_CLASSIFIERS_LOCK = threading.Lock()


def _cached_classifier(name: str, device: Any) -> Any:
    """The loaded classifier for ``(name, device)``, loaded once per process (batches reuse it)."""
    from ctscreen.inference.classifier import load_classifier

    key = (name, str(device))
    with _CLASSIFIERS_LOCK:
        clf = _CLASSIFIERS.get(key)
        if clf is None:
            clf = _CLASSIFIERS[key] = load_classifier(name or None, device=device)
    return clf


def _screening(volume: Volume, lung: np.ndarray, lesion: np.ndarray, measurements: Any, box: tuple[int, ...],
               classifier: Any, device: Any, warnings: list[str]) -> Any:
    """The screening verdict: the RSNA category (rules on the masks) and, when a classifier loads, its probabilities.

    Neither part stops the analysis: a failure leaves a warning and what could be computed.
    """
    from ctscreen.imaging.screening import assess, with_classifier

    try:
        screening = assess(volume.hu, lung, lesion, volume.spacing_mm, volume.direction, measurements)
    except Exception as exc:  # noqa: BLE001 - the lesion analysis stands without the verdict
        warnings.append(f"The screening category could not be computed ({type(exc).__name__}: {exc}); "
                        "the lesion measurements are complete.")
        return None
    if isinstance(classifier, str) and classifier.strip().lower() == "none":
        return screening
    try:
        from ctscreen.inference import classifier as clf_module
    except ImportError as exc:
        warnings.append(f"No classifier probabilities: the classifier module is not installed ({exc}); "
                        "the screening verdict has the RSNA category only.")
        return screening
    try:
        if classifier is not None and hasattr(classifier, "net") and hasattr(classifier, "classes"):
            clf = classifier
        else:
            clf = _cached_classifier(os.fspath(classifier) if classifier else "", device)
        score = clf_module.study_probabilities(clf, volume, lung, lesion, measurements,
                                               box=tuple(box) if len(box) == 4 else None)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError (no weights) and anything else: rules only
        msg = " ".join(str(exc).split())
        warnings.append(f"No classifier probabilities ({msg}); the screening verdict has the RSNA category only.")
        return screening
    return with_classifier(screening, score.probabilities, score.top_slices, score.model_name, score.model_version,
                           scoring=score.pooling)


def cam_slice_indices(lesion: np.ndarray, which: str) -> list[int]:
    """Slices that get a Grad-CAM map for ``which`` in :data:`CAM_CHOICES`."""
    if which == "none":
        return []
    if which == "all":
        return list(range(lesion.shape[0]))
    return [int(k) for k in np.flatnonzero(lesion.reshape(lesion.shape[0], -1).any(axis=1))]


def analyze(source: Volume | str | os.PathLike | Any, options: AnalyzeOptions | None = None
            ) -> Generator[Progress, None, AnalysisResult]:
    """Analyse one CT series for COVID-19 pneumonia lesions.

    Parameters
    ----------
    source : Volume, path or SeriesInfo
        A loaded volume, or what :func:`ctscreen.io.dicom.load_series` accepts.
    options : AnalyzeOptions, optional

    Yields
    ------
    Progress
        After every batch; ``fraction`` never decreases.

    Returns
    -------
    AnalysisResult
        Immutable (arrays are read-only). ``timings_s`` has one entry per stage that ran.
        Slices without lung are not run through the network (lesions are kept only inside
        the lung): their ``lesion`` and ``lesion_prob`` are 0.

    Raises
    ------
    NotAnalysable
        The series cannot be analysed (``Volume.not_analysable_reason``).
    Cancelled
        ``options.cancel`` was set; no result is produced.
    ModelLoadError, DeviceUnavailable
        The model or the device cannot be used.
    """
    options = options or AnalyzeOptions()
    needs_load = not isinstance(source, Volume)
    stages = (["load"] if needs_load else []) + ["model", "lung_mask", "segmentation"]
    if options.cam != "none":
        stages.append("gradcam")
    stages.append("measurements")
    stages.append("screening")
    tracker = _Tracker(stages, options.cancel)
    timings: dict[str, float] = {}
    warnings: list[str] = []

    t = time.perf_counter()
    if needs_load:
        volume = yield from _load_volume(source, tracker)
        timings["load"] = time.perf_counter() - t
    else:
        volume = source
    if volume.not_analysable_reason:
        raise NotAnalysable(f"{_series_name(volume)} cannot be analysed: {volume.not_analysable_reason}")
    hu = np.asarray(volume.hu)
    if hu.ndim != 3 or hu.shape[0] < 1 or min(hu.shape[1:]) < 16:
        raise NotAnalysable(f"{_series_name(volume)} cannot be analysed: a (z, y, x) CT volume is needed, "
                            f"got shape {hu.shape}")
    tracker.check_cancel()

    t = time.perf_counter()
    yield tracker.tick("model", 0, 1, "loading model")
    model = _load_model(options)
    timings["model"] = time.perf_counter() - t
    if options.cam != "none" and options.cam_layer:
        from ctscreen.inference.gradcam import resolve_layer

        resolve_layer(model, options.cam_layer)  # an unknown layer fails now, not after the segmentation
    yield tracker.tick("model", 1, 1, f"model {getattr(model, 'name', '?')} on {model.device}")

    t = time.perf_counter()
    from ctscreen.imaging import lungmask

    lung = yield from _relay_fraction_generator(lungmask.iter_lung_mask(volume), tracker, "lung_mask")
    lung = np.asarray(lung, dtype=np.uint8)
    timings["lung_mask"] = time.perf_counter() - t
    if not lung.any():
        warnings.append("No lung was found in this series, so no lesion can be reported; "
                        "check that it is a chest CT that covers the lungs.")

    # segment_labels is looked up at call time so tests can stand in a fake one
    from ctscreen.inference import gradcam, segment
    from ctscreen.inference.segment import thorax_box, tta_views

    views = tta_views(options.tta, model.device)
    cam_layer = (options.cam_layer or gradcam.default_layer(model)) if options.cam != "none" else ""
    cam_method = gradcam.check_method(options.cam_method) if options.cam != "none" else ""
    # On the CPU the segmentation's plain view doubles as the Grad-CAM forward pass (a GPU is fast
    # enough for two passes, and there the segmentation runs in bfloat16).
    fused = options.cam != "none" and model.device.type in FUSED_CAM_DEVICES
    if fused:
        tracker.merge("gradcam", into="segmentation")

    t = time.perf_counter()
    box = tuple(int(v) for v in thorax_box(hu))
    nz = hu.shape[0]
    lesion = np.zeros(hu.shape, dtype=np.uint8)
    lesion_prob = np.zeros(hu.shape, dtype=np.float16)
    cam: dict[int, np.ndarray] = {}
    cam_outside: dict[int, float] = {}
    cam_s = [0.0]
    runner = _Runner(model, tracker, warnings)

    # Lesions are kept only inside the lung, so slices without lung (neck, upper abdomen) are not run
    # through the network; their lesion_prob stays 0.
    todo_seg = [int(k) for k in np.flatnonzero(lung.reshape(nz, -1).any(axis=1))]

    def constrain(labels: np.ndarray, idx: list[int]) -> np.ndarray:
        # labels follow the rule the models were validated with (lesion: GGO + cons >= 0.5, see
        # segment.labels_from_probs), constrained to the lung as measurements.constrain_to_lung does
        labels[lung[idx] == 0] = 0
        return labels

    def store_cam(idx: list[int], maps: np.ndarray, outside: np.ndarray) -> None:
        # Kept as float16 (half the memory: 0.5 MB per 512 x 512 slice); the outside-lung share was
        # computed by gradcam from the float32 maps, and the consumers convert to float32 at use.
        for j, k in enumerate(idx):
            cam[k] = _freeze(np.ascontiguousarray(maps[j], dtype=np.float16))
            cam_outside[k] = float(outside[j])

    def seg(m: Any, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if not (fused and m.device.type in FUSED_CAM_DEVICES):
            labels, prob = segment.segment_labels(m, hu[idx], box, tta=options.tta)
            return constrain(np.asarray(labels), idx), prob
        return _segment_and_explain(m, hu[idx], lung[idx], box, options, views, cam_layer, cam_method,
                                    constrain, idx, store_cam, cam_s)

    lesion_slices_seen = [0]

    def store_seg(idx: list[int], out: tuple[np.ndarray, np.ndarray]) -> None:
        labels, prob = out
        lesion[idx] = labels
        lesion_prob[idx] = prob
        lesion_slices_seen[0] += int(np.count_nonzero(labels.reshape(len(idx), -1).any(axis=1)))

    def seg_eta(done: int, total: int, spent_s: float) -> float:
        per_slice = spent_s / done
        if fused:  # the rate already holds the Grad-CAM of the slices that need one
            return per_slice * (total - done) + 0.02 * spent_s
        cam_slices = {"none": 0.0, "all": float(nz), "lesions": lesion_slices_seen[0] * total / done}[options.cam]
        # one Grad-CAM slice costs about 1.6 forward passes; a segmentation slice one per TTA view
        cam_per_slice = per_slice * 1.6 / views
        return per_slice * (total - done) + cam_slices * cam_per_slice + 0.02 * spent_s

    yield tracker.tick("segmentation", 0, len(todo_seg), f"segmentation 0/{len(todo_seg)} slices with lung")
    yield from runner.batched("segmentation", todo_seg, options.batch_size, seg, store_seg, seg_eta)
    timings["segmentation"] = time.perf_counter() - t - cam_s[0]
    if options.cleanup and lesion.any():
        # 3-D context the slice-by-slice network lacks: tiny, z-isolated and rim-only components go
        from ctscreen.imaging.postprocess import clean_lesions

        t = time.perf_counter()
        lesion, _cleanup = clean_lesions(lesion, lung, tuple(float(v) for v in volume.spacing_mm))
        if options.cam == "lesions":  # maps follow the lesion slices the user sees
            for k in [k for k in cam if not lesion[k].any()]:
                del cam[k], cam_outside[k]
        timings["postprocess"] = time.perf_counter() - t
    if fused:
        timings["gradcam"] = cam_s[0]
    elif options.cam != "none":
        t = time.perf_counter()
        todo = cam_slice_indices(lesion, options.cam)

        def grad(m: Any, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return gradcam.gradcam_batch(m, hu[idx], box, lung[idx], cam_layer, region=lesion[idx],
                                         method=cam_method)

        def cam_eta(done: int, total: int, spent_s: float) -> float:
            return spent_s / done * (total - done) + 0.02 * spent_s

        yield tracker.tick("gradcam", 0, len(todo), f"Grad-CAM 0/{len(todo)} slices")
        yield from runner.batched("gradcam", todo, options.batch_size, grad,
                                  lambda idx, out: store_cam(idx, *out), cam_eta)
        timings["gradcam"] = time.perf_counter() - t
    if options.cam != "none":
        flagged = sorted(k for k, f in cam_outside.items() if f > AnalysisResult.CAM_OUTSIDE_FLAG)
        if flagged:
            shown = ", ".join(str(k + 1) for k in flagged[:10]) + (" ..." if len(flagged) > 10 else "")
            warnings.append(f"On {len(flagged)} slice(s) most of the Grad-CAM activation lies outside the lungs "
                            f"(slice numbers {shown}): the network may be reacting to something other than "
                            "lung lesions there.")

    tracker.check_cancel()
    t = time.perf_counter()
    yield tracker.tick("measurements", 0, 1, "measuring")
    measurements = measure_volume(volume, lesion, lung)
    timings["measurements"] = time.perf_counter() - t
    yield tracker.tick("measurements", 1, 1, "done")

    tracker.check_cancel()
    t = time.perf_counter()
    yield tracker.tick("screening", 0, 1, "screening verdict")
    screening = _screening(volume, lung, lesion, measurements, box, options.classifier, runner.model.device,
                           warnings)
    timings["screening"] = time.perf_counter() - t
    yield tracker.tick("screening", 1, 1, "done")

    model = runner.model
    return AnalysisResult(
        volume=volume,
        lung=_freeze(lung),
        lesion=_freeze(lesion),
        lesion_prob=_freeze(lesion_prob),
        measurements=measurements,
        model_name=str(getattr(model, "name", "")),
        model_version=str(getattr(model, "version", "")),
        device=describe_device(model.device),
        cam=cam,
        cam_outside_fraction=cam_outside,
        cam_layer=cam_layer,
        cam_method=cam_method,
        timings_s=timings,
        warnings=tuple(warnings),
        thorax_box=box,
        screening=screening,
    )


def run_analysis(source: Volume | str | os.PathLike | Any, options: AnalyzeOptions | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> AnalysisResult:
    """Drive :func:`analyze` to the end, passing each :class:`Progress` to ``on_progress``."""
    gen = analyze(source, options)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


__all__ = ["AnalyzeOptions", "Progress", "analyze", "run_analysis", "cam_slice_indices", "CAM_CHOICES",
           "STAGE_WEIGHTS", "STAGE_LABELS"]
