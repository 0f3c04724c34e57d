"""Protocol versions and the Hello/HelloAck negotiation."""

from __future__ import annotations

from typing import NamedTuple

from sleap_rtc_proto.errors import UnsupportedVersion
from sleap_rtc_proto.v1 import version_pb2


class Version(NamedTuple):
    """A protocol version, ordered as (major, minor)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_proto(self) -> version_pb2.ProtocolVersion:
        return version_pb2.ProtocolVersion(major=self.major, minor=self.minor)

    @classmethod
    def from_proto(cls, message: version_pb2.ProtocolVersion) -> Version:
        return cls(message.major, message.minor)


class VersionRange(NamedTuple):
    """An inclusive range of protocol versions a peer speaks."""

    min: Version
    max: Version

    def __str__(self) -> str:
        return f"{self.min}..{self.max}"


#: The version this code writes: schema package v1; 1.1 added JobProgressBatch; 1.2 added
#: labels-file suggestions, client file facts, the REFUSED status and mapping refusals.
CURRENT = Version(1, 2)
#: The versions this code reads and negotiates.
SUPPORTED = VersionRange(Version(1, 0), CURRENT)


def negotiate(local: VersionRange, remote: VersionRange) -> Version:
    """Pick the highest version both ranges contain.

    >>> ours = VersionRange(Version(1, 0), Version(1, 3))
    >>> negotiate(ours, VersionRange(Version(1, 1), Version(1, 2)))
    Version(major=1, minor=2)

    Raises:
        UnsupportedVersion: a range is empty or inverted, or the ranges do not
            overlap; the message names both ranges.
    """
    for who, rng in (("local", local), ("remote", remote)):
        if rng.min.major == 0 or rng.min > rng.max:
            raise UnsupportedVersion(
                f"invalid {who} version range {rng}",
                details={"local": str(local), "remote": str(remote)},
            )
    chosen = min(local.max, remote.max)
    if chosen < max(local.min, remote.min):
        raise UnsupportedVersion(
            f"no common protocol version: this side speaks {local}, the peer speaks {remote}",
            details={"local": str(local), "remote": str(remote)},
        )
    return chosen
