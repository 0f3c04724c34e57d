"""Suggestions for videos (and labels files) the worker cannot find.

`Finder` ranks candidate worker paths for missing files and proposes prefix
rules (``/Users/me/data -> /mnt/lab/data``) inferred from found videos and
from same-name matches under the mounts. Spellings, mappings and rule
inference are the shared model's (:mod:`sleap_rtc.paths`): every proposed
rule's worker folder lies inside a mount, so the same worker accepts it at
submit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from sleap_rtc.paths.infer import Rule, infer_rules, order_proposals
from sleap_rtc.paths.model import ClientPath, Key
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

    def labels(self, cp: ClientPath, limit: int) -> list[Candidate]:
        """Suggestions for a labels file the worker cannot find: same-name files
        under the mounts, best first (protocol 1.2, ``labels_suggestions``)."""
        found = [(path, cand) for path, cand, _tail in self._same_name(cp, limit)]
        return found[:limit]

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
        roots = [str(r) for r in self._policy.roots]
        rules: set[Rule] = set()
        folders: set[tuple[Key, str]] = set()  # one inference per (client, worker) folder pair
        for cp, path in (*found, *pairs):
            head, _, name = path.rpartition("/")
            same = cp.name.casefold() == name.casefold() if cp.windows else cp.name == name
            folder = (cp.key(len(cp.parts) - 1), head)
            if same and folder in folders:
                continue  # same folders, same name: the same rules
            if same:
                folders.add(folder)
            rules.update(infer_rules(cp, path, roots=roots))
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
        return order_proposals(scored, MAX_PROPOSALS)

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
