#!/usr/bin/env python3
"""The stand-in trainer (fake_sleap_nn.py), paced by the test that runs it.

Same command line and behaviour as ``fake_sleap_nn.py``, plus two optional keys in
the config's ``fake:`` section:

- ``hold_file``: a path. After publishing the ``epoch_end`` of epoch
  ``hold_after_epoch`` (0-based, default 0) the trainer waits until this file
  exists, then carries on. A test creates the file once it has seen what it
  needed (for example a client re-attached while the job still runs), so the
  job's timing never depends on how loaded the machine is.
- ``hold_timeout``: seconds to wait at most (default 300), so a test that
  fails before releasing the trainer cannot leave its worker busy for ever.

Without ``hold_file`` it is exactly the stand-in trainer. The pause works by
wrapping the ZMQ publisher the stand-in trainer creates; the script itself is
not changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import yaml
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_sleap_nn


def _hold_settings() -> tuple[Path | None, int, float]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    args, _ = parser.parse_known_args()
    if not args.config:
        return None, 0, 0.0
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    fake = cfg.get("fake") or {}
    hold = fake.get("hold_file")
    return (
        Path(hold) if hold else None,
        int(fake.get("hold_after_epoch", 0)),
        float(fake.get("hold_timeout", 300)),
    )


class _PacedPublisher:
    """A (X)PUB socket that, after one epoch's ``epoch_end``, waits for the hold file."""

    def __init__(self, sock: Any, hold_file: Path, after_epoch: int, timeout: float) -> None:
        self._sock = sock
        self._hold_file = hold_file
        self._after_epoch = after_epoch
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def send_string(self, text: str, *args: Any, **kwargs: Any) -> Any:
        sent = self._sock.send_string(text, *args, **kwargs)
        message = json.loads(text)
        if message.get("event") == "epoch_end" and message.get("epoch") == self._after_epoch:
            print(f"paced trainer: holding after epoch {self._after_epoch}", flush=True)
            deadline = time.monotonic() + self._timeout
            while not self._hold_file.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            print("paced trainer: released", flush=True)
        return sent


def main() -> int:
    hold_file, after_epoch, timeout = _hold_settings()
    if hold_file is not None:

        class PacedContext(zmq.Context):  # type: ignore[type-arg]
            def socket(self, socket_type: int, **kwargs: Any) -> Any:  # type: ignore[override]
                sock = super().socket(socket_type, **kwargs)
                if socket_type in (zmq.PUB, zmq.XPUB):
                    return _PacedPublisher(sock, hold_file, after_epoch, timeout)
                return sock

        shim = types.ModuleType("zmq")
        shim.__dict__.update(zmq.__dict__)
        shim.Context = PacedContext  # type: ignore[attr-defined]
        fake_sleap_nn.zmq = shim  # type: ignore[attr-defined]
    return fake_sleap_nn.main()


if __name__ == "__main__":
    sys.exit(main())
