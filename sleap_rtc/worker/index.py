"""A file-name index of the worker's mounts, for "same name elsewhere" suggestions.

One ``os.scandir`` walk per mount builds ``name -> folder(s)``: each folder
is stored once (``dirs``), and a name maps to the number of its one folder, or
to a list of numbers when several folders hold that name, so a file costs its
name and a reference, not a full path string and a list (measured: 296 ->
about 110 bytes per indexed file). Paths are made when looked up (sizes are
read lazily, see `FileIndex.entries`). The
index is reused while warm; after ``ttl_s`` it checks the modification time of
every directory it walked (one ``stat`` per directory, not per file) and
rebuilds only when something was added, removed or renamed. ``refresh()``
rebuilds at once. Builds are serialised: a lookup that finds a build in
progress (e.g. the worker's start-up walk, run in a thread) waits for it
instead of walking the mounts a second time.

The walk never follows directory symlinks. A file symlink is indexed only when
its target resolves inside the mounts (checked through the policy).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sleap_rtc.worker.mounts import MountPolicy

#: Default age after which the index checks its directories for changes.
DEFAULT_TTL_S = 30.0
#: Default cap on indexed files (bounds memory on huge mounts).
DEFAULT_MAX_FILES = 5_000_000
#: Entries kept in `FileIndex.memo` before it is emptied.
MAX_MEMO = 100_000


@dataclass(slots=True)
class _Snapshot:
    #: name -> the index in ``dirs`` of its folder, or a list of them (several folders).
    names: dict[str, int | list[int]] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    dir_ids: dict[str, int] = field(default_factory=dict)
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    sorted_names: dict[str, list[str]] = field(default_factory=dict)
    parents: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    memo: dict[object, object] = field(default_factory=dict)
    count: int = 0
    dir_mtimes: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    built_at: float = 0.0
    build_s: float = 0.0


class FileIndex:
    """Name index of every file under a policy's mounts.

    Args:
        policy: The mounts to index (and the check for file symlinks).
        ttl_s: Seconds the index is trusted before a (cheap) staleness check.
        max_files: Stop indexing after this many files (``truncated`` is set).
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        policy: MountPolicy,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_files: int = DEFAULT_MAX_FILES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._ttl_s = ttl_s
        self._max_files = max_files
        self._clock = clock
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._snap: _Snapshot | None = None
        self._checked_at = 0.0

    @property
    def policy(self) -> MountPolicy:
        """The mounts policy this index walks."""
        return self._policy

    @property
    def built(self) -> bool:
        """Whether the index has been built at least once."""
        return self._snap is not None

    @property
    def truncated(self) -> bool:
        """Whether the last build stopped at ``max_files``."""
        return self._snap is not None and self._snap.truncated

    @property
    def file_count(self) -> int:
        """Number of indexed files (0 before the first build)."""
        return self._snap.count if self._snap else 0

    @property
    def last_build_s(self) -> float:
        """Seconds the last build took."""
        return self._snap.build_s if self._snap else 0.0

    @property
    def memo(self) -> dict[object, object]:
        """Scratch cache for results derived from this build only (e.g. ranked
        same-name candidates); emptied by every rebuild. Callers bound its size."""
        self.ensure_fresh()
        assert self._snap is not None
        if len(self._snap.memo) > MAX_MEMO:
            self._snap.memo.clear()
        return self._snap.memo

    def refresh(self, *, stop: threading.Event | None = None) -> bool:
        """Rebuild the index now (after any build in progress).

        Returns False, leaving the index as it was, when ``stop`` was set
        before the walk ended.
        """
        with self._build_lock:
            return self._rebuild(stop)

    def _rebuild(self, stop: threading.Event | None = None) -> bool:
        snap = self._build(stop)
        if snap is None:
            return False
        with self._lock:
            self._snap = snap
            self._checked_at = snap.built_at
        return True

    def ensure_fresh(self) -> None:
        """Build if never built; after the TTL, rebuild if any directory changed."""
        snap = self._snap
        if snap is None:
            with self._build_lock:
                if self._snap is None:  # not built by whoever held the lock
                    self._rebuild()
            return
        now = self._clock()
        if now - self._checked_at < self._ttl_s:
            return
        if self.is_stale():
            with self._build_lock:
                if self._snap is snap:  # nobody rebuilt it meanwhile
                    self._rebuild()
        else:
            self._checked_at = now

    def is_stale(self) -> bool:
        """Whether a walked directory changed (one stat per directory)."""
        snap = self._snap
        if snap is None:
            return True
        for path, mtime in snap.dir_mtimes.items():
            try:
                if os.stat(path, follow_symlinks=False).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def lookup(self, name: str) -> Sequence[str]:
        """Return the path of every indexed file called ``name`` (as walked)."""
        self.ensure_fresh()
        snap = self._snap
        assert snap is not None
        hit = snap.paths.get(name)
        if hit is None:
            where = snap.names.get(name)
            if where is None:
                return ()
            dirs = snap.dirs
            ids = (where,) if isinstance(where, int) else where
            hit = tuple(f"{dirs[i]}/{name}" for i in ids)
            if len(snap.paths) < MAX_MEMO:
                snap.paths[name] = hit
        return hit

    def sorted_lookup(self, name: str) -> Sequence[str]:
        """`lookup`, sorted by path (cached per build)."""
        paths = self.lookup(name)
        assert self._snap is not None
        cached = self._snap.sorted_names.get(name)
        if cached is None:
            cached = self._snap.sorted_names[name] = sorted(paths)
        return cached

    def by_parent(self, name: str) -> Mapping[str, list[str]]:
        """Files called ``name`` grouped by their folder's name, case folded
        (cached per build): the candidates that share at least one folder."""
        paths = self.lookup(name)
        assert self._snap is not None
        groups = self._snap.parents.get(name)
        if groups is None:
            groups = {}
            for path in paths:
                parent = path.rsplit("/", 2)[-2].casefold()
                groups.setdefault(parent, []).append(path)
            self._snap.parents[name] = groups
        return groups

    def entries(self, name: str) -> list[tuple[str, int]]:
        """Return ``(path, size)`` of every indexed file called ``name``.

        Sizes are read lazily (one ``stat`` per path, cached until the next
        build): a stat per file would double the cold walk. Files that vanished
        since the walk are left out.
        """
        out: list[tuple[str, int]] = []
        for path in self.lookup(name):
            size = self.size_of(path)
            if size is not None:
                out.append((path, size))
        return out

    def size_of(self, path: str) -> int | None:
        """Size of an indexed file, or None if it is gone (cached per build)."""
        snap = self._snap
        if snap is None:
            return None
        size = snap.sizes.get(path)
        if size is None:
            try:
                size = os.stat(path).st_size
            except OSError:
                return None
            snap.sizes[path] = size
        return size

    def has_path(self, path: str) -> bool:
        """Whether ``path`` (as walked) is an indexed file (no path is built)."""
        self.ensure_fresh()
        snap = self._snap
        assert snap is not None
        folder, _, name = path.rpartition("/")
        where = snap.names.get(name)
        if where is None:
            return False
        dir_id = snap.dir_ids.get(folder)
        if dir_id is None:
            return False
        return where == dir_id if isinstance(where, int) else dir_id in where

    def _build(self, stop: threading.Event | None = None) -> _Snapshot | None:
        start = self._clock()
        snap = _Snapshot()
        names = snap.names
        dirs = snap.dirs
        dir_ids = snap.dir_ids
        mtimes = snap.dir_mtimes
        contains = self._policy.contains
        stack = [str(root) for root in self._policy.roots]
        budget = self._max_files
        while stack:
            if stop is not None and stop.is_set():
                return None
            top = stack.pop()
            try:
                mtimes[top] = os.stat(top, follow_symlinks=False).st_mtime_ns
                with os.scandir(top) as it:
                    entries = list(it)
            except OSError:
                continue
            dir_id = -1
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):  # most entries are files
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            continue
                        if not (entry.is_symlink() and contains(entry.path) and entry.is_file()):
                            continue
                except OSError:
                    continue
                if budget <= 0:
                    snap.truncated = True
                    stack.clear()
                    break
                budget -= 1
                if dir_id < 0:  # one folder string (and one int object) per folder
                    dir_id = dir_ids[top] = len(dirs)
                    dirs.append(top)
                name = entry.name
                where = names.get(name)
                if where is None:
                    names[name] = dir_id
                elif isinstance(where, int):
                    names[name] = [where, dir_id]
                else:
                    where.append(dir_id)
        snap.count = self._max_files - budget
        snap.built_at = self._clock()
        snap.build_s = snap.built_at - start
        return snap
