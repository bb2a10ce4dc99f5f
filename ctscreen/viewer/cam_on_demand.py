"""Grad-CAM at another layer for the slice on screen, computed on demand off the GUI thread.

The analysis computes its maps at one layer. When the user picks another layer
in the "CAM layer" box, :class:`CamOnDemand` computes that layer's map for the
slice on screen with :func:`ctscreen.inference.gradcam.gradcam_for_result` in a
background :class:`~ctscreen.viewer.worker.GeneratorWorker`: one slice at a
time, debounced while the user scrolls, cached per ``(layer, slice)``. Only the
slices the analysis explained (those with a map in the result) get one, so the
set of slices with a map does not depend on the layer.

The model is loaded once per ``(model, device)`` in the worker thread and kept
for the process (:func:`cached_model`); torch is imported there, never here at
module level. A layer key may name a map method too, ``"decoder2@gradcam"``
(the "CAM method" box; a plain layer name keeps the analysis' method).
What is shown is a copy of the result whose ``cam``,
``cam_outside_fraction``, ``cam_layer`` and ``cam_method`` are those of the chosen layer
(:meth:`CamOnDemand.display_result`); the analysis result itself is not changed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from ctscreen.errors import Cancelled, CtscreenError
from ctscreen.viewer.on_demand import OnDemandSlices

#: Wait this long after the last slice change before computing a map (scrolling stays smooth).
DEBOUNCE_MS = 150
#: On-demand maps kept (about 1 MB each for a 512 x 512 slice); the oldest go first.
MAX_MAPS = 64


@dataclasses.dataclass(frozen=True)
class CamJob:
    """One map to compute: slice ``index`` of ``result`` at ``layer``, with the model that made the result."""

    result: Any
    model: str | None
    device: str
    layer: str
    index: int


_MODELS: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(model: str | None, device: str) -> tuple[Any, threading.Lock]:
    """The loaded model for ``(model, device)`` and the lock to hold while using it (loads it the first time).

    Call it off the GUI thread: the first call imports torch and reads the weights.
    Grad-CAM hooks the network and toggles ``requires_grad``, so two threads must
    not run it on one model at once: hold the lock.
    """
    key = (str(model or ""), str(device or "auto"))
    with _MODELS_LOCK:
        entry = _MODELS.get(key)
        if entry is None:
            from ctscreen.inference.models import load_model

            entry = (load_model(model or None, device=device or "auto"), threading.Lock())
            _MODELS[key] = entry
    return entry


def compute_cam(job: CamJob, cancel: threading.Event) -> Generator[str, None, tuple[CamJob, np.ndarray, float]]:
    """The generator the worker runs: load (or reuse) the model, then one Grad-CAM map."""
    yield "model"
    model, lock = cached_model(job.model, job.device)
    if cancel.is_set():
        raise Cancelled("Grad-CAM cancelled")
    yield "gradcam"
    from ctscreen.inference.gradcam import gradcam_for_result

    layer, _, method = job.layer.partition("@")
    with lock:
        try:
            cam, outside = gradcam_for_result(model, job.result, job.index, layer, method or None)
        except ValueError as exc:  # e.g. a layer this model does not have
            raise CtscreenError(str(exc)) from exc
    # float16 like AnalysisResult.cam (the maps land in a result copy; the drawing converts at use)
    return job, np.ascontiguousarray(cam, dtype=np.float16), float(outside)


class CamOnDemand(OnDemandSlices):
    """Per-layer Grad-CAM maps of one window's result, computed for the slice on screen.

    Parameters
    ----------
    current_index : callable
        Returns the slice index on screen.
    compute : generator function
        ``compute(job, cancel)`` returning ``(job, map, outside_fraction)``; tests stand one in.

    Signals
    -------
    displayChanged(object)
        The result to draw (:meth:`display_result`): after a layer change or a new map.
    busyChanged(str, int)
        A map is being computed for ``(layer, index)``; ``("", -1)`` when the worker is idle.
    failed(str)
        A one-line reason; the layer is not tried again until it is picked again.
    """

    displayChanged = Signal(object)
    busyChanged = Signal(str, int)
    failed = Signal(str)

    def __init__(self, current_index: Callable[[], int], parent: QObject | None = None,
                 compute: Callable[..., Generator[Any, None, Any]] = compute_cam) -> None:
        super().__init__(compute, DEBOUNCE_MS, MAX_MAPS, parent)
        self.current_index = current_index
        self.model: str | None = None
        self.device = "auto"
        self.layer = ""
        self.active = True  # False while the Grad-CAM overlay is hidden: nothing is computed
        self._maps: OrderedDict[tuple[str, int], tuple[np.ndarray, float]]  # (layer, slice) -> (map, outside)
        self._failed: set[str] = set()

    # -- state ---------------------------------------------------------------------------------------
    def set_result(self, result: Any, model: str | None = None, device: str = "auto") -> None:
        """A new analysis result (or None): forget the maps of the old one; show the result's own layer."""
        self._forget()  # a map being computed belongs to the old result: dropped on return anyway
        self.result = result
        self.model = model
        self.device = device or "auto"
        self.layer = str(getattr(result, "cam_layer", "") or "") if result is not None else ""
        self._failed.clear()

    def set_layer(self, layer: str) -> None:
        """Show ``layer``: its cached maps at once, the slice on screen's map as soon as it is computed."""
        if not layer or layer == self.layer:
            return
        self.layer = layer
        self._failed.discard(layer)
        if self.result is not None:
            self.displayChanged.emit(self.display_result())
            self.request_current()

    def set_active(self, active: bool) -> None:
        self.active = bool(active)
        if self.active:
            self.request_current()
        else:
            self._timer.stop()

    @property
    def on_demand(self) -> bool:
        """True when the layer shown is not the analysis' own (its maps come from here)."""
        return self.result is not None and bool(self.layer) and self.layer != self.result.cam_layer

    def has_map(self, layer: str, index: int) -> bool:
        return (layer, index) in self._maps

    def needs(self, index: int) -> bool:
        """Should slice ``index`` get a map of the shown layer now?"""
        return (self.active and self.on_demand and index in self.result.cam and self.layer not in self._failed
                and (self.layer, index) not in self._maps)

    def display_result(self) -> Any:
        """The result as drawn: the analysis result, or a copy with the shown layer's maps computed so far."""
        if not self.on_demand:
            return self.result
        cam: dict[int, np.ndarray] = {}
        outside: dict[int, float] = {}
        for (layer, k), (m, share) in self._maps.items():
            if layer == self.layer:
                cam[k] = m
                outside[k] = share
        layer, _, method = self.layer.partition("@")
        return dataclasses.replace(self.result, cam=cam, cam_outside_fraction=outside, cam_layer=layer,
                                   cam_method=method or getattr(self.result, "cam_method", ""))

    # -- scheduling ----------------------------------------------------------------------------------
    @Slot(int)
    def slice_changed(self, index: int) -> None:
        """The slice on screen changed: compute its map once the user pauses (cached maps show at once)."""
        if self.needs(index):
            self._timer.start()  # (re)start: scrolling postpones the work
        else:
            self._timer.stop()

    @Slot()
    def request_current(self) -> None:
        """Start computing the map of the slice on screen, unless one is being computed (then: after it)."""
        k = int(self.current_index())
        if not self.needs(k) or self._worker is not None:
            return
        job = CamJob(result=self.result, model=self.model, device=self.device, layer=self.layer, index=k)
        self._start(job)
        self.busyChanged.emit(job.layer, k)

    @Slot(object)
    def _on_returned(self, value: Any) -> None:
        job, cam, outside = value
        if self._ignored(job=job):
            return  # computed for a result no longer shown
        self._remember((job.layer, job.index), (cam, outside))
        if job.layer == self.layer:
            self.displayChanged.emit(self.display_result())

    @Slot(object)
    def _on_errored(self, exc: BaseException) -> None:
        if self._ignored(exc):
            return
        layer = self._job.layer
        self._failed.add(layer)
        self.failed.emit(f"Grad-CAM at {layer} could not be computed: {self.reason(exc)}")

    def _idle(self) -> None:
        self.busyChanged.emit("", -1)
