"""What a sleap-rtc capture file holds: topics, encodings, the raw-frame header.

A capture is an MCAP file. Every datachannel frame is one MCAP message whose
``log_time`` is the recorder's wall clock (ns since the Unix epoch) when the
frame was seen. Frames that decode as a protocol Envelope go, unchanged, on a
protobuf channel per connection and direction (topics below) whose schema is
the FileDescriptorSet of ``sleap_rtc_proto.v1``, so the capture decodes without
the code that wrote it. Anything else (legacy ``TYPE::json`` text, bytes that
do not decode) goes on a raw channel per connection, behind a one-line JSON
header naming the direction and the reason.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from google.protobuf.descriptor import FileDescriptor

#: The frame directions, as topic suffixes and in records.
CLIENT_TO_WORKER: Final = "client_to_worker"
WORKER_TO_CLIENT: Final = "worker_to_client"
DIRECTIONS: Final = (CLIENT_TO_WORKER, WORKER_TO_CLIENT)
#: Short arrows for tables.
ARROWS: Final = {CLIENT_TO_WORKER: "C->W", WORKER_TO_CLIENT: "W->C", "": "?"}

TOPIC_PREFIX: Final = "/datachannel/"
#: Topic of the raw channel (frames that are not Envelopes).
RAW_TOPIC: Final = "/datachannel/raw"
#: MCAP message encoding of the raw channel: one JSON header line, b"\n", the frame.
RAW_ENCODING: Final = "x-sleap-rtc-raw"
PROTOBUF_ENCODING: Final = "protobuf"
SCHEMA_NAME: Final = "sleap_rtc_proto.v1.Envelope"
#: Name of the MCAP metadata record describing the capture.
METADATA_NAME: Final = "sleap_rtc.capture"
FORMAT_VERSION: Final = "sleap-rtc-capture/1"
#: The capture format versions this code reads (the number after the slash).
FORMAT_NAME, _, _FORMAT_NUMBER = FORMAT_VERSION.partition("/")
READS_FORMAT: Final = int(_FORMAT_NUMBER)
#: What replaces Hello.token (and JWTs in raw frames) when tokens are redacted.
REDACTED_JWT: Final = "<redacted jwt>"

JWT_RE: Final = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def newer_format(value: str) -> str | None:
    """Why a capture whose metadata names format ``value`` is refused, or None to read it.

    A format this code does not know the layout of (a higher number) is refused
    rather than misread; an older or unnamed one is read.
    """
    name, sep, number = value.partition("/")
    if not sep or name != FORMAT_NAME or not number.isdigit() or int(number) <= READS_FORMAT:
        return None
    return (
        f"the capture is in format {value}, newer than this inspector reads ({FORMAT_VERSION}); "
        "upgrade sleap-rtc to read it"
    )


def topic_for(direction: str) -> str:
    """The protobuf channel topic of a direction."""
    return TOPIC_PREFIX + direction


def direction_of_topic(topic: str) -> str:
    """The direction a topic names, or "" when it names none."""
    for direction in DIRECTIONS:
        if topic.endswith(direction):
            return direction
    return ""


def raw_header(direction: str, reason: str, **extra: str) -> bytes:
    """The JSON header line that precedes a frame on the raw channel."""
    head = {"direction": direction, "reason": reason, **extra}
    return json.dumps(head, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def parse_raw(data: bytes) -> tuple[dict[str, str], bytes]:
    """Split a raw-channel message into its header and the frame.

    Raises:
        ValueError: the header line is missing or not a JSON object.
    """
    line, sep, frame = data.partition(b"\n")
    if not sep:
        raise ValueError("raw record has no header line")
    head = json.loads(line)
    if not isinstance(head, dict):
        raise ValueError("raw record header is not a JSON object")
    return {str(k): str(v) for k, v in head.items()}, frame


def envelope_file_descriptor_set() -> bytes:
    """The FileDescriptorSet of ``sleap_rtc_proto.v1`` (Envelope and all it imports)."""
    from google.protobuf.descriptor_pb2 import FileDescriptorSet

    from sleap_rtc_proto.v1 import envelope_pb2

    fds = FileDescriptorSet()
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        for dep in file.dependencies:
            if dep.name not in seen:
                seen.add(dep.name)
                add(dep)
        file.CopyToProto(fds.file.add())

    seen.add(envelope_pb2.DESCRIPTOR.name)
    add(envelope_pb2.DESCRIPTOR)
    return fds.SerializeToString()
