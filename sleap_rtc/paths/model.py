"""The path-mapping model both sides use: spellings, mappings, rules and their refusals.

Pure (standard library only). The client (views, resolution, saved rules) and
the worker (path check, suggestions, submit validation) import these, so a
mapping means the same on both sides.

- :class:`ClientPath` parses a path as the client wrote it: POSIX (``/Users/me``),
  Windows drive (``C:\\\\Users\\\\me`` or ``C:/Users/me`` as sleap-io stores it) or
  UNC (``\\\\\\\\server\\\\share``). Windows paths compare case-insensitively (drive
  letters too) with either separator; POSIX paths compare exactly.
- :class:`Mapper` applies exact mappings first, then the longest prefix rule,
  at component boundaries (``/a/b`` is not a prefix of ``/a/bc``).
- :func:`mapping_problems` says what is wrong with a set of mappings (before
  anything is sent or submitted): relative or climbing (``..``) paths, Windows
  or UNC targets, mixed separators, lookalike characters, conflicting rules.
- :func:`inside_roots` is the lexical "under the shared storage" test; it
  never touches the filesystem.

>>> rules = Mapper({}, {"C:/Users/me/lab": "/mnt/share/lab"})
>>> rules.find(ClientPath.parse("c:\\\\users\\\\me\\\\lab\\\\a.mp4"))
'/mnt/share/lab/a.mp4'
>>> has_prefix("/a/bc/x.mp4", "/a/b"), has_prefix("/a/b/x.mp4", "/a/b")
(False, True)
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ClientPath",
    "Mapper",
    "MappingProblem",
    "apply_prefixes",
    "has_prefix",
    "inside_roots",
    "join_worker",
    "mapping_problems",
    "original_problem",
    "shown",
    "target_problem",
    "text_problem",
]

_DRIVE = re.compile(r"[A-Za-z]:(?=[\\/]|$)")

#: Characters that look like a separator, a dot, a colon or nothing, but are not.
LOOKALIKES: dict[str, str] = {
    "\u2215": "a division slash",
    "\u2044": "a fraction slash",
    "\uff0f": "a fullwidth slash",
    "\u29f8": "a big solidus",
    "\uff3c": "a fullwidth backslash",
    "\ufe68": "a small reverse solidus",
    "\u2216": "a set minus",
    "\u29f5": "a reverse solidus operator",
    "\uff1a": "a fullwidth colon",
    "\ua789": "a modifier letter colon",
    "\u2024": "a one dot leader",
    "\uff0e": "a fullwidth full stop",
    "\u200b": "a zero-width space",
    "\u200c": "a zero-width non-joiner",
    "\u200d": "a zero-width joiner",
    "\u2060": "a word joiner",
    "\ufeff": "a byte order mark",
    "\u00a0": "a no-break space",
}

Key = tuple[str, ...]


def shown(text: str) -> str:
    """A path for a message: as typed, quoted only when it has invisible characters."""
    return text if text.isprintable() else repr(text)


@dataclass(frozen=True, slots=True)
class ClientPath:
    """A client path split for comparison; ``text`` keeps the original string.

    ``anchor`` is ``"/"`` (rooted), ``"C:"`` (drive), ``"//"`` (UNC) or ``""``
    (relative). Windows paths compare case-insensitively.
    """

    text: str
    anchor: str
    parts: tuple[str, ...]
    windows: bool
    sep: str

    @classmethod
    def parse(cls, text: str) -> ClientPath:
        if text.startswith("/") and text[1:2] != "/" and "\\" not in text:  # plain POSIX
            parts = tuple(p for p in text.split("/") if p and p != ".")
            return cls(text, "/", parts, False, "/")
        unc = text.startswith("\\\\") or (text.startswith("//") and text[2:3] not in ("/", ""))
        windows = bool(_DRIVE.match(text)) or unc or ("\\" in text and not text.startswith("/"))
        flat = text.replace("\\", "/") if windows else text
        if windows and _DRIVE.match(flat):
            anchor, rest = flat[:2], flat[2:]
        elif unc:
            anchor, rest = "//", flat[2:]
        elif flat.startswith("/"):
            anchor, rest = "/", flat
        else:
            anchor, rest = "", flat
        parts = tuple(p for p in rest.split("/") if p and p != ".")
        return cls(text, anchor, parts, windows, "\\" if "\\" in text else "/")

    @property
    def name(self) -> str:
        """The base name (Windows-aware)."""
        return self.parts[-1] if self.parts else ""

    @property
    def relative(self) -> bool:
        return not self.anchor

    @property
    def climbs(self) -> bool:
        """Whether a part is ``..`` (the path could climb out of where it points)."""
        return ".." in self.parts

    def key(self, n: int | None = None) -> Key:
        """Comparison key of the anchor and the first ``n`` parts (all by default)."""
        parts = self.parts if n is None else self.parts[:n]
        if self.windows:
            return (self.anchor.casefold(), *(p.casefold() for p in parts))
        return (self.anchor, *parts)

    def render(self, n: int) -> str:
        """The first ``n`` parts as a prefix string in the original's style."""
        body = self.sep.join(self.parts[:n])
        if self.anchor == "//":
            return self.sep * 2 + body
        if self.anchor == "/":
            return self.sep + body
        return f"{self.anchor}{self.sep}{body}" if self.anchor else body


def join_worker(prefix: str, rest: Sequence[str]) -> str:
    """``prefix`` + ``/`` + ``rest`` parts (worker paths always use ``/``)."""
    return f"{prefix.rstrip('/')}/{'/'.join(rest)}" if rest else prefix


class Mapper:
    """Exact mappings first, then the longest matching prefix mapping.

    Keys are compared by :meth:`ClientPath.key`, so ``C:\\\\a`` and ``c:/A`` are one
    key and a trailing separator does not matter.
    """

    def __init__(self, exact: Mapping[str, str], prefix: Mapping[str, str]) -> None:
        self._exact = {ClientPath.parse(k).key(): v for k, v in exact.items() if k}
        self._exact_keys = {ClientPath.parse(k).key(): k for k in exact if k}
        self._prefix: dict[Key, tuple[str, str]] = {}
        for k, v in prefix.items():
            cp = ClientPath.parse(k)
            if cp.anchor or cp.parts:
                self._prefix[cp.key()] = (k, v)
        self._depths = sorted({len(k) - 1 for k in self._prefix}, reverse=True)

    def rule(self, cp: ClientPath) -> tuple[str, str, int] | None:
        """The prefix rule that applies to ``cp``: (original, worker, depth), or None."""
        for n in self._depths:
            if n <= len(cp.parts):
                hit = self._prefix.get(cp.key(n))
                if hit is not None:
                    return hit[0], hit[1], n
        return None

    def which(self, cp: ClientPath) -> tuple[str, str] | None:
        """The mapping that applies to ``cp``: (``"exact"`` or ``"prefix"``, its key as sent)."""
        key = self._exact_keys.get(cp.key())
        if key is not None:
            return "exact", key
        rule = self.rule(cp)
        return None if rule is None else ("prefix", rule[0])

    def find(self, cp: ClientPath) -> str | None:
        """The mapped worker path, or None when no mapping matches."""
        hit = self._exact.get(cp.key())
        if hit is not None:
            return hit
        rule = self.rule(cp)
        return None if rule is None else join_worker(rule[1], cp.parts[rule[2] :])

    def maps(self, cp: ClientPath) -> bool:
        return self.find(cp) is not None

    def map(self, cp: ClientPath) -> str | None:
        """The worker path to check: mapped, or the original if it is a POSIX
        absolute path; None when none can be formed (Windows, relative)."""
        hit = self.find(cp)
        if hit is not None:
            return hit
        return cp.text if cp.anchor == "/" and not cp.windows else None


def has_prefix(path: str, prefix: str) -> bool:
    """Whether ``prefix`` is a leading folder of ``path`` (component boundary; Windows
    paths case-insensitive, either separator)."""
    if not prefix:
        return False
    cp, pp = ClientPath.parse(path), ClientPath.parse(prefix)
    if pp.relative or len(pp.parts) > len(cp.parts):
        return False
    return cp.key(len(pp.parts)) == pp.key()


def apply_prefixes(path: str, prefixes: Mapping[str, str]) -> str | None:
    """``path`` rewritten by the longest matching prefix rule, or None."""
    return Mapper({}, prefixes).find(ClientPath.parse(path))


def inside_roots(worker: str, roots: Iterable[str]) -> bool:
    """Whether the worker path lies lexically under one of ``roots`` (no I/O).

    ``worker`` must be an absolute POSIX path without ``..``; it is normalised
    (``//``, ``.``) before the component-wise comparison.
    """
    if target_problem(worker) is not None:
        return False
    norm = posixpath.normpath(worker)
    for root in roots:
        base = posixpath.normpath(root)
        if norm == base or norm.startswith(base.rstrip("/") + "/"):
            return True
    return False


def text_problem(text: str) -> str | None:
    """What makes ``text`` unusable as a path in any role, or None."""
    if not text:
        return "is empty"
    if "\x00" in text:
        return "contains a NUL byte"
    if text.isascii() and text.isprintable():  # the common case, at C speed
        return None
    for ch in text:
        name = LOOKALIKES.get(ch)
        if name is not None:
            return (
                f"contains {name} (U+{ord(ch):04X}), which looks like a path character "
                "but is not one; retype it"
            )
        if unicodedata.category(ch) in ("Cc", "Cf"):
            return f"contains an invisible control character (U+{ord(ch):04X})"
    return None


def original_problem(text: str) -> str | None:
    """What is wrong with ``text`` as the client side of a mapping, or None."""
    problem = text_problem(text)
    if problem is not None:
        return problem
    cp = ClientPath.parse(text)
    if cp.relative:
        return "is not an absolute path (start at /, at a drive such as C:\\ or at \\\\server)"
    if cp.climbs:
        return "contains '..'; write the folder itself"
    if "/" in text and "\\" in text:
        return "mixes / and \\ separators; write it with one kind"
    return None


def target_problem(text: str) -> str | None:
    """What is wrong with ``text`` as the worker side of a mapping, or None."""
    problem = text_problem(text)
    if problem is not None:
        return problem
    if _DRIVE.match(text) or text.startswith("\\\\"):
        return "is a Windows path; a worker path is a POSIX path such as /mnt/share/..."
    if "\\" in text:
        return "contains a backslash; a worker path uses / only"
    if not text.startswith("/"):
        return "is not an absolute worker path (it must start with /)"
    if ".." in text.split("/"):
        return "climbs out with '..'; write the folder itself"
    return None


@dataclass(frozen=True, slots=True)
class MappingProblem:
    """A mapping refused before use: which one and why (``kind``: exact or prefix)."""

    kind: str
    original: str
    worker: str
    reason: str

    def __str__(self) -> str:
        what = "path mapping" if self.kind == "exact" else "prefix rule"
        return f"{what} {shown(self.original)} -> {shown(self.worker)} {self.reason}"


def mapping_problems(exact: Mapping[str, str], prefix: Mapping[str, str]) -> list[MappingProblem]:
    """Every mapping refused by the model: bad spellings of either side, and
    conflicts (two spellings of one client path mapped to different targets)."""
    out: list[MappingProblem] = []
    for kind, table in (("exact", exact), ("prefix", prefix)):
        seen: dict[Key, tuple[str, str]] = {}
        for original, worker in sorted(table.items()):
            problem = original_problem(original)
            if problem is not None:
                out.append(
                    MappingProblem(kind, original, worker, f"refused: {shown(original)} {problem}")
                )
                continue
            problem = target_problem(worker)
            if problem is not None:
                out.append(
                    MappingProblem(kind, original, worker, f"refused: {shown(worker)} {problem}")
                )
                continue
            key = ClientPath.parse(original).key()
            norm = posixpath.normpath(worker)
            other = seen.get(key)
            if other is not None and posixpath.normpath(other[1]) != norm:
                out.append(
                    MappingProblem(
                        kind,
                        original,
                        worker,
                        f"refused: it conflicts with {shown(other[0])} -> {shown(other[1])} "
                        "(the same client path mapped to two places)",
                    )
                )
                continue
            seen[key] = (original, worker)
    return out
