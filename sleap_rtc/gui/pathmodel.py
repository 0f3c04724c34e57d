"""The PathResolutionDialog's model, without Qt: rows, choices, folder rules, Continue.

One row for the labels file and one per video, each with the worker's status and
reason and its ranked suggestions. The user's choice for a row is only a
*proposal*: a row counts as found only when the worker's latest check says so
(:meth:`PathModel.update`), so "Continue" is possible exactly when the worker
said everything is usable. Folder rules (the worker's proposals and saved ones)
fill in every matching row at once ("Apply to all").

>>> from sleap_rtc.client.views import CheckView, LabelsView, SuggestionView, VideoView
>>> view = CheckView(labels=LabelsView("/l.slp", "/l.slp", "found"), videos=(
...     VideoView(0, "/old/a.mp4", "", "missing",
...               suggestions=(SuggestionView("/mnt/a.mp4", "same_name", 0.65),)),))
>>> model = PathModel(view)
>>> model.rows[1].choice, model.can_continue
('/mnt/a.mp4', False)
>>> model.resolution().path_mappings
{'/old/a.mp4': '/mnt/a.mp4'}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sleap_rtc.client.views import CheckView, PrefixView, Resolution, SuggestionView, status_words
from sleap_rtc.paths.model import apply_prefixes, has_prefix

__all__ = ["PathModel", "PathRow", "suggestion_text"]


def suggestion_text(s: SuggestionView) -> str:
    """How a suggestion reads in the choice list: path, reason and score."""
    reason = s.reason.replace("_", " ")
    return f"{s.worker_path}  ({reason}, {s.score:.2f})"


@dataclass
class PathRow:
    """One path of the check.

    Attributes:
        kind: ``"labels"`` or ``"video"``.
        index: the video's index (-1 for the labels file).
        original_path: the path in the labels file (the client's).
        status: the worker's word for it (``found``, ``missing``, ...).
        reason: the worker's detail (why it is not usable), "" if none.
        worker_path: where the worker found it ("" if it did not).
        suggestions: the worker's ranked suggestions, best first.
        choice: the worker path the user chose or typed ("" for none).
        rule: the folder rule that filled ``choice`` (original prefix), if any.
    """

    kind: str
    index: int
    original_path: str
    status: str
    reason: str = ""
    worker_path: str = ""
    suggestions: tuple[SuggestionView, ...] = ()
    choice: str = ""
    rule: str = ""

    @property
    def found(self) -> bool:
        """Usable on the worker, by the worker's own answer."""
        return self.status in ("found", "embedded")

    @property
    def status_text(self) -> str:
        return status_words(self.status)


@dataclass
class PathModel:
    """Rows of one check, the user's choices, and the folder rules."""

    view: CheckView
    rows: list[PathRow] = field(default_factory=list)
    #: Folder rules chosen (original prefix -> worker prefix).
    prefixes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = self._rows(self.view)

    @staticmethod
    def _rows(view: CheckView) -> list[PathRow]:
        lab = view.labels
        rows = [PathRow("labels", -1, lab.original_path, lab.status, lab.detail,
                        lab.worker_path if lab.ok else "", lab.suggestions)]
        rows += [PathRow("video", v.index, v.original_path, v.status, v.detail,
                         v.worker_path if v.ok else "", v.suggestions) for v in view.videos]
        for row in rows:
            if not row.found and row.suggestions:
                row.choice = row.suggestions[0].worker_path
        return rows

    # ------------------------------------------------------------------ worker answers

    def update(self, view: CheckView) -> None:
        """Take the worker's new answer; the user's choices for rows still missing stay."""
        old = {(r.kind, r.original_path): r for r in self.rows}
        self.view = view
        self.rows = self._rows(view)
        for row in self.rows:
            before = old.get((row.kind, row.original_path))
            if before is not None and not row.found and before.choice:
                row.choice, row.rule = before.choice, before.rule

    @property
    def can_continue(self) -> bool:
        """True exactly when the worker's latest check found everything."""
        return self.view.passed and all(r.found for r in self.rows)

    @property
    def missing(self) -> list[PathRow]:
        return [r for r in self.rows if not r.found]

    @property
    def all_missing_hint(self) -> str:
        """The hint naming the worker's storage when every video is missing ("" otherwise)."""
        if not self.view.all_videos_missing and self.view.labels.ok:
            return ""
        mounts = ", ".join(self.view.mounts) or "(none disclosed)"
        head = self.view.hint or "Nothing was found on the worker."
        if self.view.mounts and all(m in head for m in self.view.mounts):
            return head  # the worker's hint already names its storage
        return f"{head} The worker's storage: {mounts}."

    # ------------------------------------------------------------------ user edits

    def set_choice(self, row: int, text: str) -> None:
        """The user typed or picked ``text`` for ``row`` (never marks it found)."""
        target = self.rows[row]
        if target.found:
            return
        target.choice = _strip_suggestion(text.strip(), target.suggestions)
        target.rule = ""

    @property
    def rules(self) -> list[PrefixView]:
        """Folder rules on offer: saved ones first, then the worker's proposals."""
        seen: set[tuple[str, str]] = set()
        out: list[PrefixView] = []
        for rule in (*self.view.saved_prefixes, *self.view.prefix_proposals):
            key = (rule.original_prefix, rule.worker_prefix)
            if key not in seen:
                seen.add(key)
                out.append(rule)
        return out

    def apply_rule(self, original_prefix: str, worker_prefix: str) -> int:
        """"Apply to all": fill every missing row under ``original_prefix``; returns how many."""
        count = 0
        for row in self.rows:
            if row.found or not has_prefix(row.original_path, original_prefix):
                continue
            mapped = apply_prefixes(row.original_path, {original_prefix: worker_prefix})
            if mapped is None:
                continue
            row.choice, row.rule = mapped, original_prefix
            count += 1
        if count:
            self.prefixes[original_prefix] = worker_prefix
        return count

    def resolution(self) -> Resolution:
        """What to ask the worker to check: typed paths and the rules that filled rows."""
        used = {r.rule for r in self.rows if r.rule and not r.found}
        paths = {r.original_path: r.choice for r in self.rows
                 if not r.found and r.choice and not r.rule}
        prefixes = {k: v for k, v in self.prefixes.items() if k in used}
        return Resolution(path_mappings=paths, prefix_mappings=prefixes)


def _strip_suggestion(text: str, suggestions: tuple[SuggestionView, ...]) -> str:
    """A picked suggestion's display text back to its path."""
    for s in suggestions:
        if text == suggestion_text(s):
            return s.worker_path
    return text
