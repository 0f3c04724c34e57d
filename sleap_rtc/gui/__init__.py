"""SLEAP GUI integration: Run Remotely in SLEAP's training dialog, and the runners.

``install(app)`` adds Run Remotely… to every LearningDialog of a running SLEAP;
``attach(dialog)`` to one. They need SLEAP (the ``gui`` extra) and are imported
lazily, so the runners work without Qt.

>>> from sleap_rtc.gui import run_presubmission_checks, run_remote_training
"""

from typing import Any

from sleap_rtc.gui.runners import (
    RemoteTraining,
    run_presubmission_checks,
    run_remote_training,
    start_remote_training,
)


def install(app: Any = None, **kwargs: Any) -> Any:
    """See :func:`sleap_rtc.gui.plugin.install`."""
    from sleap_rtc.gui.plugin import install as _install

    return _install(app, **kwargs)


def attach(dialog: Any, **kwargs: Any) -> Any:
    """See :func:`sleap_rtc.gui.plugin.attach`."""
    from sleap_rtc.gui.plugin import attach as _attach

    return _attach(dialog, **kwargs)


__all__ = [
    "RemoteTraining",
    "attach",
    "install",
    "run_presubmission_checks",
    "run_remote_training",
    "start_remote_training",
]
