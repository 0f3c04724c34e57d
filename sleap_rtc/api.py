"""The Python API: train remotely and check paths, in one call each.

Thin doors into :class:`~sleap_rtc.client.flow.PresubmissionFlow`. By default
they read the client settings (``client.toml``: signaling server, room,
worker), the stored login token, and connect over WebRTC (the wiring is
:mod:`sleap_rtc.client.wiring`); tests and embedders pass ``connect`` (and
``auth``) instead. ``capture="run.mcap"`` records the datachannel traffic.

Train with a config built in memory (the seed's ``config_content``)::

    from omegaconf import OmegaConf
    from sleap_rtc.api import run_training

    result = run_training(
        config_content=OmegaConf.to_yaml(cfg),
        labels_path="/Volumes/lab/fly/labels.slp",
        room="lab", worker="gpu-box-1",
        max_epochs=50,
    )
    print(result.status, result.message, result.job_id)

Check that the worker sees the labels file and every video::

    from sleap_rtc.api import check_paths

    result = check_paths("/Volumes/lab/fly/labels.slp", room="lab", worker="gpu-box-1")
    for video in result.check.missing:
        print(video.original_path, [s.worker_path for s in video.suggestions])
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sleap_rtc.client.auth import AuthCheck
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.following import ProgressSink
from sleap_rtc.client.lossviewer import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PUBLISH_PORT,
    LossViewerBridge,
)
from sleap_rtc.client.resolve import PrefixStore, Resolver
from sleap_rtc.client.results import AcceptedView, FlowResult
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.client.training_config import ConfigSource
from sleap_rtc.client.wiring import Connect, build_flow, open_capture, recording, stored_login
from sleap_rtc.config.client import load, with_overrides
from sleap_rtc.jobs.spec import TrainJobSpec

if TYPE_CHECKING:
    from sleap_rtc.capture.write.recorder import CaptureWriter

__all__ = [
    "FlowResult",
    "TrainJobSpec",
    "check_paths",
    "check_paths_async",
    "run_training",
    "run_training_async",
]

#: The client name these doors send in Hello.
CLIENT_NAME = "sleap-rtc api"


async def run_training_async(
    config_content: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    *,
    labels_path: str | None = None,
    room: str | None = None,
    worker: str | None = None,
    config: ConfigSource | None = None,
    spec: TrainJobSpec | None = None,
    path_mappings: Mapping[str, str] | None = None,
    prefix_mappings: Mapping[str, str] | None = None,
    val_labels_path: str | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    run_name: str | None = None,
    resume_ckpt_path: str | None = None,
    resolver: Resolver | None = None,
    progress: Sequence[ProgressSink] = (),
    lossviewer: bool = False,
    publish_port: int = DEFAULT_PUBLISH_PORT,
    controller_port: int | None = DEFAULT_CONTROLLER_PORT,
    follow: bool = True,
    on_accepted: Callable[[AcceptedView], Any] | None = None,
    retry_job_id: str | None = None,
    server: str | None = None,
    token: str | None = None,
    connect: Connect | None = None,
    auth: AuthCheck | None = None,
    store: PrefixStore | None = None,
    timeouts: FlowTimeouts | None = None,
    capture: str | os.PathLike[str] | None = None,
) -> FlowResult:
    """Async form of :func:`run_training` (same arguments)."""
    overrides = {
        k: v
        for k, v in {
            "val_labels_path": val_labels_path,
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "run_name": run_name,
            "resume_ckpt_path": resume_ckpt_path,
        }.items()
        if v is not None
    }
    source: ConfigSource | None = config
    if config_path is not None:
        if config is not None:
            raise TypeError("give config or config_path, not both")
        source = os.fspath(config_path)
    sinks = list(progress)
    writer = _open_capture(capture)
    try:
        flow = _flow(
            room=room, worker=worker, server=server, token=token, connect=connect, auth=auth,
            resolver=resolver, store=store, timeouts=timeouts, sinks=sinks, follow=follow,
            on_accepted=on_accepted, capture=writer,
        )
        if lossviewer:
            flow.sinks.append(
                LossViewerBridge(
                    publish_port=publish_port,
                    controller_port=controller_port,
                    on_stop=flow.request_stop,
                )
            )
        return await flow.run(
            labels_path=labels_path,
            config=source,
            config_content=config_content,
            spec=spec,
            path_mappings=path_mappings,
            prefix_mappings=prefix_mappings,
            retry_job_id=retry_job_id,
            **overrides,
        )
    finally:
        if writer is not None:
            await writer.aclose()


def run_training(
    config_content: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> FlowResult:
    """Check paths, submit a training job and follow it, over one connection.

    Give the config as ``config_content`` (YAML text, the seed's way),
    ``config_path`` (a local YAML file, read and sent inline), ``config`` (a
    dict or DictConfig) or ``spec`` (a :class:`TrainJobSpec`).

    Args:
        labels_path: the labels file (client path; the worker's view decides).
        room / worker / server / token: where to connect (default: settings and
            the stored login).
        path_mappings / prefix_mappings: known client -> worker mappings.
        max_epochs, batch_size, learning_rate, run_name, val_labels_path,
            resume_ckpt_path: overrides of the config.
        resolver: called when paths are missing (see :mod:`sleap_rtc.client.resolve`).
        progress: progress sinks; ``lossviewer=True`` adds SLEAP's LossViewer
            bridge on ``publish_port`` / ``controller_port``.
        follow: follow the job to its end (False: return once accepted).
        retry_job_id: retry after "Connection lost. Try again." with the lost
            result's ``job_id``: a job the worker already has is followed (not
            checked or submitted again); one it never got is checked and submitted.
        timeouts: per-step limits, e.g. how fast a silent worker counts as lost
            (``FlowTimeouts(probe_after_s=..., probe_timeout_s=...)``).
        connect / auth: injected transport and login (tests, embedding).
        capture: record the datachannel traffic into this MCAP file (read it
            with ``sleap-rtc inspect``); a file that cannot be created is logged
            and left out, the training goes on.

    Returns:
        A :class:`FlowResult`: status, message, job id, mappings used, answers.

    Example::

        result = run_training(config_content=yaml_text, labels_path="/data/l.slp",
                              room="lab", worker="gpu1")
    """
    return asyncio.run(run_training_async(config_content, config_path, **kwargs))


async def check_paths_async(
    labels_path: str,
    *,
    room: str | None = None,
    worker: str | None = None,
    path_mappings: Mapping[str, str] | None = None,
    prefix_mappings: Mapping[str, str] | None = None,
    resolver: Resolver | None = None,
    server: str | None = None,
    token: str | None = None,
    connect: Connect | None = None,
    auth: AuthCheck | None = None,
    store: PrefixStore | None = None,
    timeouts: FlowTimeouts | None = None,
    capture: str | os.PathLike[str] | None = None,
) -> FlowResult:
    """Async form of :func:`check_paths`."""
    writer = _open_capture(capture)
    try:
        flow = _flow(
            room=room, worker=worker, server=server, token=token, connect=connect, auth=auth,
            resolver=resolver, store=store, timeouts=timeouts, sinks=[], follow=False,
            on_accepted=None, capture=writer,
        )
        return await flow.check(
            labels_path, path_mappings=path_mappings, prefix_mappings=prefix_mappings
        )
    finally:
        if writer is not None:
            await writer.aclose()


def check_paths(labels_path: str, **kwargs: Any) -> FlowResult:
    """Ask the worker whether it sees ``labels_path`` and every video in it.

    Submits nothing. With a ``resolver``, missing paths are resolved and
    re-checked; without one, missing paths end in an error listing them (the
    result's ``check`` holds the worker's found/missing lists and suggestions).
    Takes the connection arguments of :func:`run_training` (``room``, ``worker``,
    ``server``, ``token``, ``connect``, ``auth``, ``capture``, ...).

    Example::

        result = check_paths("/data/fly.slp", room="lab", worker="gpu1")
        if result.ok:
            spec = TrainJobSpec(config_content=yaml_text, labels_path=result.labels_path,
                                path_mappings=dict(result.path_mappings))
    """
    return asyncio.run(check_paths_async(labels_path, **kwargs))


# ----------------------------------------------------------------------------- wiring


def _open_capture(capture: str | os.PathLike[str] | None) -> CaptureWriter | None:
    return None if capture is None else open_capture(os.fspath(capture))


def _flow(
    *,
    room: str | None,
    worker: str | None,
    server: str | None,
    token: str | None,
    connect: Connect | None,
    auth: AuthCheck | None,
    resolver: Resolver | None,
    store: PrefixStore | None,
    timeouts: FlowTimeouts | None,
    sinks: list[ProgressSink],
    follow: bool,
    on_accepted: Callable[[AcceptedView], Any] | None,
    capture: CaptureWriter | None,
) -> PresubmissionFlow:
    """The flow over ``connect`` (injected), else over WebRTC from the client settings.

    The settings are read only when nothing is injected, so an embedder's
    ``connect`` never needs a client.toml.
    """
    from sleap_rtc import __version__

    timeouts = timeouts or FlowTimeouts()
    if connect is None:
        settings = with_overrides(load(), server=server, room=room, worker=worker)
        return build_flow(
            settings,
            auth or stored_login(settings, token, login_timeout_s=timeouts.login_s),
            client_name=CLIENT_NAME,
            worker_id=worker or "",
            resolver=resolver,
            sinks=sinks,
            store=store,
            capture=capture,
            follow_progress=follow,
            on_accepted=on_accepted,
            timeouts=timeouts,
        )
    if capture is not None:
        connect = recording(connect, capture, remote_peer=worker or "")
    return PresubmissionFlow(
        connect=connect,
        auth=auth,
        resolver=resolver,
        sinks=sinks,
        store=store,
        worker_id=worker or "",
        follow_progress=follow,
        on_accepted=on_accepted,
        timeouts=timeouts,
        software=f"sleap-rtc {__version__}",
        client_name=CLIENT_NAME,
    )
