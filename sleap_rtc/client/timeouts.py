"""How long each step of the flow may take (:class:`FlowTimeouts`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlowTimeouts:
    """Seconds each step may take.

    While following progress the flow probes the worker: when the link has
    been silent for ``probe_after_s`` it sends a JobAttach for the job (after
    the last event it saw, so nothing new is replayed); a live worker answers
    with the job's JobStatus at once. No answer within ``probe_timeout_s``
    means the connection is lost: the flow reconnects once and re-attaches,
    and if that fails too ends with "Connection lost. Try again.". A killed
    worker is so noticed within about ``probe_after_s + probe_timeout_s`` (plus
    the reconnect attempt) instead of the transport's ~30 s; a slow job whose
    worker answers the probes is never reported lost.
    """

    connect_s: float = 20.0
    hello_s: float = 10.0
    check_s: float = 30.0
    submit_s: float = 30.0
    control_s: float = 10.0
    #: Silence on the link (no frame at all) before the flow probes the worker.
    #: 0 turns probing off: the worker is then asked only after ``idle_s``.
    probe_after_s: float = 5.0
    #: How long the worker has to answer a probe before the link counts as lost.
    probe_timeout_s: float = 5.0
    #: Silence before the flow asks for the job's state when probing is off.
    idle_s: float = 300.0
    #: How often the progress loop looks at stop requests.
    tick_s: float = 0.1
    #: How long a browser login may take in all (the user's part and the token's
    #: check) before the flow ends with "Login required. Please try again.".
    login_s: float = 120.0

    @property
    def silence_s(self) -> float:
        """Silence after which the worker is probed."""
        return self.probe_after_s if self.probe_after_s > 0 else self.idle_s
