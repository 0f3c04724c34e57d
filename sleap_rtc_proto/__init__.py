"""sleap-rtc protocol: generated bindings (``sleap_rtc_proto.v1``) plus the small
hand-written runtime: :mod:`codec` (envelopes), :mod:`stream` (fragments),
:mod:`versions` (negotiation), :mod:`rules` (semantic validation) and
:mod:`errors` (typed failures).
"""

from sleap_rtc_proto.codec import UnknownBody, body_name, body_of, decode, encode
from sleap_rtc_proto.errors import (
    FragmentError,
    FrameTooLarge,
    MalformedFrame,
    MissingBody,
    ProtocolError,
    UnsupportedVersion,
)
from sleap_rtc_proto.limits import MAX_CONFIG_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.versions import CURRENT, SUPPORTED, Version, VersionRange, negotiate

__version__ = "0.1.0"

__all__ = [
    "CURRENT",
    "MAX_CONFIG_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "SUPPORTED",
    "FragmentError",
    "FrameTooLarge",
    "MalformedFrame",
    "MessageStream",
    "MissingBody",
    "ProtocolError",
    "UnknownBody",
    "UnsupportedVersion",
    "Version",
    "VersionRange",
    "body_name",
    "body_of",
    "decode",
    "encode",
    "negotiate",
]
