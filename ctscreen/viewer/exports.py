"""File → Export: the analysis written by :mod:`ctscreen.io.export`, off the GUI thread.

The writers are atomic and refuse to overwrite unless forced; here the user
is asked first (one question listing the files that exist), and only a "Yes"
passes ``force=True``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from ctscreen.viewer.worker import GeneratorWorker

#: kind -> (menu text, default file name or None for a folder)
EXPORT_KINDS = {
    "slice_png": ("Current slice as annotated PNG…", None),
    "lesion_pngs": ("All lesion slices as PNG…", None),
    "montage": ("Montage of lesion slices (PNG)…", "montage.png"),
    "report_json": ("Report (JSON)…", "report.json"),
    "report_csv": ("Per-slice table (CSV)…", "report.csv"),
    "seg": ("DICOM Segmentation (SEG)…", "lesions_seg.dcm"),
    "nifti": ("NIfTI label maps and CT (lesions, lung, ct .nii.gz)…", None),
    "report_pdf": ("One-page PDF report…", "report.pdf"),
}
#: Kinds that write into a folder the user picks.
FOLDER_KINDS = ("lesion_pngs", "nifti")


def _run(fn: Callable[[], Any], cancel: threading.Event) -> Generator[None, None, Any]:
    yield None
    return fn()


class Exporter(QObject):
    """Asks where, asks before overwriting, writes in a worker, reports once.

    ``view_state`` returns the options of what is on screen (slice index,
    window, fill, opacity, Grad-CAM) so a PNG matches the view.
    """

    finished = Signal(str)  # one line for the status bar
    failed = Signal(str)

    def __init__(self, parent: QWidget, view_state: Callable[[], dict[str, Any]]) -> None:
        super().__init__(parent)
        self._parent = parent
        self._view_state = view_state
        self._worker: GeneratorWorker | None = None
        self.last_folder = ""
        #: Burn patient name and ID into PNGs and write them into report.json (off unless the user asks).
        self.include_patient = False
        #: Replaced in tests; returns True to overwrite.
        self.ask_overwrite: Callable[[list[Path]], bool] = self._ask_overwrite
        self._retiring: set[GeneratorWorker] = set()
        #: Returns the reader's own measurements (viewer measuring tools) for report.json; None: none.
        self.reader_measurements: Callable[[], list[dict[str, Any]]] | None = None
        #: Replaced in tests; returns the chosen path or "" (cancelled).
        self.choose_path: Callable[[str, str, bool], str] = self._choose_path

    @property
    def busy(self) -> bool:
        return self._worker is not None

    # -- dialogs ------------------------------------------------------------------------------
    def _choose_path(self, title: str, default: str, folder: bool) -> str:
        start = str(Path(self.last_folder or Path.home()) / default) if default else (self.last_folder or str(Path.home()))
        if folder:
            return QFileDialog.getExistingDirectory(self._parent, title, start)
        path, _ = QFileDialog.getSaveFileName(self._parent, title, start, options=QFileDialog.Option.DontConfirmOverwrite)
        return path

    def _ask_overwrite(self, existing: list[Path]) -> bool:
        names = "\n".join(str(p) for p in existing[:8]) + (f"\n… and {len(existing) - 8} more" if len(existing) > 8 else "")
        answer = QMessageBox.question(self._parent, "Overwrite?",
                                      f"{len(existing)} file(s) exist and would be replaced:\n\n{names}\n\nOverwrite?",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    # -- the exports ------------------------------------------------------------------------------
    def export(self, kind: str, result: Any, path: str | None = None) -> bool:
        """Export ``result`` as ``kind`` (see :data:`EXPORT_KINDS`); returns False if nothing was started."""
        from ctscreen.io import export

        if result is None or self.busy:
            return False
        state = self._view_state()
        k = int(state["slice_index"])
        title, default = EXPORT_KINDS[kind]
        if kind == "slice_png":
            default = export.slice_png_name(k)
        folder = kind in FOLDER_KINDS
        target = path or self.choose_path(title.rstrip("…"), default or "", folder)
        if not target:
            return False
        target_path = Path(target)
        png_kw = {"window": state["window"], "fill": state["fill"], "opacity": state["opacity"],
                  "include_patient": self.include_patient}
        if kind == "nifti":
            targets = [target_path / n for n in export.NIFTI_NAMES]
        elif folder:
            targets = [target_path / export.slice_png_name(i) for i in export.lesion_slice_indices(result)]
        else:
            targets = [target_path]
        existing = [p for p in targets if p.exists()]
        force = False
        if existing:
            if not self.ask_overwrite(existing):
                self.finished.emit("Export cancelled; nothing was overwritten.")
                return False
            force = True

        # Taken here, on the GUI thread, so the writer's thread sees a fixed copy.
        reader_measurements = (self.reader_measurements() or None) if self.reader_measurements else None
        jobs: dict[str, Callable[[], Any]] = {
            "slice_png": lambda: export.write_slice_png(result, k, target_path, force=force, cam=state["cam"],
                                                        **png_kw),
            "lesion_pngs": lambda: (target_path.mkdir(parents=True, exist_ok=True),
                                    export.write_lesion_pngs(result, target_path, force=force, **png_kw))[1],
            "montage": lambda: export.write_montage_png(result, target_path, force=force,
                                                        include_patient=self.include_patient),
            "report_json": lambda: export.write_report_json(result, target_path, force=force,
                                                            reader_measurements=reader_measurements,
                                                            include_patient=self.include_patient),
            "report_csv": lambda: export.write_report_csv(result, target_path, force=force),
            "seg": lambda: export.write_seg(result, target_path, force=force),
            "nifti": lambda: (target_path.mkdir(parents=True, exist_ok=True),
                              export.write_nifti(result, target_path, force=force))[1],
            "report_pdf": lambda: export.write_report_pdf(result, target_path, force=force,
                                                          include_patient=self.include_patient,
                                                          reader_measurements=reader_measurements),
        }
        self.last_folder = str(target_path if folder else target_path.parent)
        worker = GeneratorWorker(_run, jobs[kind])
        # Release the exporter before telling anyone it finished: a listener may start the next
        # export straight from the ``finished``/``failed`` signal.
        worker.returned.connect(lambda written: (self._release(worker), self._done(kind, target_path, written)))
        worker.errored.connect(lambda exc: (self._release(worker), self.failed.emit(f"export failed: {exc}")))
        worker.finished.connect(lambda: self._finished(worker))
        self._worker = worker
        worker.start()
        return True

    def _done(self, kind: str, target: Path, written: Any) -> None:
        if kind == "nifti":
            self.finished.emit(f"Wrote {', '.join(p.name for p in written or [])} to {target}")
        elif kind == "lesion_pngs":
            n = len(written or [])
            self.finished.emit(f"Wrote {n} lesion slice PNG(s) to {target}" if n else
                               "No lesion slice to export; nothing was written.")
        else:
            self.finished.emit(f"Wrote {target}")

    def _release(self, worker: GeneratorWorker) -> None:
        if self._worker is worker:
            self._worker = None
            self._retiring.add(worker)  # keep it alive until its thread has ended

    def _finished(self, worker: GeneratorWorker) -> None:
        self._release(worker)
        self._retiring.discard(worker)
        worker.deleteLater()
