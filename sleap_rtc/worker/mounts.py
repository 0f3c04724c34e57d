"""The worker's allowed mounts: the one policy every worker path goes through.

A path is allowed only when its fully resolved form (symlinks followed, ``..``
collapsed) lies inside one of the operator's mount roots. Nothing is expanded
from the user: no ``~``, no environment variables, no relative paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class PathRejected(ValueError):
    """A path the policy refuses (base class; the message names the path)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class NotAbsolute(PathRejected):
    """The path is not an absolute worker (POSIX) path, e.g. ``data/a.mp4`` or ``C:\\x``."""

    def __init__(self, path: str) -> None:
        super().__init__(path, f"{path!r} is not an absolute worker path")


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


def _realpath(text: str, cache: dict[str, str] | None) -> str:
    """``os.path.realpath(text)``, with resolved parent directories memoised in ``cache``."""
    head, tail = os.path.split(text)
    if cache is None or not tail or tail in (".", ".."):
        return os.path.realpath(text)
    real_head = cache.get(head)
    if real_head is None:
        real_head = os.path.realpath(head)
        # A trailing NUL marks a folder that does not exist: nothing in it can
        # be a symlink, so its files need no lstat. (NUL never occurs in paths.)
        cache[head] = real_head = real_head if os.path.isdir(real_head) else real_head + "\x00"
    if real_head.endswith("\x00"):
        return os.path.join(real_head[:-1], tail)
    full = os.path.join(real_head, tail)
    return os.path.realpath(full) if os.path.islink(full) else full
