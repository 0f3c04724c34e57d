"""What an HDF5 file (a labels file, a ``.pkg.slp``, an ``.h5`` video) reads besides itself.

HDF5 files can name other files three ways, and h5py follows each on read:
external links (``h5py.ExternalLink``), virtual datasets (their sources) and
external raw storage (``Dataset.external``). sleap-io and the trainer read
whatever the file names, so the worker inspects it first: a reference is
allowed only when its target is an absolute path that resolves inside the
mounts. A relative target is refused: HDF5 looks for it relative to the
current folder, the file's folder and ``HDF5_EXT_PREFIX`` / ``HDF5_VDS_PREFIX``
/ ``HDF5_EXTFILE_PREFIX``, so no single path can be checked.

Only objects reached through hard links are opened while inspecting (a soft
link's target is a path in this file, and any external link on that path is
itself visited and judged), so inspecting never opens another file.

>>> import h5py, tempfile, os
>>> with tempfile.TemporaryDirectory() as folder:
...     with h5py.File(os.path.join(folder, "a.h5"), "w") as f:
...         f["points"] = h5py.ExternalLink("/etc/passwd.h5", "/x")
...     [r.kind for r in file_references(os.path.join(folder, "a.h5"))]
['external link']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import h5py

from sleap_rtc.worker.mounts import MountPolicy, PathRejected

#: Objects (links) inspected in one file before it is refused as too large to inspect.
MAX_OBJECTS = 200_000


@dataclass(frozen=True, slots=True)
class FileReference:
    """One reference from an HDF5 file to another file.

    Attributes:
        kind: ``"external link"``, ``"virtual dataset"`` or ``"external storage"``.
        name: the object inside the file that holds it (e.g. ``points``).
        target: the other file's name as stored.
    """

    kind: str
    name: str
    target: str


class Hdf5Refused(Exception):
    """An HDF5 file that reads a file it may not (or cannot be inspected)."""


def file_references(path: str | os.PathLike[str]) -> list[FileReference]:
    """Every reference to another file inside the HDF5 file at ``path``.

    Raises:
        OSError: the file cannot be opened as HDF5.
        Hdf5Refused: the file holds more than :data:`MAX_OBJECTS` links.
    """
    found: list[FileReference] = []
    hard: list[str] = []
    with h5py.File(path, "r") as f:

        def visit(name: str, link: Any) -> None:
            if len(hard) + len(found) > MAX_OBJECTS:
                raise Hdf5Refused(f"more than {MAX_OBJECTS} objects to inspect")
            if isinstance(link, h5py.ExternalLink):
                found.append(FileReference("external link", name, str(link.filename)))
            elif isinstance(link, h5py.HardLink):
                hard.append(name)

        f.visititems_links(visit)
        for name in hard:
            obj = f.get(name)
            if not isinstance(obj, h5py.Dataset):
                continue
            for entry in obj.external or ():
                raw = entry[0]
                target = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                found.append(FileReference("external storage", name, target))
            if obj.is_virtual:
                for source in obj.virtual_sources():
                    if source.file_name != ".":
                        found.append(FileReference("virtual dataset", name, source.file_name))
    return found


def refusal(path: str, policy: MountPolicy) -> str | None:
    """Why the HDF5 file at ``path`` (already resolved inside the mounts) may not be
    used, or None when everything it reads lies inside the mounts."""
    try:
        refs = file_references(path)
    except Hdf5Refused as exc:
        return f"{path} cannot be inspected: {exc}"
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        return f"{path} cannot be inspected as HDF5: {exc}"
    for ref in refs:
        where = f"{path} holds an HDF5 {ref.kind} in {ref.name!r} to {ref.target!r}"
        if not ref.target.startswith("/"):
            return f"{where}, a relative file name HDF5 would search for; refused"
        try:
            policy.resolve_str(ref.target)
        except PathRejected:
            return f"{where}, outside the worker's allowed mounts"
    return None


def is_hdf5_name(path: str) -> bool:
    """Whether ``path`` names an HDF5 file by its suffix (labels and HDF5 videos)."""
    lower = path.lower()
    return lower.endswith((".slp", ".h5", ".hdf5", ".pkg.slp"))
