"""The two error families of the protocol runtime.

- **Remote misbehaviour**: :class:`ProtocolError` and its subclasses. The peer
  sent something that cannot be used. Each maps to a wire ErrorCode, names the
  problem in its message and carries machine-readable ``details``;
  :meth:`ProtocolError.to_message` turns it into the ``Error`` body a peer sends
  back, so a bad frame always gets a typed answer. Sessions never raise these
  out of ``receive()``: they become events.
- **Local misuse**: :class:`SessionMisuse`. This side's own code called a
  session wrongly (a request before the handshake, sending a body the other
  side sends). It is a bug in the caller, never sent on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping

from sleap_rtc_proto.v1 import error_pb2


class ProtocolError(Exception):
    """Base class: something the remote peer sent could not be used."""

    code: error_pb2.ErrorCode.ValueType = error_pb2.ERROR_CODE_INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, details: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, str] = dict(details or {})

    def to_message(self) -> error_pb2.Error:
        """The wire Error body describing this failure."""
        return error_pb2.Error(
            code=self.code, message=self.message, details=self.details, retryable=self.retryable
        )


class MalformedFrame(ProtocolError):
    """The bytes are not a valid Envelope (not protobuf, truncated, header missing)."""

    code = error_pb2.ERROR_CODE_MALFORMED


class MissingBody(MalformedFrame):
    """A well-formed Envelope with no body at all."""


class UnsupportedVersion(ProtocolError):
    """A frame of another major version, or no common version in a negotiation."""

    code = error_pb2.ERROR_CODE_UNSUPPORTED_VERSION


class FrameTooLarge(ProtocolError):
    """A frame or a reassembled message over the receiver's size limit."""

    code = error_pb2.ERROR_CODE_TOO_LARGE


class FragmentError(ProtocolError):
    """A fragment set that cannot be reassembled."""

    code = error_pb2.ERROR_CODE_FRAGMENT


class SessionMisuse(RuntimeError):
    """The local caller used a session wrongly (e.g. a request before Hello)."""
