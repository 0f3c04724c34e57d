"""Prefix rules inferred from evidence (a client path and the worker file it is), and their order.

Pure (standard library only). A rule maps a client folder to a worker folder.
From one pair ``C:\\\\Users\\\\me\\\\lab\\\\videos\\\\a.mp4 -> /mnt/share/lab/videos/a.mp4``
the candidates run from the most specific (strip only the name:
``C:\\\\Users\\\\me\\\\lab\\\\videos -> /mnt/share/lab/videos``) to the most general (strip the
longest common tail: ``C:\\\\Users\\\\me -> /mnt/share``). Given the worker's
mount roots, only rules whose worker folder lies inside a mount are kept: the
worker accepts those at submit.

>>> from sleap_rtc.paths.model import ClientPath
>>> [(r.original, r.worker) for r in infer_rules(
...     ClientPath.parse("/Volumes/share/p/a.mp4"), "/mnt/share/p/a.mp4", roots=["/mnt/share"])]
[('/Volumes/share/p', '/mnt/share/p'), ('/Volumes/share', '/mnt/share')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sleap_rtc.paths.model import ClientPath, Key, inside_roots, join_worker

__all__ = ["Rule", "infer_rules", "order_proposals", "specific_rule"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A prefix rule: original prefix (first ``n`` parts, ``key``) -> worker prefix."""

    key: Key
    n: int
    original: str
    worker: str

    def apply(self, cp: ClientPath) -> str:
        return join_worker(self.worker, cp.parts[self.n :])


def _worker_parts(worker: str) -> tuple[str, ...]:
    return tuple(p for p in worker.split("/") if p)


def infer_rules(
    cp: ClientPath,
    worker: str,
    *,
    roots: Sequence[str] | None = None,
    specific: bool = True,
) -> list[Rule]:
    """Rules that map ``cp`` to ``worker``, most specific first.

    Each strips ``k`` trailing parts from both sides, ``k`` from 1 (the name)
    to the longest common tail; ``specific=False`` keeps only the most general.
    With ``roots``, a rule whose worker prefix is not inside a root is dropped.
    A rule that maps a folder onto itself is no rule.
    """
    if cp.relative or cp.climbs or not worker.startswith("/"):
        return []
    wparts = _worker_parts(worker)
    if ".." in wparts:
        return []
    fold = cp.windows
    common = 0
    for a, b in zip(reversed(cp.parts), reversed(wparts), strict=False):
        if (a.casefold() != b.casefold()) if fold else (a != b):
            break
        common += 1
    min_orig = {"//": 2, "/": 1}.get(cp.anchor, 0)
    general = min(common, len(cp.parts) - min_orig, len(wparts) - 1)
    strips = range(1, general + 1) if specific else range(general, general + 1)
    rules = []
    for strip in strips:
        if strip < 1:
            continue
        n = len(cp.parts) - strip
        target = "/" + "/".join(wparts[: len(wparts) - strip])
        rule = Rule(cp.key(n), n, cp.render(n), target)
        if not cp.windows and rule.original == rule.worker:
            continue
        if roots is not None and not inside_roots(rule.worker, roots):
            continue
        rules.append(rule)
    return rules


def specific_rule(
    original: str, worker: str, roots: Sequence[str] | None = None
) -> tuple[str, str] | None:
    """The most specific rule behind an exact mapping (the two folders), or None.

    This is the form saved for later runs: it says no more than the evidence.

    >>> specific_rule("/Users/me/lab/videos/a.mp4", "/mnt/share/lab/videos/a.mp4")
    ('/Users/me/lab/videos', '/mnt/share/lab/videos')
    >>> specific_rule("/Users/me/a.mp4", "/mnt/share/b.mp4") is None
    True
    """
    rules = infer_rules(ClientPath.parse(original), worker, roots=roots)
    if not rules or rules[0].n != len(ClientPath.parse(original).parts) - 1:
        return None
    return rules[0].original, rules[0].worker


Scored = tuple[Rule, list[int], int]  # rule, missing videos it resolves, evidence


def order_proposals(scored: Iterable[Scored], limit: int) -> list[Scored]:
    """Proposals best first, at most ``limit``.

    The rule resolving the most videos comes first, the most specific one on
    ties; each is followed by its broader alternatives (an ancestor folder
    resolving the same videos or more), while slots remain. Every rule that
    adds a video nothing before it resolves is kept before any alternative.
    """
    ranked = sorted(scored, key=lambda e: (-len(e[1]), -e[0].n, e[0].original, e[0].worker))
    primaries: list[Scored] = []
    covered: set[int] = set()
    for entry in ranked:
        if not covered.issuperset(entry[1]):
            primaries.append(entry)
            covered.update(entry[1])
    primaries = primaries[:limit]
    spare = limit - len(primaries)
    used = {entry[0] for entry in primaries}
    out: list[Scored] = []
    for primary in primaries:
        out.append(primary)
        rule, resolves = primary[0], set(primary[1])
        alternatives = [
            entry
            for entry in ranked
            if entry[0] not in used
            and entry[0].n < rule.n
            and rule.key[: entry[0].n + 1] == entry[0].key
            and resolves.issubset(entry[1])
        ]
        for entry in sorted(alternatives, key=lambda e: -e[0].n)[: max(spare, 0)]:
            out.append(entry)
            used.add(entry[0])
            spare -= 1
    return out
