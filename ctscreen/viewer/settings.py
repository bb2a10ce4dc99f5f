"""What the viewer remembers between sessions (QSettings, organisation "ctscreen").

Tests and the ``--screenshot`` mode use an isolated INI file instead of the
user's settings: pass ``settings_dir`` or set ``CTSCREEN_SETTINGS_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

ORGANISATION = "ctscreen"
APPLICATION = "ctscreen"
SETTINGS_DIR_ENV = "CTSCREEN_SETTINGS_DIR"
MAX_RECENT = 10


class ViewerSettings:
    """Typed access to the few values the viewer keeps.

    Parameters
    ----------
    settings_dir : str or Path, optional
        Folder for an isolated ``ctscreen.ini``; defaults to ``$CTSCREEN_SETTINGS_DIR``,
        else the platform's usual place for organisation "ctscreen".
    """

    def __init__(self, settings_dir: str | os.PathLike | None = None) -> None:
        settings_dir = settings_dir or os.environ.get(SETTINGS_DIR_ENV) or None
        if settings_dir:
            Path(settings_dir).mkdir(parents=True, exist_ok=True)
            self.qsettings = QSettings(str(Path(settings_dir) / "ctscreen.ini"), QSettings.Format.IniFormat)
        else:
            self.qsettings = QSettings(ORGANISATION, APPLICATION)

    # -- plain values -----------------------------------------------------------
    def _get_str(self, key: str, default: str = "") -> str:
        value = self.qsettings.value(key, default)
        return str(value) if value is not None else default

    def _get_float(self, key: str, default: float) -> float:
        try:
            return float(self.qsettings.value(key, default))
        except (TypeError, ValueError):
            return default

    @property
    def last_folder(self) -> str:
        return self._get_str("files/last_folder")

    @last_folder.setter
    def last_folder(self, folder: str) -> None:
        self.qsettings.setValue("files/last_folder", folder)

    @property
    def window_preset(self) -> str:
        return self._get_str("view/window_preset", "lung")

    @window_preset.setter
    def window_preset(self, name: str) -> None:
        self.qsettings.setValue("view/window_preset", name)

    def overlay_value(self, key: str, default: float) -> float:
        return self._get_float(f"overlay/{key}", default)

    def set_overlay_value(self, key: str, value: float) -> None:
        self.qsettings.setValue(f"overlay/{key}", value)

    def value(self, key: str, default: str = "") -> str:
        return self._get_str(key, default)

    def set_value(self, key: str, value: str) -> None:
        self.qsettings.setValue(key, value)

    # -- recent folders -----------------------------------------------------------
    def recent_folders(self) -> list[str]:
        value = self.qsettings.value("files/recent", [])
        if isinstance(value, str):  # QSettings returns a bare string for a one-item list
            value = [value]
        return [str(v) for v in (value or []) if v]

    def add_recent_folder(self, folder: str) -> list[str]:
        folder = str(Path(folder))
        recent = [f for f in self.recent_folders() if f != folder]
        recent.insert(0, folder)
        recent = recent[:MAX_RECENT]
        self.qsettings.setValue("files/recent", recent)
        self.last_folder = folder
        return recent

    def clear_recent_folders(self) -> None:
        self.qsettings.setValue("files/recent", [])

    # -- window geometry -------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        value = self.qsettings.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    def state(self) -> QByteArray | None:
        value = self.qsettings.value("window/state")
        return value if isinstance(value, QByteArray) else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self.qsettings.setValue("window/geometry", geometry)
        self.qsettings.setValue("window/state", state)

    def sync(self) -> None:
        self.qsettings.sync()
