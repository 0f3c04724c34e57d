"""Datachannel capture: an MCAP recorder and readers for the inspector.

Grouped by what it does:

- :mod:`~sleap_rtc.capture.format`: the file contract (topics, encodings, the
  raw-frame header, the capture's metadata and ``FORMAT_VERSION``, the schema).
- :mod:`~sleap_rtc.capture.write`: writing. ``recorder`` (:class:`CaptureWriter`,
  :class:`RecordingLink`, :func:`capture_from_env`), ``classify`` (classify,
  redact, hold fragments) and ``parts`` (one MCAP file, written by the ``mcap``
  library's writer).
- :mod:`~sleap_rtc.capture.read`: reading. ``reader`` (:class:`CaptureReader`),
  ``mcapio`` (the records of a file: damage, salvage, bounds), ``frames`` (a
  frame -> a record; reassembly by the protocol's own reassembler), ``decode``
  and ``rawproto`` (schemas from the capture, unknown fields), ``record`` (the
  record and its JSON line), ``legacy`` (all legacy ``TYPE::json`` knowledge).
- :mod:`~sleap_rtc.capture.tojson`: JSON. ``convert`` (json_format's dict and
  JSON), and the ``cat --json`` fast path: ``wirejson`` (wire bytes -> JSON),
  ``jsonlines`` (chunks -> lines), ``parallel`` (``--jobs``).

Names are imported on first use, so ``import sleap_rtc.capture`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sleap_rtc.capture.read.mcapio import CaptureError, Problem
    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.capture.read.record import Record
    from sleap_rtc.capture.write.parts import Connection
    from sleap_rtc.capture.write.recorder import (
        ENV_CAPTURE,
        CaptureWriter,
        RecordingLink,
        capture_from_env,
    )

_WHERE = {
    "CaptureError": "read.mcapio",
    "Problem": "read.mcapio",
    "CaptureReader": "read.reader",
    "Record": "read.record",
    "ENV_CAPTURE": "write.recorder",
    "CaptureWriter": "write.recorder",
    "Connection": "write.parts",
    "RecordingLink": "write.recorder",
    "capture_from_env": "write.recorder",
}

__all__ = [
    "ENV_CAPTURE",
    "CaptureError",
    "CaptureReader",
    "CaptureWriter",
    "Connection",
    "Problem",
    "Record",
    "RecordingLink",
    "capture_from_env",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sleap_rtc.capture' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sleap_rtc.capture.{module}"), name)
