"""The window's analysis part: Analyze button, model/device choosers, overlay controls,
results dock and export menu, wired to :class:`AnalysisController`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QComboBox, QDockWidget, QMenu, QSlider, QToolBar

from ctscreen.inference.camlayers import (CAM_METHOD_NAMES, DEFAULT_CAM_METHOD, arch_of_model, describe,
                                         describe_method, layers_for)
from ctscreen.viewer.analysis import (DEVICE_CHOICES, MODEL_LABELS, AnalysisController, shipped_default,
                                       shipped_models)
from ctscreen.viewer.cam_on_demand import CamOnDemand
from ctscreen.viewer.exports import EXPORT_KINDS, Exporter
from ctscreen.viewer.overlays import OverlayLayers
from ctscreen.viewer.results_panel import ResultsPanel, totals_html
from ctscreen.viewer.settings import ViewerSettings
from ctscreen.viewer.slice_view import SliceView


class AnalysisHost(Protocol):
    """What :class:`AnalysisUi` needs from the window it is built into.

    A ``QMainWindow`` (for docks, tool bars, the menu and status bars) with these
    members; :class:`ctscreen.viewer.main_window.MainWindow` is one. Naming them here,
    instead of importing the window class, keeps ``analysis_ui`` free of an import
    cycle with ``main_window``.
    """

    slice_view: SliceView
    settings: ViewerSettings
    tags_dock: QDockWidget
    file_menu: QMenu
    view_menu: QMenu
    help_menu: QMenu
    quit_action: QAction
    volumeLoaded: Any  # Signal(object): a Volume is now shown

    def show_error(self, title: str, message: str) -> None: ...
    def begin_task(self, name: str, cancel: Callable[[], Any]) -> None: ...
    def task_progress(self, value: int, maximum: int, bar_format: str, message: str = "") -> None: ...
    def end_task(self, name: str) -> None: ...


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d} left"


def _slider(value: float, tooltip: str) -> QSlider:
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, 100)
    slider.setValue(int(round(value * 100)))
    slider.setFixedWidth(90)
    slider.setToolTip(tooltip)
    return slider


class AnalysisUi(QObject):
    """Builds and runs the analysis controls of one window (an :class:`AnalysisHost`)."""

    def __init__(self, window: AnalysisHost) -> None:
        super().__init__(window)
        self.window = window
        self.controller = AnalysisController(window)
        self.overlays = OverlayLayers(window.slice_view)
        self.results = ResultsPanel()
        self.exporter = Exporter(window, self._view_state)
        self.cam = CamOnDemand(lambda: window.slice_view.slice_index, self)
        self.controller.shutdown_hooks.append(self.cam.shutdown)
        self.controller.shutdown_hooks.append(self.results.screening.shutdown)
        self._t0 = 0.0
        self._combo_arch: str | None = None   # architecture of the model chosen in the model box
        self._result_arch: str | None = None  # architecture of the model that made the result
        settings = window.settings

        self.dock = QDockWidget("Results", window)
        self.dock.setObjectName("resultsDock")
        self.dock.setWidget(self.results)
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        window.tabifyDockWidget(window.tags_dock, self.dock)
        self.dock.raise_()

        # -- actions ---------------------------------------------------------------------------
        self.analyze_action = QAction("Analyze", window, shortcut=QKeySequence(Qt.Key.Key_F5),
                                      triggered=self.start)
        self.analyze_action.setToolTip("Segment GGO and consolidation in this series (F5)")
        self.cancel_action = QAction("Cancel analysis", window, triggered=self.controller.cancel, enabled=False)
        self.lesions_action = QAction("Lesions", window, shortcut=QKeySequence("O"), checkable=True, checked=True)
        self.lesions_action.setToolTip("Show the GGO / consolidation overlay (O)")
        self.lung_action = QAction("Lung outline", window, shortcut=QKeySequence("L"), checkable=True,
                                   checked=False)
        self.lung_action.setToolTip("Show the lung outline (L)")
        self.cam_action = QAction("Grad-CAM", window, shortcut=QKeySequence("G"), checkable=True, checked=False)
        self.cam_action.setToolTip("Show the Grad-CAM heat map of the network (G)")
        self.contour_action = QAction("Contours", window, shortcut=QKeySequence("C"), checkable=True,
                                      checked=settings.value("overlay/mode", "fill") == "contour")
        self.contour_action.setToolTip("Draw lesions as contours instead of filled (C)")
        self.lesions_action.toggled.connect(self.overlays.set_lesions_visible)
        self.lung_action.toggled.connect(self.overlays.set_lung_visible)
        self.cam_action.toggled.connect(self.overlays.set_cam_visible)
        self.cam_action.toggled.connect(lambda on: self.cam.set_active(on))
        self.contour_action.toggled.connect(self._set_contours)
        self.overlays.set_fill(not self.contour_action.isChecked())
        self.overlay_actions = (self.lesions_action, self.lung_action, self.cam_action, self.contour_action)

        # -- choosers and sliders ------------------------------------------------------------------
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Segmentation model")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_combo.setMaximumWidth(220)
        default = shipped_default()
        self.model_combo.addItem(f"Default ({MODEL_LABELS.get(default, default)})" if default else "Default model", "")
        for name in shipped_models():
            self.model_combo.addItem(MODEL_LABELS.get(name, name), name)
        for name, label in MODEL_LABELS.items():  # offered even before weights are installed
            if self.model_combo.findData(name) < 0:
                self.model_combo.addItem(f"{label} (not installed)", name)
        self.device_combo = QComboBox()
        self.device_combo.setToolTip("Where the network runs: auto picks a GPU when there is one")
        for device in DEVICE_CHOICES:
            self.device_combo.addItem({"auto": "Auto", "cpu": "CPU", "cuda": "CUDA GPU"}[device], device)
        self.cam_layer_combo = QComboBox()
        self.cam_layer_combo.setObjectName("camLayerCombo")
        self.cam_layer_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self._fill_cam_layers()
        self.cam_method_combo = QComboBox()
        self.cam_method_combo.setObjectName("camMethodCombo")
        self.cam_method_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        for name in CAM_METHOD_NAMES:
            self.cam_method_combo.addItem(name, name)
            self.cam_method_combo.setItemData(self.cam_method_combo.count() - 1, describe_method(name),
                                              Qt.ItemDataRole.ToolTipRole)
        self.cam_method_combo.setToolTip("How the activation map is made (benchmarks/explanations.py chose the "
                                         "default). Used by the next Analyze; with a result on screen, the map "
                                         "of each slice is computed with this method as you view it.")
        self.cam_method_combo.setCurrentIndex(max(0, self.cam_method_combo.findData(DEFAULT_CAM_METHOD)))
        self.cam_method_combo.currentIndexChanged.connect(self._cam_layer_changed)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.cam_layer_combo.currentIndexChanged.connect(self._cam_layer_changed)
        self.device_combo.currentIndexChanged.connect(self._sync_controller)
        self.lesion_opacity = _slider(settings.overlay_value("lesion_opacity", 0.5), "Lesion overlay opacity")
        self.cam_opacity = _slider(settings.overlay_value("cam_opacity", 0.45), "Grad-CAM opacity")
        self.lesion_opacity.valueChanged.connect(self._lesion_opacity_changed)
        self.cam_opacity.valueChanged.connect(self._cam_opacity_changed)
        self.overlays.set_lesion_opacity(self.lesion_opacity.value() / 100)
        self.overlays.set_cam_opacity(self.cam_opacity.value() / 100)

        self._build_toolbar()
        self._build_menus()

        # -- wiring ------------------------------------------------------------------------------------
        c = self.controller
        c.started.connect(self._on_started)
        c.progress.connect(self._on_progress)
        c.finished_ok.connect(self._on_finished)
        c.failed.connect(self._on_failed)
        c.cancelled.connect(self._on_cancelled)
        c.busyChanged.connect(self._on_busy)
        self.results.sliceRequested.connect(window.slice_view.set_slice)
        window.slice_view.sliceChanged.connect(self.results.set_current_slice)
        window.slice_view.sliceChanged.connect(self.cam.slice_changed)
        self.cam.displayChanged.connect(self._show_display_result)
        self.cam.busyChanged.connect(self._on_cam_busy)
        self.cam.failed.connect(lambda msg: window.statusBar().showMessage(msg, 10000))
        window.volumeLoaded.connect(self._on_volume)
        self._warm_timer = QTimer(self)
        self._warm_timer.setSingleShot(True)
        self._warm_timer.setInterval(1500)
        self._warm_timer.timeout.connect(self.controller.warm_up)
        for signal in (window.slice_view.sliceChanged, window.slice_view.windowChanged,
                       window.slice_view.cursorMoved):
            signal.connect(self._postpone_warm_up)
        self.exporter.finished.connect(lambda msg: window.statusBar().showMessage(msg, 10000))
        self.exporter.failed.connect(lambda msg: window.show_error("Export failed", msg))
        self._update_enabled()

    # -- construction ------------------------------------------------------------------------------
    def _build_toolbar(self) -> None:
        w = self.window
        bar = w.addToolBar("Analysis")
        bar.setObjectName("analysisToolBar")
        bar.setMovable(False)
        bar.addAction(self.analyze_action)
        bar.addWidget(self.model_combo)
        bar.addWidget(self.device_combo)
        bar.addSeparator()
        for action in (self.lesions_action, self.contour_action):
            bar.addAction(action)
        bar.addWidget(self.lesion_opacity)
        bar.addAction(self.lung_action)
        self.toolbar = bar
        # The activation-map controls have a bar of their own: on one row with the rest they were cut
        # off at the default 1360-px width. The window places it (on the reading tools' row).
        cam_bar = QToolBar("Activation maps", w)
        cam_bar.setObjectName("camToolBar")
        cam_bar.setMovable(False)
        cam_bar.addAction(self.cam_action)
        cam_bar.addWidget(self.cam_layer_combo)
        cam_bar.addWidget(self.cam_method_combo)
        cam_bar.addWidget(self.cam_opacity)
        self.cam_toolbar = cam_bar

    def _build_menus(self) -> None:
        w = self.window
        menu = w.menuBar()
        analysis_menu = menu.addMenu("&Analysis")
        menu.insertMenu(w.help_menu.menuAction(), analysis_menu)
        analysis_menu.addAction(self.analyze_action)
        analysis_menu.addAction(self.cancel_action)
        analysis_menu.addSeparator()
        for action in self.overlay_actions:
            analysis_menu.addAction(action)
        # the toolbar can run out of room on a narrow window: the map method is in the menu as well
        self.cam_method_menu = analysis_menu.addMenu("Grad-CAM &method")
        self.cam_method_actions: dict[str, QAction] = {}
        for i, name in enumerate(CAM_METHOD_NAMES):
            action = self.cam_method_menu.addAction(describe_method(name))
            action.setCheckable(True)
            action.triggered.connect(lambda _=False, j=i: self.cam_method_combo.setCurrentIndex(j))
            self.cam_method_actions[name] = action
        self.cam_method_combo.currentIndexChanged.connect(self._check_cam_method_action)
        self._check_cam_method_action()
        analysis_menu.addSeparator()
        analysis_menu.addAction(self.dock.toggleViewAction())
        w.view_menu.addAction(self.dock.toggleViewAction())

        self.export_menu = w.file_menu.addMenu("&Export")
        w.file_menu.insertMenu(w.quit_action, self.export_menu)
        w.file_menu.insertSeparator(w.quit_action)
        self.export_actions: dict[str, QAction] = {}
        for kind, (text, _default) in EXPORT_KINDS.items():
            action = self.export_menu.addAction(text)
            action.triggered.connect(lambda _=False, k=kind: self.export(k))
            self.export_actions[kind] = action
        self.export_menu.addSeparator()
        self.include_patient_action = self.export_menu.addAction("Include patient name and ID")
        self.include_patient_action.setCheckable(True)
        self.include_patient_action.setToolTip("Burn patient name and ID into exported PNGs and write them into "
                                               "report.json and the PDF report (left out unless checked)")
        self.include_patient_action.toggled.connect(lambda on: setattr(self.exporter, "include_patient", bool(on)))

    # -- state ---------------------------------------------------------------------------------------------
    def configure(self, model: str | None = None, device: str | None = None) -> None:
        """Pre-select a model and device (the CLI's --model/--device)."""
        if model:
            i = self.model_combo.findData(model)
            if i < 0:  # a weights file
                self.model_combo.addItem(Path(model).name, model)
                self.model_combo.setItemData(self.model_combo.count() - 1, model, Qt.ItemDataRole.ToolTipRole)
                i = self.model_combo.count() - 1
            self.model_combo.setCurrentIndex(i)
        if device:
            i = self.device_combo.findData(device)
            if i < 0:
                self.device_combo.addItem(device, device)
                i = self.device_combo.count() - 1
            self.device_combo.setCurrentIndex(i)
        self._sync_controller()

    def _sync_controller(self, *_: Any) -> None:
        self.controller.configure(model=self.model_combo.currentData() or "",
                                  device=self.device_combo.currentData() or "auto",
                                  cam_layer=self.cam_layer_combo.currentData() or "",
                                  cam_method=self.cam_method_combo.currentData() or "")

    # -- Grad-CAM layer ------------------------------------------------------------------------------------
    def _fill_cam_layers(self) -> None:
        """List the layers of the chosen model's architecture, default first; keep the choice where it exists."""
        combo = self.cam_layer_combo
        arch = arch_of_model(self.model_combo.currentData() or None)
        self._combo_arch = arch
        keep = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for name in layers_for(arch):
            combo.addItem(name, name)
            combo.setItemData(combo.count() - 1, describe(arch, name), Qt.ItemDataRole.ToolTipRole)
        if combo.count() == 0:  # a model whose architecture cannot be told: its own default layer
            combo.addItem("default", "")
        i = combo.findData(keep) if keep else -1
        combo.setCurrentIndex(max(i, 0))
        combo.blockSignals(False)
        self._update_cam_layer_tooltip()

    def _update_cam_layer_tooltip(self) -> None:
        layer = self.cam_layer_combo.currentData() or ""
        text = describe(self._combo_arch, layer) if layer else "the model's default layer"
        self.cam_layer_combo.setToolTip(f"Grad-CAM layer: {text}. Used by the next Analyze; with a result on "
                                        "screen, the map of each slice is computed at this layer as you view it.")

    def _check_cam_method_action(self, *_: Any) -> None:
        current = self.cam_method_combo.currentData()
        for name, action in self.cam_method_actions.items():
            action.setChecked(name == current)

    def _model_changed(self, *_: Any) -> None:
        self._fill_cam_layers()
        self._sync_controller()
        self._follow_cam_layer()

    def _cam_layer_changed(self, *_: Any) -> None:
        self._update_cam_layer_tooltip()
        self._sync_controller()
        if self._follow_cam_layer() and not self.cam_action.isChecked():
            self.cam_action.setChecked(True)  # picking a layer for a result means: show me its map

    def _follow_cam_layer(self) -> bool:
        """Show the chosen layer's maps when the result came from a model of the chosen architecture."""
        layer = self.cam_layer_combo.currentData() or ""
        result = self.controller.result
        if result is None or not layer or self._combo_arch != self._result_arch:
            return False
        method = self.cam_method_combo.currentData() or ""
        own = getattr(result, "cam_method", "") or ""
        self.cam.set_layer(layer if not method or not own or method == own else f"{layer}@{method}")
        return True

    def _show_display_result(self, shown: Any) -> None:
        """Draw ``shown`` (the result with the displayed layer's maps) and name that layer in the totals."""
        result = self.controller.result
        if result is None or shown is None or shown.volume is not result.volume:
            return
        self.overlays.set_result(shown)
        if shown is result:
            self.results.totals.setText(totals_html(result))
        else:
            label = f"{shown.cam_layer} (computed per slice as you view it; the analysis used {result.cam_layer})"
            self.results.totals.setText(totals_html(dataclasses.replace(shown, cam_layer=label)))

    def _on_cam_busy(self, layer: str, index: int) -> None:
        bar = self.window.statusBar()
        if layer:
            bar.showMessage(f"Grad-CAM ({layer}) of slice {index + 1} …")
        elif bar.currentMessage().startswith("Grad-CAM ("):
            bar.clearMessage()

    def _update_enabled(self) -> None:
        busy = self.controller.busy
        has_volume = self.window.slice_view.volume is not None
        has_result = self.controller.result is not None
        self.analyze_action.setEnabled(has_volume and not busy)
        volume = self.window.slice_view.volume
        reason = getattr(volume, "not_analysable_reason", None) if volume is not None else None
        self.analyze_action.setToolTip(
            f"This series cannot be analysed: {reason}" if reason
            else "Segment GGO and consolidation in this series (F5)")
        self.cancel_action.setEnabled(busy)
        self.model_combo.setEnabled(not busy)
        self.device_combo.setEnabled(not busy)
        for action in self.overlay_actions:
            action.setEnabled(has_result)
        self.export_menu.setEnabled(has_result)

    def _view_state(self) -> dict[str, Any]:
        view = self.window.slice_view
        return {"slice_index": view.slice_index, "window": (view.window.width, view.window.level),
                "fill": self.overlays.fill, "opacity": self.lesion_opacity.value() / 100,
                "cam": self.overlays.cam_visible}

    def _set_contours(self, contours: bool) -> None:
        self.overlays.set_fill(not contours)
        self.window.settings.set_value("overlay/mode", "contour" if contours else "fill")

    def _lesion_opacity_changed(self, value: int) -> None:
        self.overlays.set_lesion_opacity(value / 100)
        self.window.settings.set_overlay_value("lesion_opacity", value / 100)

    def _cam_opacity_changed(self, value: int) -> None:
        self.overlays.set_cam_opacity(value / 100)
        self.window.settings.set_overlay_value("cam_opacity", value / 100)

    # -- running ----------------------------------------------------------------------------------------------
    def start(self) -> bool:
        self._sync_controller()
        return self.controller.start()

    def export(self, kind: str, path: str | None = None) -> bool:
        return self.exporter.export(kind, self.controller.result, path)

    def _on_volume(self, volume: Any) -> None:
        if not self.controller.warm and not self._warm_timer.isActive():
            # First study on screen: load torch once the reader pauses, rather than during
            # the first analysis (loading it holds the GIL ~0.2 s; see analysis._Warmer).
            self._warm_timer.start()
        self.controller.set_volume(volume)
        self.cam.set_result(None)
        self.overlays.set_result(None)
        self.results.set_result(None)
        self._update_enabled()

    def _postpone_warm_up(self, *_: Any) -> None:
        if self._warm_timer.isActive():
            self._warm_timer.start()  # restart: wait for 1.5 s without scrolling or windowing

    def _on_started(self) -> None:
        self._t0 = time.perf_counter()
        w = self.window
        w.begin_task("Analysis", self.controller.cancel)
        w.statusBar().showMessage("Analysis started — you can keep reading while it runs.")

    def _on_progress(self, p: Any) -> None:
        fraction = float(getattr(p, "fraction", 0.0) or 0.0)
        message = str(getattr(p, "message", "") or getattr(p, "stage", ""))
        eta = format_eta(getattr(p, "eta_s", None))
        self.window.task_progress(int(round(fraction * 1000)), 1000, f"Analysis %p% · {eta}", f"{message} — {eta}")

    def _on_finished(self, result: Any) -> None:
        request = self.controller.result_request
        model = request.model if request is not None else self.controller.model
        self.cam.set_result(result, model, request.device if request is not None else self.controller.device)
        self.cam.set_active(self.cam_action.isChecked())
        self._result_arch = arch_of_model(model)
        self.overlays.set_result(result)
        self.results.set_result(result)
        self.results.set_current_slice(self.window.slice_view.slice_index)
        self.dock.show()
        self.dock.raise_()
        m = result.measurements
        elapsed = time.perf_counter() - self._t0
        self.window.statusBar().showMessage(
            f"Analysis done in {elapsed:.0f} s: lesions {m.lesion_volume_ml:.1f} mL "
            f"({m.percent_involved:.1f} % of the lungs), severity {m.severity_total}/30"
            + (f"; screening: {result.screening.one_line()}" if getattr(result, "screening", None) else ""), 15000)
        self._update_enabled()
        self._follow_cam_layer()  # the layer may have been changed while the analysis ran

    def _on_failed(self, message: str) -> None:
        self.window.show_error("Analysis failed", message)

    def _on_cancelled(self) -> None:
        kept = " The previous result is still shown." if self.controller.result is not None else ""
        self.window.statusBar().showMessage(f"Analysis cancelled; nothing was changed.{kept}", 10000)

    def _on_busy(self, busy: bool) -> None:
        if not busy:
            self.window.end_task("Analysis")
        self._update_enabled()

