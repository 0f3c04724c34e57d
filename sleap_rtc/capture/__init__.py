"""Datachannel capture: an MCAP recorder and readers for the inspector.

- :class:`CaptureWriter`, :class:`RecordingLink`, :func:`capture_from_env`
  (:mod:`sleap_rtc.capture.recorder`) record frames with the schema embedded.
- :class:`CaptureReader` (:mod:`sleap_rtc.capture.reader`) reads them back,
  decoding with the schema stored in the file; it also reads plain-text
  captures of the legacy ``TYPE::json`` frames (:mod:`sleap_rtc.capture.legacy`).

Writing: ``recorder`` (the writer, its thread, rotation; ``RecordingLink``),
``classify`` (classify, redact, hold fragments), ``parts`` (one MCAP file of a
capture), ``mcapwrite`` (the MCAP writer). Reading: ``mcapio`` (records of a
file, damage reported), ``decode`` (schemas from the capture), ``convert``
(json_format's dict and JSON), ``rawproto`` (unknown fields, decode_raw),
``frames`` (a frame -> a record), ``fragments`` (reassembly), ``record`` (the
record and its JSON line), ``legacy`` (all legacy ``TYPE::json`` knowledge), and the
``cat --json`` fast path: ``wirejson`` (wire bytes -> JSON per message type),
``jsonlines`` (chunks -> lines), ``parallel`` (``--jobs``).

Names are imported on first use, so ``import sleap_rtc.capture`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sleap_rtc.capture.mcapio import CaptureError, Problem
    from sleap_rtc.capture.parts import Connection
    from sleap_rtc.capture.reader import CaptureReader
    from sleap_rtc.capture.record import Record
    from sleap_rtc.capture.recorder import (
        ENV_CAPTURE,
        CaptureWriter,
        RecordingLink,
        capture_from_env,
    )

_WHERE = {
    "CaptureError": "mcapio",
    "Problem": "mcapio",
    "CaptureReader": "reader",
    "Record": "reader",
    "ENV_CAPTURE": "recorder",
    "CaptureWriter": "recorder",
    "Connection": "recorder",
    "RecordingLink": "recorder",
    "capture_from_env": "recorder",
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
