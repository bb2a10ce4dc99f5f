"""The reading workstation of the window: layouts, linked crosshair, measuring tools, lesion navigator.

:class:`ReadingUi` is built into the main window with what it needs passed in
(no import of the window class): it puts a :class:`~ctscreen.viewer.layouts.ReadingLayout`
around the axial view as the central widget, adds the Measurements and Lesions docks,
the View → Layout menu, the tool bar, and File → Save view as PNG.

Keys: Ctrl+1 axial only, Ctrl+2 1×3, Ctrl+3 2×2; V navigate, D ruler, E ellipse ROI,
F freehand ROI, P probe; N / Shift+N next / previous lesion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QMainWindow, QMenu

from ctscreen import __version__
from ctscreen.viewer.layouts import LAYOUTS, ReadingLayout, render_layout
from ctscreen.viewer.lesion_navigator import LesionNavigator
from ctscreen.viewer.measure_tools import TOOLS, MeasureTools
from ctscreen.viewer.overlays import OverlayLayers
from ctscreen.viewer.slice_view import SliceView


class ReadingUi(QObject):
    """Layouts, tools and navigator of one window.

    Parameters
    ----------
    window : QMainWindow
        Gets the layout as its central widget (replacing ``axial``), the docks and a tool bar.
    axial : SliceView
        The window's axial view (its central widget until now).
    overlays : OverlayLayers
        The axial view's analysis overlays; the other panes' layers follow them.
    analysis : AnalysisController
        Its ``finished_ok(result)`` feeds the navigator and the z-profile.
    volume_loaded : Signal
        Emitted with each :class:`Volume` the window shows.
    view_menu, file_menu : QMenu
        Where the layout entries and "Save view as PNG…" go (the latter before ``before``).
    tabify_with : QDockWidget, optional
        The right-hand dock the Lesions and Measurements docks join as tabs.
    settings : ViewerSettings, optional
        Remembers the layout between sessions (``view/layout``).
    """

    def __init__(self, window: QMainWindow, axial: SliceView, overlays: OverlayLayers, analysis: Any,
                 volume_loaded: Any, view_menu: QMenu, file_menu: QMenu, before: QAction | None = None,
                 tabify_with: QDockWidget | None = None, settings: Any = None) -> None:
        super().__init__(window)
        self._window = window
        if window.centralWidget() is axial:
            window.takeCentralWidget()
        self.layout = ReadingLayout(axial)
        window.setCentralWidget(self.layout)
        self.layout.attach_overlays(overlays)
        self.tools = MeasureTools(self.layout.views, self.layout.link, self)
        self.navigator = LesionNavigator()
        self.navigator.lesionActivated.connect(lambda les: self.layout.centre_on(les.centre_voxel))
        self.last_saved = ""

        self.lesions_dock = self._dock("Lesions", "lesionsDock", self.navigator, tabify_with)
        self.measure_dock = self._dock("Measurements", "measurementsDock", self.tools.panel, tabify_with)
        self.tools.changed.connect(self._measurements_changed)

        # -- actions ------------------------------------------------------------------------------
        self.layout_group = QActionGroup(self)
        self.layout_actions: dict[str, QAction] = {}
        for i, (name, text) in enumerate(LAYOUTS.items(), start=1):
            action = QAction(text, window, checkable=True, shortcut=QKeySequence(f"Ctrl+{i}"))
            action.setChecked(name == "axial")
            action.triggered.connect(lambda _=False, n=name: self.set_layout(n))
            self.layout_group.addAction(action)
            self.layout_actions[name] = action
        self.layout.layoutChanged.connect(lambda n: self.layout_actions[n].setChecked(True))
        self.link_window_action = QAction("Link window/level across panes", window, checkable=True, checked=True)
        self.link_window_action.toggled.connect(lambda on: setattr(self.layout.link, "link_window", bool(on)))
        self.link_zoom_action = QAction("Link zoom across panes", window, checkable=True, checked=False)
        self.link_zoom_action.toggled.connect(lambda on: setattr(self.layout.link, "link_zoom", bool(on)))
        self.tool_group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for name, (label, key, tip) in TOOLS.items():
            action = QAction(label, window, checkable=True, shortcut=QKeySequence(key))
            action.setToolTip(tip)
            action.setChecked(name == "navigate")
            action.triggered.connect(lambda _=False, n=name: self.tools.set_tool(n))
            self.tool_group.addAction(action)
            self.tool_actions[name] = action
        self.tools.toolChanged.connect(lambda n: self.tool_actions[n].setChecked(True))
        self.next_lesion_action = QAction("Next lesion", window, shortcut=QKeySequence("N"),
                                          triggered=self.navigator.next)
        self.previous_lesion_action = QAction("Previous lesion", window, shortcut=QKeySequence("Shift+N"),
                                              triggered=self.navigator.previous)
        self.save_png_action = QAction("Save view as PNG…", window, shortcut=QKeySequence("Ctrl+Shift+S"),
                                       triggered=self.choose_png)
        self.save_png_action.setToolTip("All panes as on screen, with overlays, letters, scale bars and the notice")

        layout_menu = QMenu("&Layout", window)
        for action in self.layout_actions.values():
            layout_menu.addAction(action)
        layout_menu.addSeparator()
        layout_menu.addAction(self.link_window_action)
        layout_menu.addAction(self.link_zoom_action)
        view_menu.addSeparator()
        view_menu.addMenu(layout_menu)
        tools_menu = view_menu.addMenu("&Measure")
        for action in self.tool_actions.values():
            tools_menu.addAction(action)
        view_menu.addAction(self.next_lesion_action)
        view_menu.addAction(self.previous_lesion_action)
        view_menu.addAction(self.lesions_dock.toggleViewAction())
        view_menu.addAction(self.measure_dock.toggleViewAction())
        if before is not None:
            file_menu.insertAction(before, self.save_png_action)
        else:
            file_menu.addAction(self.save_png_action)

        window.addToolBarBreak()
        bar = window.addToolBar("Reading")
        bar.setObjectName("readingToolBar")
        bar.setMovable(False)
        for name in LAYOUTS:
            bar.addAction(self.layout_actions[name])
        bar.addSeparator()
        for action in self.tool_actions.values():
            bar.addAction(action)
        self.layout_actions["axial"].setText("Axial only")
        self.layout_actions["1x3"].setIconText("1×3")
        self.layout_actions["2x2"].setIconText("2×2")
        self.layout_actions["axial"].setIconText("Axial")
        self.toolbar = bar

        volume_loaded.connect(self._on_volume)
        analysis.finished_ok.connect(self._on_result)
        self.navigator.lesionsReady.connect(self._lesions_ready)
        shutdown_hooks = getattr(analysis, "shutdown_hooks", None)
        if shutdown_hooks is not None:  # the window's closing stops the lesion worker too
            shutdown_hooks.append(self.navigator.shutdown)
        self._settings = settings
        if settings is not None:
            remembered = settings.value("view/layout", "axial")
            if remembered in LAYOUTS:
                self.set_layout(remembered)
            self.layout.layoutChanged.connect(lambda name: settings.set_value("view/layout", name))

    def _dock(self, title: str, name: str, widget: Any, tabify_with: QDockWidget | None) -> QDockWidget:
        dock = QDockWidget(title, self._window)
        dock.setObjectName(name)
        dock.setWidget(widget)
        self._window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        if tabify_with is not None:
            self._window.tabifyDockWidget(tabify_with, dock)
            tabify_with.raise_()  # joining as a tab must not hide the dock the reader had in front
        return dock

    # -- state ---------------------------------------------------------------------------------------
    def set_layout(self, name: str) -> None:
        self.layout.set_layout(name)

    def _on_volume(self, volume: Any) -> None:
        self.tools.clear()
        self.navigator.set_result(None)
        self.layout.set_volume(volume)

    def _on_result(self, result: Any) -> None:
        if result is None or result.volume is not self.layout.axial.volume:
            return
        self.layout.set_result(result)
        self.navigator.set_result(result)

    def _lesions_ready(self) -> None:
        if self.navigator.lesions:
            self.lesions_dock.show()

    def _measurements_changed(self) -> None:
        if len(self.tools.store):
            self.measure_dock.show()
            self.measure_dock.raise_()

    # -- PNG of the view ----------------------------------------------------------------------------------
    def save_png(self, path: str | Path, force: bool = False) -> Path:
        """Write the layout as on screen (all panes, overlays, letters, scale bars, notice) to ``path``.

        Atomic; refuses to replace an existing file unless ``force``.
        """
        from ctscreen.viewer.app import save_png_atomically

        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; choose another name or confirm overwriting it")
        footer = f"ctscreen {__version__} · {LAYOUTS[self.layout.name].split(':')[0]}"
        save_png_atomically(render_layout(self.layout, footer), path)
        return path

    def choose_png(self) -> None:
        start = str(Path(self.last_saved or Path.home()) / "view.png") if not self.last_saved else self.last_saved
        # The dialog asks before replacing a file, so a confirmed name is written with force.
        path, _ = QFileDialog.getSaveFileName(self._window, "Save view as PNG", start, "PNG (*.png)")
        if not path:
            return
        try:
            self.save_png(path, force=True)
        except OSError as exc:
            self._window.statusBar().showMessage(f"Could not save {path}: {exc}", 10000)
            return
        self.last_saved = path
        self._window.statusBar().showMessage(f"Wrote {path}", 10000)
