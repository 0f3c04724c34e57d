"""Path resolution UIs, all behind one callback shape (:data:`Resolver`).

A resolver is a plain callable: it takes a frozen :class:`CheckView` (what the
worker found and missed, its suggestions and prefix proposals, saved prefix
rules from earlier runs) and returns a :class:`Resolution` (mappings to add,
re-checked on the worker) or ``None`` to cancel. SLEAP's Qt dialog fits the
same shape; so do the two here:

- :class:`TerminalResolver`: rich tables and a prompt (number = take that
  suggestion, a typed path, ``p`` = apply the prefix proposal, ``s`` = skip,
  ``c`` = cancel). Input and output are injectable.
- :class:`AutoResolver`: non-interactive; takes the best suggestion scoring at
  least ``threshold`` (default 0.6, see its scale), else raises
  :class:`ResolutionFailed` listing what is missing.

Saved prefix rules live in a small JSON file (:class:`PrefixStore`).

>>> from sleap_rtc.client.views import CheckView, LabelsView, SuggestionView, VideoView
>>> view = CheckView(labels=LabelsView("/l.slp", "/l.slp", "found"), videos=(
...     VideoView(0, "/old/a.mp4", "/old/a.mp4", "missing",
...               suggestions=(SuggestionView("/mnt/a.mp4", "same_name", 0.65),)),))
>>> AutoResolver()(view).path_mappings
{'/old/a.mp4': '/mnt/a.mp4'}
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from sleap_rtc.client.views import (
    CheckView,
    PrefixView,
    Resolution,
    VideoView,
    status_words,
)
from sleap_rtc.paths.infer import specific_rule
from sleap_rtc.paths.model import apply_prefixes, has_prefix, shown
from sleap_rtc_proto.rules import is_absolute_any

#: The callback shape every resolution UI has. May also return an awaitable.
Resolver = Callable[[CheckView], "Resolution | Awaitable[Resolution | None] | None"]

#: Prompts per missing path before the terminal resolver leaves it unresolved.
MAX_PROMPTS_PER_PATH = 5


class ResolutionFailed(Exception):
    """A non-interactive resolver could not resolve every path.

    Attributes:
        missing: the original paths left unresolved.
    """

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing


# ----------------------------------------------------------------------------- store


def default_store_path() -> Path:
    """``<user config dir>/sleap-rtc/prefix_mappings.json`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("sleap-rtc", appauthor=False)) / "prefix_mappings.json"


class PrefixStore:
    """Prefix rules that worked before, per worker, in a small JSON file.

    A corrupt or unreadable file reads as empty; writes are atomic.

    >>> import tempfile, pathlib
    >>> store = PrefixStore(pathlib.Path(tempfile.mkdtemp()) / "p.json")
    >>> store.remember({"/Users/me/data": "/mnt/lab/data"}, worker_id="w1")
    >>> store.load("w1")
    {'/Users/me/data': '/mnt/lab/data'}
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_store_path()

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        workers = data.get("workers") if isinstance(data, dict) else None
        if not isinstance(workers, dict):
            return {}
        out: dict[str, dict[str, str]] = {}
        for worker, rules in workers.items():
            if isinstance(rules, dict):
                out[str(worker)] = {
                    str(k): str(v)
                    for k, v in rules.items()
                    if isinstance(k, str) and isinstance(v, str)
                }
        return out

    def load(self, worker_id: str = "") -> dict[str, str]:
        """Saved rules for ``worker_id`` (and those saved for any worker)."""
        workers = self._read()
        return {**workers.get("", {}), **workers.get(worker_id, {})}

    def remember(self, prefixes: Mapping[str, str], worker_id: str = "") -> None:
        """Add ``prefixes`` for ``worker_id``; failures to write are ignored."""
        if not prefixes:
            return
        workers = self._read()
        workers.setdefault(worker_id, {}).update(prefixes)
        self._write(workers)

    def forget(self, originals: Iterable[str], worker_id: str = "") -> None:
        """Drop the rules keyed by ``originals`` for ``worker_id`` (and for any worker)."""
        drop = set(originals)
        workers = self._read()
        changed = False
        for who in {worker_id, ""}:
            rules = workers.get(who, {})
            for original in drop & rules.keys():
                del rules[original]
                changed = True
        if changed:
            self._write(workers)

    def _write(self, workers: dict[str, dict[str, str]]) -> None:
        text = json.dumps({"version": 1, "workers": workers}, indent=2, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass


def prefixes_learned(
    resolution_paths: Mapping[str, str], mounts: Sequence[str] | None = None
) -> dict[str, str]:
    """Prefix rules implied by exact mappings, in their specific form (the two folders,
    :func:`~sleap_rtc.paths.infer.specific_rule`): no broader than the evidence, and
    with ``mounts`` only rules whose worker folder lies under one."""
    out: dict[str, str] = {}
    for original, worker in resolution_paths.items():
        rule = specific_rule(original, worker, roots=mounts or None)
        if rule is not None:
            out.setdefault(rule[0], rule[1])
    return out


# ----------------------------------------------------------------------------- policy


#: The lowest suggestion score :class:`AutoResolver` accepts by default (as the
#: CLI's ``--min-score``): a same-name file with two matching parent folders, or better.
DEFAULT_MIN_SCORE = 0.6


class AutoResolver:
    """Non-interactive resolution: saved rules first, then confident suggestions.

    On the first round, saved prefix rules that match a missing path are
    returned (the worker re-checks them). Then each missing video takes its
    best suggestion when ``score >= threshold``. Anything left raises
    :class:`ResolutionFailed` with the list.

    The worker scores suggestions from 0 to 1:

    ======================================  ==========================
    reason                                  score
    ======================================  ==========================
    a prefix rule that fixes other videos   0.90-0.99 (more evidence, higher)
    same name and same size                 0.80-0.85 (+ matching folders)
    next to the labels file                 0.70
    same name                               0.45 + 0.10 per matching trailing
                                            folder (at most 3: 0.75)
    same name, ambiguous (many such files)  0.35-0.45
    same name, different size               half of the above
    ======================================  ==========================

    The default ``threshold`` 0.6 accepts everything down to a same-name file
    whose two parent folders match (0.65), and refuses a bare or ambiguous
    name match. Raise it (0.8) to accept only size- or rule-backed matches.

    Args:
        threshold: the lowest score accepted.
        use_saved: try saved prefix rules first.
    """

    def __init__(self, threshold: float = DEFAULT_MIN_SCORE, *, use_saved: bool = True) -> None:
        self.threshold = threshold
        self.use_saved = use_saved

    def __call__(self, view: CheckView) -> Resolution:
        if self.use_saved and view.saved_prefixes:
            return Resolution(
                prefix_mappings={p.original_prefix: p.worker_prefix for p in view.saved_prefixes}
            )
        chosen: dict[str, str] = {}
        unresolved: list[str] = []
        if not view.labels.ok:
            best_labels = view.labels.suggestions[0] if view.labels.suggestions else None
            if best_labels is not None and best_labels.score >= self.threshold:
                chosen[view.labels.original_path] = best_labels.worker_path
            else:
                unresolved.append(view.labels.original_path)
        for video in view.missing:
            best = video.suggestions[0] if video.suggestions else None
            if best is not None and best.score >= self.threshold:
                chosen[video.original_path] = best.worker_path
            else:
                unresolved.append(video.original_path)
        if unresolved:
            lines = "\n".join(f"  - {p}" for p in unresolved)
            hint = f"\n{view.hint}" if view.hint else ""
            raise ResolutionFailed(
                f"{len(unresolved)} path(s) are missing on the worker and no suggestion "
                f"scored at least {self.threshold:g}:\n{lines}{hint}",
                unresolved,
            )
        return Resolution(path_mappings=chosen)


class SavedRulesResolver:
    """Applies the saved prefix rules that match (as ``train`` does first), nothing else.

    ``check`` uses it so that it resolves exactly as ``train`` would before
    asking anything; anything left raises :class:`ResolutionFailed`.
    """

    def __call__(self, view: CheckView) -> Resolution:
        if view.saved_prefixes:
            return Resolution(
                prefix_mappings={p.original_prefix: p.worker_prefix for p in view.saved_prefixes}
            )
        missing = view.missing_paths()
        lines = "\n".join(f"  - {p}" for p in missing)
        raise ResolutionFailed(f"{len(missing)} path(s) are not usable on the worker:\n{lines}",
                               missing)


# ----------------------------------------------------------------------------- terminal


class TerminalResolver:
    """Interactive resolution in a terminal, with rich tables.

    Args:
        console: where to print (default: stdout).
        input: reads one answer given a prompt (default: :func:`input`).
    """

    def __init__(
        self,
        *,
        console: Console | None = None,
        input: Callable[[str], str] | None = None,
        file: TextIO | None = None,
    ) -> None:
        self.console = console or Console(file=file)
        self._input = input or builtins.input

    def ask(self, prompt: str) -> str:
        # No markup: "[p = apply, ...]" is text, not a rich tag (it printed as a bare ": ").
        self.console.print(prompt, end="", markup=False, highlight=False)
        try:
            return self._input("").strip()
        except EOFError:
            return "c"

    def __call__(self, view: CheckView) -> Resolution | None:
        self.show(view)
        paths: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        # 1. saved rules from earlier runs, then the worker's proposals.
        for rule in (*view.saved_prefixes, *view.prefix_proposals):
            if any(has_prefix(o, p) for o in prefixes for p in [rule.original_prefix]):
                continue
            answer = self._ask_prefix(rule)
            if answer is None:
                return None
            if answer:
                prefixes[rule.original_prefix] = rule.worker_prefix
        # 2. the labels file, then each missing video not covered by a chosen prefix.
        todo: list[tuple[str, VideoView | None]] = []
        if not view.labels.ok:
            todo.append((view.labels.original_path, None))
        todo.extend((v.original_path, v) for v in view.missing)
        for original, video in todo:
            if apply_prefixes(original, prefixes) is not None:
                continue
            choice = self._ask_path(original, video, view)
            if choice is _CANCEL:
                return None
            if isinstance(choice, tuple):
                prefixes[choice[0]] = choice[1]
            elif isinstance(choice, str):
                paths[original] = choice
        return Resolution(path_mappings=paths, prefix_mappings=prefixes)

    # ------------------------------------------------------------------ display

    def show(self, view: CheckView) -> None:
        c = self.console
        labels = view.labels
        status = "[green]found[/]" if labels.ok else f"[red]{status_words(labels.status)}[/]"
        c.print(
            f"Labels file: {labels.original_path} -> {labels.worker_path or '?'} ({status})",
            markup=True,
            highlight=False,
        )
        if labels.detail:
            c.print(f"  {labels.detail}", markup=False, highlight=False)
        for i, s in enumerate(labels.suggestions, 1):
            c.print(f"  {i}. {s.worker_path} ({_reason_text(s.reason)}, {s.score:.2f})",
                    markup=False, highlight=False)
        if view.videos:
            table = Table(title=f"Videos on the worker (check {view.attempt})")
            table.add_column("#", justify="right")
            table.add_column("status")
            table.add_column("original path")
            table.add_column("worker path / suggestions")
            for video in view.videos:
                color = "green" if video.ok else "red"
                extra = video.worker_path or ""
                if video.suggestions:
                    extra += "".join(
                        f"\n  {i}. {s.worker_path} ({_reason_text(s.reason)}, {s.score:.2f})"
                        for i, s in enumerate(video.suggestions, 1)
                    )
                if video.detail and not video.ok:
                    extra += f"\n  {video.detail}"
                table.add_row(str(video.index), f"[{color}]{status_words(video.status)}[/]",
                              video.original_path, extra)
            c.print(table)
        for refused in view.refused:
            c.print(f"Refused by the worker: {refused.reason}", markup=False, highlight=False)
        for note in view.notes:
            c.print(note, markup=False, highlight=False)
        if not labels.ok:
            c.print("The labels file is not usable on the worker; its videos were not checked.")
        else:
            c.print(f"{len(view.found)} found, {len(view.missing)} not usable on the worker.")
        if view.hint:
            c.print(f"[yellow]{view.hint}[/]")
        elif view.mounts and view.missing:
            c.print("Worker storage: " + ", ".join(view.mounts))

    # ------------------------------------------------------------------ prompts

    def _ask_prefix(self, rule: PrefixView) -> bool | None:
        origin = "saved from an earlier run" if rule.source == "saved" else (
            f"proposed by the worker, resolves {len(rule.resolves)} video(s)"
        )
        self.console.print(
            f"Prefix rule {rule.original_prefix} -> {rule.worker_prefix} ({origin})."
        )
        for _ in range(MAX_PROMPTS_PER_PATH):
            answer = self.ask("Apply it? [p = apply, n = no, c = cancel]: ").lower()
            if answer in ("p", "y", "yes"):
                return True
            if answer in ("n", "no", "s", ""):
                return False
            if answer == "c":
                return None
            self.console.print("[red]Answer p, n or c.[/]")
        return False

    def _ask_path(
        self, original: str, video: VideoView | None, view: CheckView
    ) -> str | tuple[str, str] | object | None:
        what = "labels file" if video is None else f"video {video.index}"
        self.console.print(f"Not usable on the worker: {what} {original}", markup=False,
                           highlight=False)
        suggestions = video.suggestions if video is not None else view.labels.suggestions
        proposal = _proposal_for(video, view)
        for i, s in enumerate(suggestions, 1):
            self.console.print(
                f"  {i}. {s.worker_path}  ({_reason_text(s.reason)}, score {s.score:.2f})"
                + (f" - {s.explanation}" if s.explanation else "")
            )
        options = []
        if suggestions:
            options.append(f"1-{len(suggestions)} = take a suggestion")
        options.append(f"a worker path for the {what}")
        if proposal is not None:
            options.append(f"p = prefix {proposal.original_prefix} -> {proposal.worker_prefix}")
        options += ["s = skip", "c = cancel"]
        for _ in range(MAX_PROMPTS_PER_PATH):
            answer = self.ask(f"[{', '.join(options)}]: ")
            low = answer.lower()
            if low == "c":
                return _CANCEL
            if low in ("s", ""):
                return None
            if low == "p" and proposal is not None:
                return (proposal.original_prefix, proposal.worker_prefix)
            if answer.isdigit() and 1 <= int(answer) <= len(suggestions):
                return suggestions[int(answer) - 1].worker_path
            if is_absolute_any(answer):
                return answer
            self.console.print(f"Not understood: {shown(answer)}. Type a number, an absolute "
                               "worker path, p, s or c.", markup=False, highlight=False)
        return None


_CANCEL = object()

_REASONS = {
    "prefix_rule": "prefix rule",
    "same_name_and_size": "same name and size",
    "same_name": "same name",
    "next_to_labels": "next to the labels file",
}


def _reason_text(reason: str) -> str:
    return _REASONS.get(reason, reason)


def _proposal_for(video: VideoView | None, view: CheckView) -> PrefixView | None:
    if video is not None:
        for rule in view.prefix_proposals:
            if video.index in rule.resolves:
                return rule
    for rule in view.prefix_proposals:
        original = video.original_path if video is not None else view.labels.original_path
        if has_prefix(original, rule.original_prefix):
            return rule
    return None


def describe(view: CheckView) -> dict[str, Any]:
    """A JSON-friendly summary of a check (for ``--json`` output and logs)."""
    return {
        "labels": {"path": view.labels.original_path, "status": view.labels.status},
        "found": [v.original_path for v in view.found],
        "missing": view.missing_paths(),
        "refused": [r.reason for r in view.refused],
        "notes": list(view.notes),
        "hint": view.hint,
    }
