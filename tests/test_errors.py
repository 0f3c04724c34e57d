"""Typed protocol errors map to wire Error bodies."""

from __future__ import annotations

import pytest

from sleap_rtc_proto.errors import (
    FragmentError,
    FrameTooLarge,
    MalformedFrame,
    MissingBody,
    ProtocolError,
    UnsupportedVersion,
)
from sleap_rtc_proto.v1 import error_pb2


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (ProtocolError, error_pb2.ERROR_CODE_INTERNAL),
        (MalformedFrame, error_pb2.ERROR_CODE_MALFORMED),
        (MissingBody, error_pb2.ERROR_CODE_MALFORMED),
        (UnsupportedVersion, error_pb2.ERROR_CODE_UNSUPPORTED_VERSION),
        (FrameTooLarge, error_pb2.ERROR_CODE_TOO_LARGE),
        (FragmentError, error_pb2.ERROR_CODE_FRAGMENT),
    ],
)
def test_to_message(cls: type[ProtocolError], code: int) -> None:
    err = cls("something named", details={"k": "v"})
    assert isinstance(err, ProtocolError) and str(err) == "something named"
    assert err.to_message() == error_pb2.Error(
        code=code,  # type: ignore[arg-type]
        message="something named",
        details={"k": "v"},
        retryable=False,
    )


def test_details_are_copied_and_default_empty() -> None:
    source = {"a": "1"}
    err = MalformedFrame("m", details=source)
    source["b"] = "2"
    assert err.details == {"a": "1"}
    assert MalformedFrame("m").details == {}
    assert issubclass(MissingBody, MalformedFrame)
