"""Version negotiation: the highest common version, or an error naming both ranges."""

from __future__ import annotations

import pytest

from sleap_rtc_proto.errors import UnsupportedVersion
from sleap_rtc_proto.v1 import error_pb2, version_pb2
from sleap_rtc_proto.versions import CURRENT, SUPPORTED, Version, VersionRange, negotiate


def R(lo: str, hi: str) -> VersionRange:
    def v(s: str) -> Version:
        major, minor = s.split(".")
        return Version(int(major), int(minor))

    return VersionRange(v(lo), v(hi))


@pytest.mark.parametrize(
    ("local", "remote", "chosen"),
    [
        (R("1.0", "1.0"), R("1.0", "1.0"), Version(1, 0)),
        (R("1.0", "1.3"), R("1.1", "1.2"), Version(1, 2)),
        (R("1.0", "1.3"), R("1.2", "1.9"), Version(1, 3)),
        (R("1.2", "1.9"), R("1.0", "1.3"), Version(1, 3)),
        (R("1.0", "2.4"), R("2.0", "3.1"), Version(2, 4)),
        (R("1.5", "1.5"), R("1.0", "1.5"), Version(1, 5)),
    ],
)
def test_picks_the_highest_common_version(local, remote, chosen) -> None:
    assert negotiate(local, remote) == chosen
    assert negotiate(remote, local) == chosen


@pytest.mark.parametrize(
    ("local", "remote"),
    [
        (R("1.0", "1.3"), R("1.4", "1.9")),
        (R("1.0", "1.9"), R("2.0", "2.1")),
        (R("2.0", "2.0"), R("1.0", "1.9")),
    ],
)
def test_no_overlap_names_both_ranges(local, remote) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        negotiate(local, remote)
    err = info.value
    assert str(local) in err.message and str(remote) in err.message
    assert err.details == {"local": str(local), "remote": str(remote)}
    assert err.to_message().code == error_pb2.ERROR_CODE_UNSUPPORTED_VERSION


@pytest.mark.parametrize("bad", [R("1.3", "1.1"), R("0.0", "1.0")])
def test_invalid_ranges(bad) -> None:
    for local, remote in ((bad, SUPPORTED), (SUPPORTED, bad)):
        with pytest.raises(UnsupportedVersion, match=f"invalid .* version range {bad}"):
            negotiate(local, remote)


def test_version_helpers() -> None:
    assert str(CURRENT) == "1.2" and str(SUPPORTED) == "1.0..1.2"  # 1.2: paths fields
    assert SUPPORTED.min <= CURRENT <= SUPPORTED.max
    assert Version(1, 10) > Version(1, 9) > Version(0, 99)
    proto = Version(1, 7).to_proto()
    assert proto == version_pb2.ProtocolVersion(major=1, minor=7)
    assert Version.from_proto(proto) == Version(1, 7)
