"""sleap-nn's ZMQ progress messages -> typed :class:`ProgressUpdate` (pure, no sockets).

sleap-nn's ProgressReporterZMQ sends one JSON object per frame (jsonpickle of
plain data): ``{"what": "", "event": ..., "logs": {...} | null, ...}`` with
``train_begin`` (``wandb_url``), ``epoch_begin`` (``epoch``), ``batch_start``
(``batch`` only), ``batch_end`` (``epoch``, ``batch``, ``logs``), ``epoch_end``
(``epoch``, ``logs`` with ``train/loss``, ``val/loss``) and ``train_end``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc_proto.v1 import progress_pb2

EVENTS: dict[str, int] = {
    "train_begin": progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN,
    "epoch_begin": progress_pb2.PROGRESS_EVENT_EPOCH_BEGIN,
    "batch_start": progress_pb2.PROGRESS_EVENT_BATCH_START,
    "batch_end": progress_pb2.PROGRESS_EVENT_BATCH_END,
    "epoch_end": progress_pb2.PROGRESS_EVENT_EPOCH_END,
    "train_end": progress_pb2.PROGRESS_EVENT_TRAIN_END,
}

#: Output files listed in JobComplete.outputs (top level of the run dir).


@dataclass(frozen=True)
class ProgressUpdate:
    """One training event, before the job numbers it."""

    event: int
    epoch: int | None = None
    batch: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    what: str = ""

    def to_proto(self, job_id: str, sequence: int) -> progress_pb2.JobProgress:
        msg = progress_pb2.JobProgress(
            job_id=job_id,
            sequence=sequence,
            event=self.event,  # type: ignore[arg-type]
            metrics=dict(self.metrics),
            what=self.what,
        )
        if self.epoch is not None:
            msg.epoch = self.epoch
        if self.batch is not None:
            msg.batch = self.batch
        return msg


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value >= 2**32:
        return None
    return int(value)


def sanitize_metrics(logs: Any) -> dict[str, float]:
    """Numeric entries of a sleap-nn ``logs`` dict as floats; everything else dropped."""
    if not isinstance(logs, Mapping):
        return {}
    out: dict[str, float] = {}
    for key, value in logs.items():
        if not isinstance(key, str) or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
    return out


class ProgressTranslator:
    """sleap-nn's ZMQ messages -> :class:`ProgressUpdate` (one translator per run).

    sleap-nn sends ``{"what", "event", "logs", ...}`` JSON (jsonpickle of plain
    data); ``batch_start`` carries no epoch, so the last ``epoch_begin`` fills it.
    Anything that is not such a message gives ``None``.
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.seen_begin = False
        self.seen_end = False
        self.count = 0

    def translate(self, raw: str | bytes) -> ProgressUpdate | None:
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(msg, dict):
            return None
        event = EVENTS.get(str(msg.get("event", "")))
        if event is None:
            return None
        epoch = _count(msg.get("epoch"))
        if event == progress_pb2.PROGRESS_EVENT_EPOCH_BEGIN and epoch is not None:
            self.epoch = epoch
        if epoch is None and event in (
            progress_pb2.PROGRESS_EVENT_BATCH_START,
            progress_pb2.PROGRESS_EVENT_BATCH_END,
            progress_pb2.PROGRESS_EVENT_EPOCH_END,
        ):
            epoch = self.epoch
        if event in (
            progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN,
            progress_pb2.PROGRESS_EVENT_TRAIN_END,
        ):
            epoch = None
        batch = (
            _count(msg.get("batch"))
            if event
            in (
                progress_pb2.PROGRESS_EVENT_BATCH_START,
                progress_pb2.PROGRESS_EVENT_BATCH_END,
            )
            else None
        )
        what = msg.get("what")
        self.count += 1
        self.seen_begin |= event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
        self.seen_end |= event == progress_pb2.PROGRESS_EVENT_TRAIN_END
        return ProgressUpdate(
            event=event,
            epoch=epoch,
            batch=batch,
            metrics=sanitize_metrics(msg.get("logs")),
            what=what if isinstance(what, str) else "",
        )
