"""Running the lesion analysis from the window: one request at a time, never half-applied.

The work is :func:`ctscreen.inference.pipeline.analyze`, the same generator the
CLI drives, run by :class:`~ctscreen.viewer.worker.GeneratorWorker`. torch is
imported inside the worker thread on the first run, so the viewer starts fast.

A result is applied only when it is complete *and* still belongs to the volume
on screen (a generation counter); a cancelled or failed run leaves the
previous result, if any, exactly as it was.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

from ctscreen.errors import Cancelled, CtscreenError, NotAnalysable
from ctscreen.imaging.volume import Volume
from ctscreen.viewer.worker import GeneratorWorker

MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "models"
#: Shown names of the shipped architectures (mirrors ``inference.models.ARCH_LABELS``; no torch here).
MODEL_LABELS = {"unet": "UNet", "deeplab": "DeepLabv3+"}
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def shipped_models() -> list[str]:
    """Names of the model files shipped in ``resources/models`` (without importing torch)."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.pt"))


def shipped_default() -> str:
    """The name in ``resources/models/default.txt`` ("" when absent)."""
    try:
        return (MODELS_DIR / "default.txt").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class AnalysisRequest:
    """What to analyse and how; immutable, built on the GUI thread."""

    volume: Volume
    model: str | None = None
    device: str = "auto"
    cam: str = "lesions"
    batch_size: int = 4
    #: Grad-CAM layer (a name of ``inference.camlayers.CAM_LAYERS``); None = the model's default.
    cam_layer: str | None = None
    #: How the maps are made (a name of ``inference.camlayers.CAM_METHOD_NAMES``); None = the shipped default.
    cam_method: str | None = None


def run_request(request: AnalysisRequest, cancel: threading.Event) -> Generator[Any, None, Any]:
    """The generator the worker runs: the pipeline with this request's options."""
    from ctscreen.inference.pipeline import AnalyzeOptions, analyze

    options = AnalyzeOptions(model=request.model or None, device=request.device, cam=request.cam,
                             cam_layer=request.cam_layer or None, cam_method=request.cam_method or None,
                             batch_size=request.batch_size, cancel=cancel)
    return (yield from analyze(request.volume, options))


ANALYSIS_MODULES = ("torch", "ctscreen.inference.pipeline", "ctscreen.inference.models",
                    "ctscreen.inference.segment", "ctscreen.inference.gradcam", "ctscreen.imaging.lungmask",
                    "ctscreen.imaging.measurements")


class _Warmer(QObject):
    """Imports torch and the analysis modules once per process, off the GUI thread.

    Loading torch's libraries holds the GIL for a few hundred milliseconds at a
    time; done at the first Analyze it would freeze scrolling just as the user
    starts an analysis. A daemon thread (not a QThread) does it, so quitting
    while it runs neither waits for it nor destroys a running QThread.
    """

    done = Signal(bool)

    def __init__(self) -> None:
        super().__init__()
        self.state = "cold"  # cold -> warming -> warm | failed

    def start(self) -> None:
        if self.state != "cold":
            return
        self.state = "warming"
        threading.Thread(target=self._run, name="ctscreen-warm-up", daemon=True).start()

    def _run(self) -> None:
        from ctscreen.viewer.worker import _lower_this_thread_priority

        _lower_this_thread_priority(10)
        import importlib

        try:
            for name in ANALYSIS_MODULES:
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the real run reports what is wrong
            self.state = "failed"
        else:
            self.state = "warm"
        self.done.emit(self.state == "warm")  # queued to the GUI thread's receivers


_WARMER: _Warmer | None = None


def _warmer() -> _Warmer:
    global _WARMER
    if _WARMER is None:
        _WARMER = _Warmer()  # created on the GUI thread, lives as long as the process
    return _WARMER


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, CtscreenError):
        return str(exc)
    return f"the analysis failed unexpectedly ({type(exc).__name__}: {exc}); the viewer is still usable"


class AnalysisController(QObject):
    """Starts, cancels and reports analyses of the window's current volume.

    Signals
    -------
    started()
    progress(object)
        A pipeline ``Progress`` (``fraction``, ``eta_s``, ``message``).
    finished_ok(object)
        The complete :class:`~ctscreen.imaging.result.AnalysisResult`.
    failed(str)
        A one-line message naming what went wrong and what to do.
    cancelled()
    busyChanged(bool)
    """

    started = Signal()
    warmedUp = Signal(bool)
    progress = Signal(object)
    finished_ok = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None, runner=run_request) -> None:
        super().__init__(parent)
        self.runner = runner
        self._volume: Volume | None = None
        self._worker: GeneratorWorker | None = None
        self._generation = 0
        self.model: str | None = None
        self.device = "auto"
        self.cam = "lesions"
        self.cam_layer: str | None = None
        self.cam_method: str | None = None
        self.result: Any = None
        #: The request that produced ``result`` (which model on which device, for more Grad-CAM maps).
        self.result_request: AnalysisRequest | None = None
        self.warm = False
        #: Called with the timeout by :meth:`shutdown` (other background work of the window's analysis part).
        self.shutdown_hooks: list[Callable[[float], None]] = []

    # -- configuration ----------------------------------------------------------------------
    def configure(self, model: str | None = None, device: str | None = None, cam_layer: str | None = None,
                  cam_method: str | None = None) -> None:
        """Options of the next run; None keeps one, ``""`` resets the model / Grad-CAM layer / method to the default."""
        if cam_layer is not None:
            self.cam_layer = cam_layer or None
        if cam_method is not None:
            self.cam_method = cam_method or None
        if model is not None:
            self.model = model or None
        if device is not None:
            self.device = device or "auto"

    def set_volume(self, volume: Volume | None) -> None:
        """The volume on screen changed: stop any run and forget the old result."""
        if volume is self._volume:
            return
        self.cancel()
        self._generation += 1
        self._volume = volume
        self.result = None
        self.result_request = None

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def can_run(self) -> bool:
        return self._volume is not None and not self.busy

    # -- running --------------------------------------------------------------------------------
    def start(self) -> bool:
        """Analyse the current volume; returns False (and emits ``failed``) when it cannot start."""
        if self.busy:
            return False
        volume = self._volume
        if volume is None:
            self.failed.emit("open a CT series first; there is nothing to analyse")
            return False
        if volume.not_analysable_reason:
            self.failed.emit(str(NotAnalysable(
                f"{volume.series_description or 'this series'} cannot be analysed: "
                f"{volume.not_analysable_reason}")))
            return False
        request = AnalysisRequest(volume=volume, model=self.model, device=self.device, cam=self.cam,
                                  cam_layer=self.cam_layer, cam_method=self.cam_method)
        generation = self._generation
        worker = GeneratorWorker(self.runner, request, background=True)
        worker.yielded.connect(lambda p: generation == self._generation and self.progress.emit(p))
        worker.returned.connect(lambda r: self._on_returned(generation, r, request))
        worker.errored.connect(lambda e: self._on_errored(generation, e))
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        worker.start()
        self.busyChanged.emit(True)
        self.started.emit()
        return True

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def warm_up(self) -> None:
        """Import the analysis modules in the background (once per process); ``warmedUp`` when done."""
        warmer = _warmer()
        if warmer.state in ("warm", "failed"):
            self._on_warm(warmer.state == "warm")
            return
        # A bound method, not a lambda: Qt drops it if this controller is gone first.
        warmer.done.connect(self._on_warm, Qt.ConnectionType.UniqueConnection)
        warmer.start()

    @Slot(bool)
    def _on_warm(self, ok: bool) -> None:
        self.warm = bool(ok)
        if self.warm and not getattr(gc, "_ctscreen_frozen", False):
            # torch adds ~200k long-lived objects that a full collection would then scan
            # (~200 ms on the GUI thread). Move everything alive now out of the collector's
            # reach: they live as long as the process anyway.
            gc.freeze()
            gc._ctscreen_frozen = True  # type: ignore[attr-defined]
        self.warmedUp.emit(self.warm)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        for hook in self.shutdown_hooks:
            hook(timeout_s)
        worker = self._worker
        if worker is not None and worker.is_running:
            worker.cancel()
            worker.wait(timeout_s)
            worker.blockSignals(True)  # its queued outcome must not reach a closing window

    def _on_returned(self, generation: int, result: Any, request: AnalysisRequest | None = None) -> None:
        if generation != self._generation or getattr(result, "volume", None) is not self._volume:
            return  # a result for a volume no longer on screen
        self.result = result
        self.result_request = request
        self.finished_ok.emit(result)

    def _on_errored(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        if isinstance(exc, Cancelled):
            self.cancelled.emit()
        else:
            self.failed.emit(describe_failure(exc))

    def _on_finished(self, worker: GeneratorWorker) -> None:
        if self._worker is worker:
            self._worker = None
            self.busyChanged.emit(False)
        worker.deleteLater()
