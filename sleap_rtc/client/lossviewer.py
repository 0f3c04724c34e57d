"""JobProgress -> SLEAP's LossViewer over ZMQ, in exactly sleap-nn's message shapes.

SLEAP's LossViewer binds a SUB on ``tcp://127.0.0.1:<publish_port>`` (default
9001) and a PUB on ``<controller_port>`` (default 9000). Like sleap-nn's
``ProgressReporterZMQ`` the bridge *connects* a publisher to the first and
sends one JSON object per frame (``send_string``)::

    {"what": "", "event": "train_begin", "logs": null, "wandb_url": null}
    {"what": "", "event": "epoch_begin", "logs": null, "epoch": 0}
    {"what": "", "event": "batch_end", "logs": {"loss": 0.5}, "epoch": 0, "batch": 3}
    {"what": "", "event": "epoch_end", "logs": {"train/loss": 0.5, "val/loss": 0.4}, "epoch": 0}
    {"what": "", "event": "train_end", "logs": null}

and, like sleap-nn's ``TrainingControllerZMQ``, connects a SUB to the second,
turning LossViewer's ``{"command": "stop"}`` into a stop request (the flow
sends JobControl STOP).

Nothing is dropped: the send high-water mark is 0 (unlimited), and the first
send waits for LossViewer's subscription to arrive (an XPUB sees it; bounded by
``subscriber_wait_s``) and at least the slow-joiner delay. ``train_begin`` is
always sent first: if the stream starts mid-training (after a reconnect) one is
synthesized, because LossViewer drops everything before it.

Example::

    bridge = LossViewerBridge(publish_port=9001, controller_port=9000)
    bridge.open()
    bridge.publish(progress)          # a JobProgress
    if bridge.stop_requested(): ...   # LossViewer's Stop Early button
    bridge.close()
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from sleap_rtc.client.events import Event, JobCompleted, JobFailedEvent, ProgressReceived
from sleap_rtc_proto.v1 import progress_pb2

log = logging.getLogger(__name__)

DEFAULT_PUBLISH_PORT = 9001
DEFAULT_CONTROLLER_PORT = 9000
#: Seconds to wait after connecting before the first send (ZMQ slow joiner).
SLOW_JOINER_S = 0.2
#: Longest wait for LossViewer's subscription before sending anyway.
SUBSCRIBER_WAIT_S = 2.0
#: Milliseconds queued messages (train_end) may still flush after close.
FLUSH_MS = 1000

_EVENT_NAMES = {
    progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN: "train_begin",
    progress_pb2.PROGRESS_EVENT_EPOCH_BEGIN: "epoch_begin",
    progress_pb2.PROGRESS_EVENT_BATCH_START: "batch_start",
    progress_pb2.PROGRESS_EVENT_BATCH_END: "batch_end",
    progress_pb2.PROGRESS_EVENT_EPOCH_END: "epoch_end",
    progress_pb2.PROGRESS_EVENT_TRAIN_END: "train_end",
}


def _logs(progress: progress_pb2.JobProgress) -> dict[str, float]:
    # jsonpickle (LossViewer's decoder) treats "py/..." keys as type tags: never send them.
    return {k: v for k, v in progress.metrics.items() if not k.startswith("py/")}


def progress_message(progress: progress_pb2.JobProgress, what: str = "") -> dict[str, Any] | None:
    """The sleap-nn message for one JobProgress (None for an unknown event).

    >>> from sleap_rtc_proto.v1 import progress_pb2 as p
    >>> progress_message(p.JobProgress(event=p.PROGRESS_EVENT_BATCH_END, epoch=0, batch=3,
    ...                                metrics={"loss": 0.5}))
    {'what': '', 'event': 'batch_end', 'logs': {'loss': 0.5}, 'epoch': 0, 'batch': 3}
    """
    event = progress.event
    name = _EVENT_NAMES.get(event)
    if name is None:
        return None
    message: dict[str, Any] = {"what": progress.what or what, "event": name, "logs": None}
    if event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN:
        message["wandb_url"] = None
    elif event == progress_pb2.PROGRESS_EVENT_EPOCH_BEGIN:
        message["epoch"] = progress.epoch
    elif event == progress_pb2.PROGRESS_EVENT_BATCH_START:
        message["batch"] = progress.batch
    elif event == progress_pb2.PROGRESS_EVENT_BATCH_END:
        message["logs"] = _logs(progress)
        message["epoch"] = progress.epoch
        message["batch"] = progress.batch
    elif event == progress_pb2.PROGRESS_EVENT_EPOCH_END:
        message["logs"] = _logs(progress)
        message["epoch"] = progress.epoch
    return message


class LossViewerBridge:
    """Publishes job progress to LossViewer and reads its Stop button.

    Args:
        publish_port: LossViewer's progress port (its SUB binds it).
        controller_port: LossViewer's control port (its PUB binds it); None
            disables Stop.
        host: always loopback for LossViewer; configurable for tests.
        slow_joiner_s: minimum delay between connect and the first send.
        subscriber_wait_s: longest wait for the subscription to arrive.
        on_stop: called once when LossViewer asks to stop.
        context: a ZMQ context (default: the process-wide instance).
        sleep: injected for tests.
    """

    def __init__(
        self,
        *,
        publish_port: int = DEFAULT_PUBLISH_PORT,
        controller_port: int | None = DEFAULT_CONTROLLER_PORT,
        host: str = "127.0.0.1",
        slow_joiner_s: float = SLOW_JOINER_S,
        subscriber_wait_s: float = SUBSCRIBER_WAIT_S,
        on_stop: Callable[[], Any] | None = None,
        context: zmq.Context[Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.publish_address = f"tcp://{host}:{publish_port}"
        self.controller_address = (
            f"tcp://{host}:{controller_port}" if controller_port is not None else None
        )
        self.slow_joiner_s = slow_joiner_s
        self.subscriber_wait_s = subscriber_wait_s
        self.on_stop = on_stop
        self._context = context or zmq.Context.instance()
        self._sleep = sleep
        self._pub: zmq.Socket[Any] | None = None
        self._sub: zmq.Socket[Any] | None = None
        self._opened_at = 0.0
        self._ready = False
        self._what = ""
        self._began = False
        self._ended = False
        self._stop = False
        #: Messages sent so far.
        self.sent = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Connect both sockets (idempotent). The first send waits for the subscriber."""
        if self._pub is not None:
            return
        pub = self._context.socket(zmq.XPUB)
        pub.setsockopt(zmq.SNDHWM, 0)  # unlimited: a progress message is never dropped
        pub.setsockopt(zmq.LINGER, FLUSH_MS)
        pub.connect(self.publish_address)
        self._pub = pub
        self._opened_at = time.monotonic()
        if self.controller_address is not None:
            sub = self._context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.setsockopt_string(zmq.SUBSCRIBE, "")
            sub.connect(self.controller_address)
            self._sub = sub

    def close(self) -> None:
        """Close the sockets; queued messages still flush for up to FLUSH_MS."""
        for sock in (self._pub, self._sub):
            if sock is not None and not sock.closed:
                sock.close()
        self._pub = self._sub = None
        self._ready = False

    def __enter__(self) -> LossViewerBridge:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ progress

    def handle(self, event: Event) -> None:
        """Progress sink entry point: JobProgress is published; the end of a
        job closes the run with ``train_end`` if the trainer did not."""
        if isinstance(event, ProgressReceived):
            self.publish(event.progress)
        elif isinstance(event, JobCompleted | JobFailedEvent) and self._began and not self._ended:
            self._ended = True
            self._send({"what": self._what, "event": "train_end", "logs": None})

    def publish(self, progress: progress_pb2.JobProgress) -> None:
        """Publish one JobProgress in sleap-nn's shape (train_begin always first)."""
        message = progress_message(progress, self._what)
        if message is None:
            return
        if message["event"] == "train_begin":
            self._what = message["what"]
            self._began = True
            self._ended = False
        elif not self._began:
            self._what = message["what"]
            self._began = True
            self._send({"what": self._what, "event": "train_begin", "logs": None,
                        "wandb_url": None})
        if message["event"] == "train_end":
            self._ended = True
        self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        self.open()
        assert self._pub is not None
        if not self._ready:
            self._wait_for_subscriber()
        self._pub.send_string(json.dumps(message))
        self.sent += 1

    def _wait_for_subscriber(self) -> None:
        assert self._pub is not None
        deadline = self._opened_at + self.subscriber_wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._pub.poll(int(left * 1000) + 1, zmq.POLLIN):
                log.info("no LossViewer subscription on %s; sending anyway", self.publish_address)
                break
            frame = self._pub.recv()
            if frame[:1] == b"\x01":  # a subscription
                break
        rest = self._opened_at + self.slow_joiner_s - time.monotonic()
        if rest > 0:
            self._sleep(rest)
        self._ready = True

    # ------------------------------------------------------------------ control

    def poll_commands(self) -> list[dict[str, Any]]:
        """Controller messages received since the last call (non-blocking)."""
        out: list[dict[str, Any]] = []
        if self._sub is None:
            return out
        for _ in range(1000):
            try:
                raw = self._sub.recv_string(zmq.NOBLOCK)
            except zmq.Again:
                break
            except (zmq.ZMQError, UnicodeDecodeError) as exc:
                log.warning("bad controller frame: %s", exc)
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                log.warning("ignoring a controller message that is not JSON: %r", raw[:100])
                continue
            if isinstance(message, dict):
                out.append(message)
        for message in out:
            if message.get("command") == "stop" and not self._stop:
                self._stop = True
                if self.on_stop is not None:
                    self.on_stop()
        return out

    def stop_requested(self) -> bool:
        """True once LossViewer asked to stop (polls the controller socket)."""
        self.poll_commands()
        return self._stop
