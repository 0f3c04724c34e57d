"""What SLEAP's Training dialog calls for "Run Remotely" (the seed's components C and D).

The dialog's ``_run_remote_training()``::

    from omegaconf import OmegaConf
    from sleap_rtc.gui.runners import run_presubmission_checks, run_remote_training
    from sleap_rtc.jobs.spec import TrainJobSpec

    config_content = OmegaConf.to_yaml(cfg)                     # 1. config in memory
    check = run_presubmission_checks(slp_path, room_id, worker_id,
                                     resolver=path_dialog)     # 2-4. auth, paths
    if check.cancelled:
        return                                                  # silent return
    if not check.ok:
        QMessageBox.warning(self, "Run Remotely", check.message)
        return
    spec = TrainJobSpec(config_content=config_content, labels_path=check.labels_path,
                        path_mappings=dict(check.path_mappings),
                        prefix_mappings=dict(check.prefix_mappings))
    self.close()                                                # 5. dialog closes
    handle = start_remote_training(spec=spec, room_id=room_id, worker_id=worker_id)
    # 6. progress flows into LossViewer; handle.result() gives the FlowResult

``path_dialog`` is any callable taking a :class:`~sleap_rtc.client.views.CheckView`
and returning a :class:`~sleap_rtc.client.views.Resolution` or ``None`` (cancel).
It is called on the thread running the flow; a Qt dialog should be shown on
the GUI thread (e.g. through a blocking queued signal).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from sleap_rtc.api import check_paths_async, run_training_async
from sleap_rtc.client.lossviewer import DEFAULT_CONTROLLER_PORT, DEFAULT_PUBLISH_PORT
from sleap_rtc.client.results import FlowResult, FlowStatus, PresubmissionResult
from sleap_rtc.jobs.spec import TrainJobSpec

__all__ = [
    "PresubmissionResult",
    "RemoteTraining",
    "run_presubmission_checks",
    "run_remote_training",
    "start_remote_training",
]


def run_presubmission_checks(
    slp_path: str,
    room_id: str | None = None,
    worker_id: str | None = None,
    *,
    path_mappings: Mapping[str, str] | None = None,
    prefix_mappings: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> PresubmissionResult:
    """Seed steps 2-4: login check, connect to the worker, check and resolve paths.

    Submits nothing. The result says success (``labels_path`` and the mappings
    to put in the TrainJobSpec), cancelled (return to the dialog silently) or
    error (show ``message``). Keyword arguments go to
    :func:`sleap_rtc.api.check_paths` (``resolver``, ``connect``, ``auth``, ...).

    Example::

        result = run_presubmission_checks("/data/fly.slp", "lab", "gpu1",
                                          resolver=AutoResolver())
    """
    return asyncio.run(
        check_paths_async(
            slp_path,
            room=room_id,
            worker=worker_id,
            path_mappings=path_mappings,
            prefix_mappings=prefix_mappings,
            **kwargs,
        )
    )


def run_remote_training(
    spec: TrainJobSpec | None = None,
    *,
    room_id: str | None = None,
    worker_id: str | None = None,
    lossviewer: bool = True,
    publish_port: int = DEFAULT_PUBLISH_PORT,
    controller_port: int | None = DEFAULT_CONTROLLER_PORT,
    **kwargs: Any,
) -> FlowResult:
    """Seed steps 5-6 for a ready spec: re-check its paths, submit, stream progress.

    Passes the spec through to :func:`sleap_rtc.api.run_training` on one
    connection (other keyword arguments too: ``connect``, ``auth``,
    ``capture="run.mcap"``, ...); progress goes to SLEAP's LossViewer
    (``lossviewer=True``) and its Stop button stops the job. Blocks until the job ends; see
    :func:`start_remote_training` to run it in the background.

    Example::

        result = run_remote_training(spec=spec, room_id="lab", worker_id="gpu1")
        if not result.ok:
            show_error(result.message)
    """
    return asyncio.run(
        run_training_async(
            spec=spec,
            room=room_id,
            worker=worker_id,
            lossviewer=lossviewer,
            publish_port=publish_port,
            controller_port=controller_port,
            **kwargs,
        )
    )


class RemoteTraining:
    """A remote training running on a background thread (see :func:`start_remote_training`)."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._result: FlowResult | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sleap-rtc-training", daemon=True)

    def _run(self) -> None:
        try:
            self._result = run_remote_training(**self._kwargs)
        except Exception as exc:  # never leave the GUI waiting on a dead thread
            self._result = FlowResult(FlowStatus.ERROR, f"Remote training failed: {exc}")
        finally:
            self._done.set()

    def start(self) -> RemoteTraining:
        self._thread.start()
        return self

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> FlowResult | None:
        """The result once finished, or None if ``timeout`` passed first."""
        self._done.wait(timeout)
        return self._result


def start_remote_training(spec: TrainJobSpec, **kwargs: Any) -> RemoteTraining:
    """:func:`run_remote_training` on a background thread, so the GUI keeps running
    (LossViewer needs the Qt event loop). Returns a handle with ``done()`` and ``result()``.

    Example::

        handle = start_remote_training(spec, room_id="lab", worker_id="gpu1")
    """
    return RemoteTraining(spec=spec, **kwargs).start()
