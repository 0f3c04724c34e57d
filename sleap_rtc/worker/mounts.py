"""The worker's allowed mounts: the one policy every worker path goes through.

A path is allowed only when its fully resolved form (symlinks followed, ``..``
collapsed) lies inside one of the operator's mount roots. Nothing is expanded
from the user: no ``~``, no environment variables, no relative paths.

Resolution is our own component walk, not ``os.path.realpath``: realpath gives
back a path with its ``..`` left in when it meets a symlink loop, and a prefix
check then calls it inside. Here a path that cannot be resolved fully (a loop,
more than 40 links, a name or path too long, a folder that cannot be searched)
is refused with :class:`Unresolvable`; a resolved path never holds ``.`` or
``..``; the directory cache gives the same answer as no cache.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

#: Symlinks followed while resolving one path before it counts as a loop (Linux's limit).
MAX_SYMLINKS = 40
#: Longest path (bytes, UTF-8) resolved; the kernel's PATH_MAX.
MAX_PATH_BYTES = 4096
#: Longest name of one path component (bytes, UTF-8); the kernel's NAME_MAX.
MAX_NAME_BYTES = 255


class PathRejected(ValueError):
    """A path the policy refuses (base class; the message names the path)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class NotAbsolute(PathRejected):
    """The path is not an absolute worker (POSIX) path, e.g. ``data/a.mp4`` or ``C:\\x``."""

    def __init__(self, path: str) -> None:
        super().__init__(path, f"{path!r} is not an absolute worker path")


class Unresolvable(PathRejected):
    """The path cannot be resolved fully: a symlink loop, too long, or unsearchable."""

    def __init__(self, path: str, reason: str) -> None:
        shown = path if len(path) <= 200 else f"{path[:120]}...({len(path)} characters)"
        super().__init__(path, f"{shown!r} cannot be resolved: {reason}")
        self.reason = reason


class OutsideMounts(PathRejected):
    """The resolved path lies outside every allowed mount."""

    def __init__(self, path: str, resolved: str | Path) -> None:
        super().__init__(path, f"{path!r} lies outside the worker's allowed mounts")
        self._resolved = os.fspath(resolved)

    @property
    def resolved(self) -> Path:
        """The fully resolved form that fell outside the mounts."""
        return Path(self._resolved)


class MountPolicy:
    """Allowed mount roots and the containment check for worker paths.

    Args:
        roots: Mount roots. Each is resolved once and must be an existing
            directory; otherwise ``ValueError`` names it. Roots nested inside
            another root are dropped as redundant.
    """

    def __init__(self, roots: Iterable[str | Path]) -> None:
        resolved: list[Path] = []
        for root in roots:
            text = os.fspath(root)
            if not text or "\x00" in text or not os.path.isabs(text):
                raise ValueError(f"mount root {text!r} is not an absolute path")
            real = Path(os.path.realpath(text))
            if not real.is_dir():
                raise ValueError(f"mount root {text!r} does not exist or is not a directory")
            resolved.append(real)
        if not resolved:
            raise ValueError("at least one mount root is required")
        unique = sorted(set(resolved), key=lambda p: (len(p.parts), str(p)))
        kept: list[Path] = []
        for root in unique:
            if not any(root.is_relative_to(k) for k in kept):
                kept.append(root)
        self._roots = tuple(kept)
        # Component-wise containment on resolved strings: ``/mnt/lab2`` is not
        # inside ``/mnt/lab`` because the root must be followed by "/". Same
        # answer as Path.is_relative_to (tested), without pathlib's parsing cost.
        self._prefixes = tuple(str(r).rstrip("/") + "/" for r in kept)
        self._exact = frozenset(str(r) for r in kept)

    @property
    def roots(self) -> tuple[Path, ...]:
        """The resolved mount roots, shortest first."""
        return self._roots

    def resolve(self, path: str | Path, *, cache: dict[str, str] | None = None) -> Path:
        """Resolve ``path`` fully and return it if it lies inside a mount.

        Args:
            path: An absolute worker path.
            cache: Optional map of directory -> resolved directory, shared by
                the calls of one short operation (e.g. one path check) so that
                many files in one folder cost one ``lstat`` each. Do not keep
                it longer: it does not see later symlink changes.

        Raises:
            NotAbsolute: ``path`` is empty, relative, or contains a NUL byte.
            Unresolvable: a symlink loop, a path or name too long, or a folder
                on the way that cannot be searched.
            OutsideMounts: the resolved form lies outside every mount.
        """
        return Path(self.resolve_str(path, cache=cache))

    def resolve_str(self, path: str | Path, *, cache: dict[str, str] | None = None) -> str:
        """`resolve`, returning a string (cheaper in hot loops)."""
        resolved, inside = self.locate(path, cache=cache)
        if inside:
            return resolved
        raise OutsideMounts(os.fspath(path), resolved)

    def locate(self, path: str | Path, *, cache: dict[str, str] | None = None) -> tuple[str, bool]:
        """Resolve ``path`` fully; return it and whether it lies inside a mount.

        For hot loops that expect many paths outside (no exception per path).
        The caller must not touch a path reported outside.

        Raises:
            NotAbsolute: ``path`` is empty, relative, or contains a NUL byte.
            Unresolvable: see :meth:`resolve`.
        """
        text = os.fspath(path)
        if not text or "\x00" in text or not text.startswith("/"):
            raise NotAbsolute(text)
        resolved = _realpath(text, cache)
        return resolved, self.is_inside(resolved)

    def contains(self, path: str | Path) -> bool:
        """Whether ``path`` resolves inside a mount (never raises)."""
        try:
            self.resolve(path)
        except PathRejected:
            return False
        return True

    def is_inside(self, resolved: str) -> bool:
        """Whether an already resolved path string lies inside a mount."""
        return resolved in self._exact or resolved.startswith(self._prefixes)

    def __repr__(self) -> str:
        return f"MountPolicy({[str(r) for r in self._roots]!r})"


def _too_long(text: str) -> str | None:
    try:
        raw = os.fsencode(text)
    except UnicodeError:
        return "the path is not valid text"
    if len(raw) >= MAX_PATH_BYTES:
        return f"the path is {len(raw)} bytes, over the limit of {MAX_PATH_BYTES - 1}"
    if any(len(part) > MAX_NAME_BYTES for part in raw.split(b"/")):
        return f"a name in it is over {MAX_NAME_BYTES} bytes"
    return None


def _step(base: str, name: str, origin: str, budget: list[int]) -> str:
    """Resolve one component ``name`` below the resolved folder ``base``."""
    if name in ("", "."):
        return base
    if name == "..":
        return os.path.dirname(base)
    full = base.rstrip("/") + "/" + name
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return full  # nothing there: nothing to follow, the name stays as written
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise Unresolvable(origin, "the path or a name in it is too long") from None
        raise Unresolvable(origin, f"{full} cannot be examined: {exc.strerror or exc}") from None
    if not stat.S_ISLNK(st.st_mode):
        return full
    budget[0] -= 1
    if budget[0] < 0:
        raise Unresolvable(origin, f"more than {MAX_SYMLINKS} symbolic links (a loop?)")
    try:
        target = os.readlink(full)
    except OSError as exc:
        raise Unresolvable(origin, f"link {full} cannot be read: {exc.strerror or exc}") from None
    return _walk(target, "/" if target.startswith("/") else base, origin, budget)


def _walk(text: str, base: str, origin: str, budget: list[int]) -> str:
    current = base
    for name in text.split("/"):
        current = _step(current, name, origin, budget)
    if len(current) >= MAX_PATH_BYTES:
        raise Unresolvable(origin, "the resolved path is too long")
    return current


def _resolve_full(text: str) -> str:
    reason = _too_long(text)
    if reason is not None:
        raise Unresolvable(text, reason)
    return _walk(text, "/", text, [MAX_SYMLINKS])


def _realpath(text: str, cache: dict[str, str] | None) -> str:
    """``text`` resolved fully (see the module docstring); parent folders memoised in ``cache``.

    The walk is component by component, so resolving ``head`` then the last
    name from there is exactly the uncached walk (the cache only skips work).
    """
    head, tail = os.path.split(text)
    if cache is None or not tail or tail in (".", "..") or head == text:
        return _resolve_full(text)
    reason = _too_long(text)
    if reason is not None:
        raise Unresolvable(text, reason)
    entry = cache.get(head)
    if entry is None:
        budget = [MAX_SYMLINKS]
        real_head = _walk(head, "/", text, budget)
        cache[head] = f"{budget[0]}\x00{real_head}"  # links left, then the folder
    else:
        left, _, real_head = entry.partition("\x00")
        budget = [int(left)]
    # The head's links were followed already; the last name gets what is left.
    return _walk(tail, real_head, text, budget)
