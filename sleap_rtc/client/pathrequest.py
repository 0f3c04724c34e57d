"""The PathCheckRequest the flow sends, with the client's file facts when negotiated.

Protocol 1.2 lets the client tell the worker the size and mtime of its own
copies (``client_files``, feature ``client_file_facts``): a same-name file of
the same size then ranks above a same-name one. The facts go only to a worker
that named the feature in HelloAck; a 1.1 worker gets the 1.1 request.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from sleap_rtc.paths.model import ClientPath, text_problem
from sleap_rtc_proto.v1 import paths_pb2

#: Most files whose facts one request carries.
MAX_FACTS = 10_000


def file_facts(paths: Iterable[str]) -> list[paths_pb2.ClientFile]:
    """Size and mtime of each path that is a regular file here (others are left out)."""
    out: list[paths_pb2.ClientFile] = []
    seen: set[str] = set()
    for path in paths:
        if path in seen or len(out) >= MAX_FACTS:
            continue
        seen.add(path)
        cp = ClientPath.parse(path)
        if cp.relative or text_problem(path) is not None:
            continue
        if cp.windows and os.sep != "\\":
            continue  # a Windows path means nothing on this machine
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        if os.path.isfile(path):
            out.append(paths_pb2.ClientFile(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return out


def path_check_request(
    labels_path: str,
    *,
    path_mappings: Mapping[str, str],
    prefix_mappings: Mapping[str, str],
    facts: Iterable[paths_pb2.ClientFile] = (),
) -> paths_pb2.PathCheckRequest:
    """The request. ``facts`` reach only a worker that agreed to ``client_file_facts``:
    the session leaves them out otherwise (:func:`sleap_rtc_proto.bodies.for_peer`)."""
    return paths_pb2.PathCheckRequest(
        labels_path=labels_path,
        path_mappings=dict(path_mappings),
        prefix_mappings=dict(prefix_mappings),
        client_files=list(facts),
    )
