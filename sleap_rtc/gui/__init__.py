"""SLEAP GUI integration: the runners SLEAP's Training dialog calls.

>>> from sleap_rtc.gui import run_presubmission_checks, run_remote_training
"""

from sleap_rtc.gui.runners import (
    RemoteTraining,
    run_presubmission_checks,
    run_remote_training,
    start_remote_training,
)

__all__ = [
    "RemoteTraining",
    "run_presubmission_checks",
    "run_remote_training",
    "start_remote_training",
]
