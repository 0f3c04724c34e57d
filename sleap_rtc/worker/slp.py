"""Read the video references of a SLEAP labels (.slp) file, fast.

The fast path reads only the ``videos_json`` dataset with h5py (about 14x
faster than loading the labels with sleap-io). Each row is the JSON that
sleap-io's ``video_to_dict`` wrote::

    {"filename": ..., "backend": {"filename": ..., "filenames": [...]?, "dataset": ...},
     "source_video": {...}?}

* A media or HDF5 file: ``backend.filename`` (or the top-level ``filename``).
* An image sequence: ``backend.filenames`` (an ``ImageVideo``), or a list stored
  as ``filename`` when the video was saved without an open backend.
* An embedded video (.pkg.slp): ``backend.filename == "."`` and a ``dataset`` such
  as ``video0/video``; the original video is the row's ``source_video``, else the
  ``json`` attribute/dataset of the ``{group}/source_video`` group, else the
  legacy ``{group}/original_video`` group's ``json`` attribute.

sleap-io is the fallback only when a row has a shape this reader does not
understand (no usable filename in the row); it then loads the file's videos
with ``open_backend=False``. Paths are returned as stored; sleap-io writes
forward slashes, files from older SLEAP may hold Windows backslashes.

The caller must have put the labels path through the mounts policy first.
HDF5 links to other files, external raw storage and virtual datasets are
refused, so reading a labels file never reads a file outside it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5py

from sleap_rtc_proto.v1 import paths_pb2

#: The most videos one labels file may reference before it is refused.
MAX_VIDEOS = 100_000

VideoKind = paths_pb2.VideoKind


class SlpErrorReason(StrEnum):
    """Why a labels file could not be read."""

    NOT_FOUND = "not_found"
    NOT_A_FILE = "not_a_file"
    PERMISSION = "permission"
    NOT_HDF5 = "not_hdf5"
    CORRUPT = "corrupt"
    MISSING_DATASET = "missing_dataset"


class SlpError(Exception):
    """A labels file that cannot be read; ``reason`` says why, the message says more."""

    def __init__(self, reason: SlpErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VideoRef:
    """One video referenced by a labels file.

    Attributes:
        index: Position in the labels file's video list.
        original_path: The path as stored (client view). For an image sequence,
            its first image; for an embedded video, the source video's path
            (empty when the file does not record one).
        kind: ``VIDEO_KIND_FILE``, ``..._IMAGE_SEQUENCE`` or ``..._EMBEDDED``.
        embedded: Whether the frames are stored inside the labels file.
        image_filenames: Every image of an image sequence, else empty.
    """

    index: int
    original_path: str
    kind: paths_pb2.VideoKind.ValueType
    embedded: bool = False
    image_filenames: tuple[str, ...] = ()


class _Unsupported(Exception):
    """A videos_json row this reader does not understand."""


def read_video_refs(path: str | Path) -> list[VideoRef]:
    """Return the videos referenced by the labels file at ``path``, in file order.

    Raises:
        SlpError: the path is missing, not a regular file, unreadable, not
            HDF5, corrupt, or lacks the ``videos_json`` dataset.
    """
    path = Path(path)
    _check_file(path)
    try:
        with h5py.File(path, "r") as f:
            rows = _read_rows(f)
            try:
                return [_parse_row(f, i, row) for i, row in enumerate(rows)]
            except _Unsupported:
                _refuse_links(f)
    except SlpError:
        raise
    except OSError as exc:
        if not _is_hdf5(path):
            raise SlpError(SlpErrorReason.NOT_HDF5, f"{path} is not an HDF5 file") from exc
        raise SlpError(SlpErrorReason.CORRUPT, f"{path} is corrupt: {exc}") from exc
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise SlpError(SlpErrorReason.CORRUPT, f"{path} is corrupt: {exc}") from exc
    return _read_with_sleap_io(path)


def _is_hdf5(path: Path) -> bool:
    try:
        return bool(h5py.is_hdf5(path))
    except (OSError, ValueError):
        return False


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise SlpError(SlpErrorReason.NOT_FOUND, f"{path} does not exist") from exc
    except OSError as exc:
        raise SlpError(SlpErrorReason.PERMISSION, f"{path} cannot be read: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SlpError(SlpErrorReason.NOT_A_FILE, f"{path} is {kind}")
    if not os.access(path, os.R_OK):
        raise SlpError(SlpErrorReason.PERMISSION, f"{path} is not readable by the worker")


def _local_dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """Return ``f[name]`` if it is a dataset stored in this file, else raise."""
    link = f.get(name, getlink=True)
    if link is None:
        raise SlpError(SlpErrorReason.MISSING_DATASET, f"{f.filename} has no {name!r} dataset")
    if not isinstance(link, h5py.HardLink):
        raise SlpError(SlpErrorReason.CORRUPT, f"{name!r} in {f.filename} links elsewhere")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise SlpError(SlpErrorReason.MISSING_DATASET, f"{name!r} in {f.filename} is a group")
    if obj.external or obj.is_virtual:
        raise SlpError(SlpErrorReason.CORRUPT, f"{name!r} in {f.filename} reads other files")
    return obj


def _refuse_links(f: h5py.File) -> None:
    """Refuse a file with links to other files (checked before sleap-io reads it)."""
    bad: list[str] = []

    def visit(name: str, link: Any) -> None:
        if not isinstance(link, h5py.HardLink):
            bad.append(name)

    f.visititems_links(visit)
    if bad:
        raise SlpError(SlpErrorReason.CORRUPT, f"{f.filename} links elsewhere ({bad[0]!r})")


def _read_rows(f: h5py.File) -> list[Any]:
    dset = _local_dataset(f, "videos_json")
    if dset.ndim != 1 or dset.shape[0] > MAX_VIDEOS:
        raise SlpError(SlpErrorReason.CORRUPT, f"videos_json in {f.filename} has bad shape")
    return list(dset[()]) if dset.shape[0] else []


def _loads(raw: Any) -> dict[str, Any]:
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("utf-8")
    elif not isinstance(raw, str):
        raw = str(raw)
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise _Unsupported
    return data


def _filename_of(row: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """Return (path, image filenames) of a video row, or raise ``_Unsupported``."""
    backend = row.get("backend")
    backend = backend if isinstance(backend, dict) else {}
    names = backend.get("filenames")
    if names is None and isinstance(row.get("filename"), list):
        names = row["filename"]
    if names is not None:
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _Unsupported
        return names[0], tuple(names)
    for value in (backend.get("filename"), row.get("filename")):
        if isinstance(value, str) and value:
            return value, ()
    raise _Unsupported


def _source_of_embedded(f: h5py.File, row: dict[str, Any]) -> dict[str, Any] | None:
    source = row.get("source_video")
    if isinstance(source, dict):
        return source
    backend = row.get("backend") or {}
    group = str(backend.get("dataset", ""))
    group = group.removesuffix("/video")
    for name in ("source_video", "original_video"):
        key = f"{group}/{name}"
        if not group or f.get(key, getlink=True) is None:
            continue
        grp = f[key]
        if not isinstance(grp, h5py.Group) or not isinstance(
            f.get(key, getlink=True), h5py.HardLink
        ):
            continue
        if "json" in grp:
            return _loads(_local_dataset(f, f"{key}/json")[()])
        if "json" in grp.attrs:
            return _loads(grp.attrs["json"])
    return None


def _parse_row(f: h5py.File, index: int, raw: Any) -> VideoRef:
    try:
        row = _loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{f.filename}: video {index} metadata is not JSON"
        raise SlpError(SlpErrorReason.CORRUPT, msg) from exc
    path, images = _filename_of(row)
    if path == ".":
        source = _source_of_embedded(f, row)
        original, source_images = _filename_of(source) if source else ("", ())
        return VideoRef(index, original, VideoKind.VIDEO_KIND_EMBEDDED, True, source_images)
    kind = VideoKind.VIDEO_KIND_IMAGE_SEQUENCE if images else VideoKind.VIDEO_KIND_FILE
    return VideoRef(index, path, kind, False, images)


def _read_with_sleap_io(path: Path) -> list[VideoRef]:
    """Slow fallback for rows the fast reader does not understand."""
    import sleap_io

    try:
        videos = sleap_io.load_slp(str(path), open_videos=False).videos
    except Exception as exc:
        raise SlpError(SlpErrorReason.CORRUPT, f"{path} could not be read: {exc}") from exc
    refs: list[VideoRef] = []
    for i, video in enumerate(videos):
        meta = getattr(video, "backend_metadata", None) or {}
        embedded = meta.get("filename") == "."
        target = video.source_video if embedded and video.source_video is not None else video
        name = target.filename if (target is not video or not embedded) else ""
        if isinstance(name, list):
            images = tuple(str(n) for n in name)
            first = images[0] if images else ""
            kind = VideoKind.VIDEO_KIND_IMAGE_SEQUENCE
        else:
            images, first, kind = (), str(name), VideoKind.VIDEO_KIND_FILE
        if embedded:
            kind = VideoKind.VIDEO_KIND_EMBEDDED
        refs.append(VideoRef(i, first, kind, embedded, images))
    return refs
