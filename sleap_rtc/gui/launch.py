"""``sleap-rtc gui [labels.slp]`` / ``python -m sleap_rtc.gui``: SLEAP 1.6.6 with the hook.

Starts SLEAP's own MainWindow (``sleap.gui.app.create_app`` / ``MainWindow``)
after :func:`~sleap_rtc.gui.plugin.install`, so every training dialog it opens
has Run Remotely…. ``SLEAP_SKIP_QT_FIX`` is set before importing
``sleap.gui.app`` (on Linux that import otherwise re-executes the process).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run SLEAP's GUI with Run Remotely installed; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("SLEAP_SKIP_QT_FIX", "1")
    try:
        from qtpy import QtWidgets
        from sleap.gui.app import MainWindow  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        print(f"sleap-rtc gui needs SLEAP: pip install 'sleap-rtc[gui]' ({exc})", file=sys.stderr)
        return 2
    from sleap_rtc.gui.plugin import install

    existing = QtWidgets.QApplication.instance()
    app = (existing if isinstance(existing, QtWidgets.QApplication)
           else QtWidgets.QApplication(["sleap-rtc gui"]))
    install(app)
    window = MainWindow(labels_path=args[0] if args else None)
    window.showMaximized()
    return int(app.exec())
