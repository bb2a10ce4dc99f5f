"""DICOM header of the current slice, as a filterable tree (sequences expand)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

_MAX_VALUE_CHARS = 200
_COLUMNS = ("Tag", "Keyword", "VR", "Value")


def _value_text(elem: Any) -> str:
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.tag == 0x7FE00010:
        length = len(elem.value) if elem.value is not None else 0
        return f"<{length} bytes>"
    try:
        text = str(elem.value)
    except Exception:  # noqa: BLE001 - a broken value must not break the panel
        text = repr(elem.value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "…"


class TagPanel(QWidget):
    """Lists the elements of one pydicom Dataset; the filter matches tag, keyword, name or value."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter tags (e.g. Position, 0020, UID)…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(_COLUMNS))
        self.tree.setHeaderLabels(list(_COLUMNS))
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        header = self.tree.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setColumnWidth(1, 165)
        font = self.tree.font()
        font.setPointSizeF(max(7.5, font.pointSizeF() - 1))
        self.tree.setFont(font)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.tree)
        self._dataset_id: int | None = None

    def set_dataset(self, dataset: Any | None) -> None:
        """Show ``dataset`` (a pydicom Dataset, or None to clear); keeps the filter and scroll."""
        if dataset is not None and id(dataset) == self._dataset_id:
            return
        self._dataset_id = None if dataset is None else id(dataset)
        scroll = self.tree.verticalScrollBar().value()
        self.tree.setUpdatesEnabled(False)
        try:
            self.tree.clear()
            if dataset is not None:
                self.tree.addTopLevelItems(self._items(dataset))
            self._apply_filter(self.filter_edit.text())
        finally:
            self.tree.setUpdatesEnabled(True)
        self.tree.verticalScrollBar().setValue(scroll)

    def _items(self, dataset: Any) -> list[QTreeWidgetItem]:
        items = []
        for elem in dataset:
            tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
            keyword = elem.keyword or elem.name
            if elem.VR == "SQ":
                item = QTreeWidgetItem([tag, keyword, "SQ", f"{len(elem.value)} item(s)"])
                for i, child in enumerate(elem.value):
                    sub = QTreeWidgetItem(["", f"Item {i + 1}", "", ""])
                    sub.addChildren(self._items(child))
                    item.addChild(sub)
            else:
                item = QTreeWidgetItem([tag, keyword, str(elem.VR), _value_text(elem)])
            item.setToolTip(3, item.text(3))
            item.setToolTip(1, elem.name)
            items.append(item)
        return items

    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()

        def visit(item: QTreeWidgetItem) -> bool:
            child_match = False
            for i in range(item.childCount()):
                child_match |= visit(item.child(i))
            own = not needle or any(needle in item.text(c).lower() for c in range(len(_COLUMNS))) \
                or needle in (item.toolTip(1) or "").lower()
            item.setHidden(not (own or child_match))
            if needle and child_match:
                item.setExpanded(True)
            return own or child_match

        for i in range(self.tree.topLevelItemCount()):
            visit(self.tree.topLevelItem(i))

    def find_value(self, keyword: str) -> str | None:
        """The value text shown for a top-level ``keyword`` (for tests and scripting)."""
        hits = self.tree.findItems(keyword, Qt.MatchFlag.MatchExactly, 1)
        return hits[0].text(3) if hits else None
