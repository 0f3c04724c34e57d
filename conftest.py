"""Doctest collection (``--doctest-modules``) of the Qt modules only where Qt is installed.

The core install has no qtpy / PySide6 (they come with the ``gui`` extra); importing
these modules there would be a collection error, not a skipped test.
"""

from importlib.util import find_spec

_GUI = "sleap_rtc/gui/"
QT_MODULES = ["threads.py", "pathdialog.py", "progress.py", "remote.py", "plugin.py"]

collect_ignore = (
    [] if find_spec("qtpy") and find_spec("PySide6") else [_GUI + m for m in QT_MODULES]
)
collect_ignore.append(_GUI + "__main__.py")  # importing it starts SLEAP
