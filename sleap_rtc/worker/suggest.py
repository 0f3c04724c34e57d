"""Client paths, path mappings, and suggestions for videos the worker cannot find.

`ClientPath` parses a path as the client wrote it (POSIX or Windows) into
comparable parts; `Mapper` applies a request's exact and prefix mappings;
`Finder` ranks candidate worker paths for missing videos and infers prefix
rules (``/Users/me/data -> /mnt/lab/data``) from found videos and from
same-name matches under the mounts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from sleap_rtc.worker.index import FileIndex
from sleap_rtc.worker.mounts import MountPolicy, PathRejected
from sleap_rtc_proto.v1 import paths_pb2

#: Most prefix proposals in one result.
MAX_PROPOSALS = 5
#: Same-name candidates scanned in full per video before only parent matches count.
_SCAN_ALL = 64
#: Same-name candidates kept per video when the name is common and no folder matches.
_AMBIGUOUS_KEEP = 2
#: Same-name candidates whose sizes are compared when the client sent a size.
_SCAN_SIZES = 5_000
_DRIVE = re.compile(r"[A-Za-z]:(?=[\\/]|$)")

Key = tuple[str, ...]


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
    """Exact mappings first, then the longest matching prefix mapping."""

    def __init__(self, exact: Mapping[str, str], prefix: Mapping[str, str]) -> None:
        self._exact = {ClientPath.parse(k).key(): v for k, v in exact.items() if k}
        self._prefix: dict[Key, str] = {}
        for k, v in prefix.items():
            cp = ClientPath.parse(k)
            if cp.anchor or cp.parts:
                self._prefix[cp.key()] = v
        self._depths = sorted({len(k) - 1 for k in self._prefix}, reverse=True)

    def find(self, cp: ClientPath) -> str | None:
        """The mapped worker path, or None when no mapping matches."""
        hit = self._exact.get(cp.key())
        if hit is not None:
            return hit
        for n in self._depths:
            if n <= len(cp.parts):
                target = self._prefix.get(cp.key(n))
                if target is not None:
                    return join_worker(target, cp.parts[n:])
        return None

    def maps(self, cp: ClientPath) -> bool:
        return self.find(cp) is not None

    def map(self, cp: ClientPath) -> str | None:
        """The worker path to check: mapped, or the original if it is a POSIX
        absolute path; None when none can be formed (Windows, relative)."""
        hit = self.find(cp)
        if hit is not None:
            return hit
        return cp.text if cp.anchor == "/" and not cp.windows else None


@dataclass(frozen=True, slots=True)
class Rule:
    """A prefix rule: original prefix (first ``n`` parts, ``key``) -> worker prefix."""

    key: Key
    n: int
    original: str
    worker: str

    def apply(self, cp: ClientPath) -> str:
        return join_worker(self.worker, cp.parts[self.n :])


def infer_rules(cp: ClientPath, worker: str, *, specific: bool = True) -> list[Rule]:
    """Rules that map ``cp`` to ``worker``: strip the longest common tail of
    parts (the most general rule) and, if ``specific``, strip only the name."""
    if cp.relative:
        return []
    wparts = tuple(p for p in worker.split("/") if p)
    fold = cp.windows
    common = 0
    for a, b in zip(reversed(cp.parts), reversed(wparts), strict=False):
        if (a.casefold() != b.casefold()) if fold else (a != b):
            break
        common += 1
    min_orig = {"//": 2, "/": 1}.get(cp.anchor, 0)
    general = min(common, len(cp.parts) - min_orig, len(wparts) - 1)
    rules = []
    for strip in sorted({general, 1} if specific else {general}):
        if strip < 1 or strip > general:
            continue
        n = len(cp.parts) - strip
        rule = Rule(cp.key(n), n, cp.render(n), "/" + "/".join(wparts[: len(wparts) - strip]))
        if cp.windows or rule.original != rule.worker:
            rules.append(rule)
    return rules


def _ancestors(items: Iterable[tuple[int, ClientPath]]) -> dict[Key, list[int]]:
    out: dict[Key, list[int]] = {}
    for i, cp in items:
        full = cp.key()  # key(n) == full[: n + 1]
        for n in range(1, len(full)):
            out.setdefault(full[:n], []).append(i)
    return out


_Cand = tuple[float, paths_pb2.SuggestionReason.ValueType, str]  # score, reason, explanation
#: One suggestion: worker path and its (score, reason, explanation).
Candidate = tuple[str, _Cand]
_RunResult = tuple[list[paths_pb2.PrefixProposal], dict[int, list[Candidate]]]
#: Finder answers memoised per index build (each can hold thousands of suggestions).
_RUNS_KEPT = 8


class Finder:
    """Ranks suggestions and prefix proposals for one path check."""

    def __init__(
        self,
        policy: MountPolicy,
        index: FileIndex | None,
        labels_dir: str,
        cache: dict[str, str],
        sizes: Mapping[str, int],
    ) -> None:
        self._policy = policy
        self._index = index
        self._labels_dir = labels_dir
        self._cache = cache
        self._sizes = sizes
        self._beside: dict[str, str | None] = {}

    def run(
        self,
        unresolved: list[tuple[int, ClientPath]],
        found: list[tuple[ClientPath, str]],
        limit: int,
    ) -> _RunResult:
        """Return (prefix proposals best first, suggestions per video index,
        best first, as ``(worker_path, (score, reason, explanation))``).

        With an index, the answer is memoised for its current build: a re-check
        whose videos came out exactly as before reuses it (the probes that
        decide found / missing always run).
        """
        if self._index is None:
            return self._run(unresolved, found, limit)
        key = (
            self._labels_dir,
            limit,
            tuple(sorted(self._sizes.items())),
            tuple((i, cp.text) for i, cp in unresolved),
            tuple((cp.text, path) for cp, path in found),
        )
        runs = cast(dict[object, _RunResult], self._index.memo.setdefault("finder.run", {}))
        hit = runs.get(key)
        if hit is None:
            hit = self._run(unresolved, found, limit)
            for stale in list(runs)[: max(0, len(runs) - _RUNS_KEPT + 1)]:
                runs.pop(stale, None)  # oldest first
            runs[key] = hit
        return hit

    def _run(
        self,
        unresolved: list[tuple[int, ClientPath]],
        found: list[tuple[ClientPath, str]],
        limit: int,
    ) -> _RunResult:
        cps = dict(unresolved)
        cands: dict[int, dict[str, _Cand]] = {i: {} for i in cps}
        pairs: list[tuple[ClientPath, str]] = []
        for i, cp in unresolved:
            same = self._same_name(cp, limit)
            for path, cand, tail in same:
                _offer(cands[i], path, cand)
                if tail or len(same) == 1:
                    pairs.append((cp, path))
            self._next_to_labels(cp, cands[i])
        proposals = self._proposals(cps, found, pairs)
        for rule, resolves, evidence in proposals:
            score = min(0.99, 0.9 + 0.01 * evidence)
            why = f"prefix rule {rule.original} -> {rule.worker} fits {evidence} videos"
            for i in resolves:
                _offer(
                    cands[i],
                    rule.apply(cps[i]),
                    (score, paths_pb2.SUGGESTION_REASON_PREFIX_RULE, why),
                )
        out = {
            i: sorted(by_path.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
            for i, by_path in cands.items()
        }
        msgs = [
            paths_pb2.PrefixProposal(
                original_prefix=rule.original,
                worker_prefix=rule.worker,
                resolves=sorted(resolves),
                evidence=evidence,
            )
            for rule, resolves, evidence in proposals
        ]
        return msgs, out

    def _exists(self, path: str) -> bool:
        if self._index is not None:
            return self._index.has_path(path)
        try:
            real = self._policy.resolve_str(path, cache=self._cache)
        except PathRejected:
            return False
        return os.path.isfile(real)

    def _proposals(
        self,
        cps: dict[int, ClientPath],
        found: list[tuple[ClientPath, str]],
        pairs: list[tuple[ClientPath, str]],
    ) -> list[tuple[Rule, list[int], int]]:
        by_prefix = _ancestors(cps.items())
        found_by_prefix = _ancestors(enumerate(cp for cp, _ in found))
        rules = {rule for cp, path in found for rule in infer_rules(cp, path)}
        rules.update(r for cp, path in pairs for r in infer_rules(cp, path, specific=False))
        scored: list[tuple[Rule, list[int], int]] = []
        for rule in rules:
            resolves = [i for i in by_prefix.get(rule.key, ()) if self._exists(rule.apply(cps[i]))]
            support = sum(
                1
                for j in found_by_prefix.get(rule.key, ())
                if rule.apply(found[j][0]) == found[j][1]
            )
            if resolves and (support or len(resolves) >= 2):
                scored.append((rule, resolves, support + len(resolves)))
        scored.sort(key=lambda e: (-len(e[1]), -e[2], -e[0].n, e[0].original, e[0].worker))
        accepted: list[tuple[Rule, list[int], int]] = []
        covered: set[int] = set()
        for rule, resolves, evidence in scored:
            if not covered.issuperset(resolves):
                accepted.append((rule, resolves, evidence))
                covered.update(resolves)
                if len(accepted) == MAX_PROPOSALS:
                    break
        return accepted

    def _same_name(self, cp: ClientPath, limit: int) -> list[tuple[str, _Cand, int]]:
        """Same-name files under the mounts: (path, candidate, folder-tail length)."""
        if self._index is None or not cp.name:
            return []
        # Ranked candidates depend only on the index build: reuse them warm.
        memo = self._index.memo
        key = ("same_name", cp.windows, cp.parts, limit, self._sizes.get(cp.text))
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = self._rank_same_name(cp, limit)
        return cast(list[tuple[str, _Cand, int]], hit)

    def _rank_same_name(self, cp: ClientPath, limit: int) -> list[tuple[str, _Cand, int]]:
        assert self._index is not None
        paths = self._index.lookup(cp.name)
        if not paths:
            return []
        fold = cp.windows
        parents = [p.casefold() if fold else p for p in reversed(cp.parts[:-1])]
        size = self._sizes.get(cp.text)
        if len(paths) <= _SCAN_ALL or not parents or size is not None:
            pool: Sequence[str] = paths[:_SCAN_SIZES]
        else:
            pool = self._index.by_parent(cp.name).get(parents[0].casefold(), [])
            seen = set(pool)
            rest = self._index.sorted_lookup(cp.name)[: limit + len(pool)]
            pool = [*pool, *(p for p in rest if p not in seen)]
        out: list[tuple[str, _Cand, int]] = []
        for path in pool:
            cparts = path.split("/")[-2:0:-1]
            tail = 0
            for a, b in zip(parents, cparts, strict=False):
                if (b.casefold() if fold else b) != a:
                    break
                tail += 1
            why, score = "same name", 0.45 + 0.1 * min(tail, 3)
            if tail:
                why += f" and folder tail '{'/'.join(reversed(cparts[:tail]))}'"
            elif len(paths) > 1:  # ambiguous: say so, and rank it lower when common
                why += f" (one of {len(paths)} files called {cp.name})"
                score = 0.45 if len(paths) <= 3 else 0.35
            reason = paths_pb2.SUGGESTION_REASON_SAME_NAME
            if size is not None:
                if self._index.size_of(path) == size:
                    score, reason = (
                        0.8 + 0.05 * min(tail, 3) / 3,
                        paths_pb2.SUGGESTION_REASON_SAME_NAME_AND_SIZE,
                    )
                    why += " and size"
                else:
                    score, why = score * 0.5, why + ", but a different size"
            out.append((path, (score, reason, why), tail))
        out.sort(key=lambda e: (-e[1][0], e[0]))
        if len(paths) > 3:  # a common name with no folder in common says little
            weak, kept = 0, []
            for entry in out:
                if not entry[2] and entry[1][1] == paths_pb2.SUGGESTION_REASON_SAME_NAME:
                    weak += 1
                    if weak > _AMBIGUOUS_KEEP:
                        continue
                kept.append(entry)
            out = kept
        return out[: max(limit, 3)]

    def _next_to_labels(self, cp: ClientPath, into: dict[str, _Cand]) -> None:
        if not cp.name:
            return
        if cp.name not in self._beside:
            real: str | None
            try:
                real = self._policy.resolve_str(
                    os.path.join(self._labels_dir, cp.name), cache=self._cache
                )
            except PathRejected:
                real = None
            self._beside[cp.name] = real if real and os.path.isfile(real) else None
        real = self._beside[cp.name]
        if real is not None:
            why = "same name in the labels file's folder (where sleap-io looks itself)"
            _offer(into, real, (0.7, paths_pb2.SUGGESTION_REASON_NEXT_TO_LABELS, why))


def _offer(into: dict[str, _Cand], path: str, cand: _Cand) -> None:
    old = into.get(path)
    if old is None or cand[0] > old[0]:
        into[path] = cand
