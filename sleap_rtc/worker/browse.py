"""Listing the worker's shared storage (protocol 1.2, feature "browse").

:func:`list_directory` answers one ``DirectoryListRequest`` through the
worker's :class:`~sleap_rtc.worker.mounts.MountPolicy`: the folder must resolve
inside a mount (otherwise a typed Error names the path), an entry that is a
symlink leading out of the mounts (or that cannot be resolved) is left out,
and the answer is one page of at most :data:`MAX_PAGE_SIZE` entries. Blocking
(it reads the file system): the service runs it in a thread.

>>> import tempfile
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp())
>>> (root / "videos").mkdir()
>>> _ = (root / "labels.slp").write_bytes(b"x")
>>> answer = list_directory(MountPolicy([root]), paths_pb2.DirectoryListRequest(path=str(root)))
>>> [e.name for e in answer.entries]
['videos', 'labels.slp']
"""

from __future__ import annotations

import os
import stat

from sleap_rtc.worker.events import make_error
from sleap_rtc.worker.mounts import MountPolicy, OutsideMounts, PathRejected
from sleap_rtc_proto.v1 import error_pb2, paths_pb2

#: Entries per page when the request leaves page_size unset.
DEFAULT_PAGE_SIZE = 200
#: Most entries served in one page, whatever the request asks.
MAX_PAGE_SIZE = 500

_Entry = tuple[int, str, paths_pb2.DirectoryEntry]


def list_directory(
    policy: MountPolicy,
    request: paths_pb2.DirectoryListRequest,
    *,
    disclose_roots: bool = True,
) -> paths_pb2.DirectoryList | error_pb2.Error:
    """One page of the folder ``request.path`` (the mount roots when empty)."""
    if not request.path:
        if not disclose_roots:
            return make_error(
                error_pb2.ERROR_CODE_FORBIDDEN,
                "this worker does not disclose its mounts: give a folder path to list",
            )
        roots = [
            (0, str(root), _entry(str(root), str(root), os.stat(root))) for root in policy.roots
        ]
        return _page(request, "", roots)
    try:
        folder = policy.resolve_str(request.path)
    except OutsideMounts:
        return make_error(
            error_pb2.ERROR_CODE_FORBIDDEN,
            f"{request.path!r} lies outside the worker's shared storage",
            details={"path": request.path},
        )
    except PathRejected as exc:  # NotAbsolute among them
        return make_error(
            error_pb2.ERROR_CODE_INVALID_ARGUMENT, str(exc), details={"path": request.path}
        )
    try:
        with os.scandir(folder) as it:
            found = list(it)
    except FileNotFoundError:
        return make_error(
            error_pb2.ERROR_CODE_NOT_FOUND,
            f"{request.path!r} does not exist on the worker",
            details={"path": request.path},
        )
    except NotADirectoryError:
        return make_error(
            error_pb2.ERROR_CODE_INVALID_ARGUMENT,
            f"{request.path!r} is not a folder",
            details={"path": request.path},
        )
    except OSError as exc:
        return make_error(
            error_pb2.ERROR_CODE_FORBIDDEN,
            f"{request.path!r} cannot be listed: {exc.strerror or exc}",
            details={"path": request.path},
        )
    entries: list[_Entry] = []
    for item in found:
        entry = _examine(policy, folder, item)
        if entry is not None:
            entries.append(entry)
    return _page(request, folder, entries)


def _examine(policy: MountPolicy, folder: str, item: os.DirEntry[str]) -> _Entry | None:
    """The entry for one name, or None when it is left out."""
    full = folder.rstrip("/") + "/" + item.name
    try:
        if item.is_symlink():
            target, inside = policy.locate(full)
            if not inside:
                return None  # never follows a symlink out of the mounts
            st = os.stat(target)
        else:
            st = item.stat(follow_symlinks=False)
    except (OSError, PathRejected):
        return None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    return (0 if stat.S_ISDIR(st.st_mode) else 1, item.name, _entry(item.name, full, st))


def _entry(name: str, path: str, st: os.stat_result) -> paths_pb2.DirectoryEntry:
    is_dir = stat.S_ISDIR(st.st_mode)
    return paths_pb2.DirectoryEntry(
        name=name,
        path=path,
        kind=paths_pb2.ENTRY_KIND_DIRECTORY if is_dir else paths_pb2.ENTRY_KIND_FILE,
        size=0 if is_dir else st.st_size,
        mtime_ns=st.st_mtime_ns,
    )


def _page(
    request: paths_pb2.DirectoryListRequest, folder: str, entries: list[_Entry]
) -> paths_pb2.DirectoryList | error_pb2.Error:
    entries.sort(key=lambda e: (e[0], e[1]))
    token = request.page_token
    if token and not (token.isascii() and token.isdigit() and int(token) < len(entries)):
        return make_error(
            error_pb2.ERROR_CODE_INVALID_ARGUMENT,
            f"page_token {token[:40]!r} is not a token of this listing (start again without one)",
            details={"page_token": token[:40]},
        )
    start = int(token) if token else 0
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    end = start + size
    return paths_pb2.DirectoryList(
        path=folder,
        entries=[e[2] for e in entries[start:end]],
        next_page_token=str(end) if end < len(entries) else "",
        total=len(entries),
    )
