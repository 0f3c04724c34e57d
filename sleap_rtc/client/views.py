"""Plain, frozen views of a worker's path check, for resolution UIs.

A resolution UI (terminal, non-interactive policy, SLEAP's Qt dialog) gets a
:class:`CheckView` and returns a :class:`Resolution` (mappings to add) or
``None`` to cancel. Neither side touches protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sleap_rtc.paths.model import has_prefix, inside_roots, mapping_problems, shown
from sleap_rtc_proto.v1 import paths_pb2

#: Path statuses that need no action.
OK_STATUSES = frozenset({"found", "embedded"})

#: Each status in words a user reads (``outside_mounts`` is "not on the shared storage").
STATUS_WORDS: dict[str, str] = {
    "found": "found",
    "embedded": "embedded in the labels file",
    "missing": "missing",
    "outside_mounts": "not on the worker's shared storage",
    "refused": "refused",
    "unreadable": "unreadable",
    "invalid": "not a usable labels file",
    "unspecified": "unknown status",
}


def status_words(status: str) -> str:
    """A status name (``outside_mounts``) as the words shown to a user."""
    return STATUS_WORDS.get(status, status.replace("_", " "))


def _status_name(value: int) -> str:
    try:
        name = paths_pb2.PathStatus.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return "unspecified"
    return name.removeprefix("PATH_STATUS_").lower()


def _enum_name(enum: object, prefix: str, value: int) -> str:
    try:
        name: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return "unspecified"
    return name.removeprefix(prefix).lower()


@dataclass(frozen=True)
class SuggestionView:
    """A candidate worker path for a missing video."""

    worker_path: str
    reason: str  # prefix_rule | same_name_and_size | same_name | next_to_labels
    score: float
    explanation: str = ""


@dataclass(frozen=True)
class VideoView:
    """One video of the labels file, as the worker saw it."""

    index: int
    original_path: str
    worker_path: str
    status: str  # found | missing | outside_mounts | unreadable | embedded | invalid
    kind: str = "file"
    detail: str = ""
    suggestions: tuple[SuggestionView, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


@dataclass(frozen=True)
class LabelsView:
    """The labels (.slp) file, as the worker saw it (suggestions: protocol 1.2)."""

    original_path: str
    worker_path: str
    status: str
    detail: str = ""
    suggestions: tuple[SuggestionView, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "found"


@dataclass(frozen=True)
class PrefixView:
    """A prefix rule: ``original_prefix`` (client) -> ``worker_prefix``.

    ``resolves`` lists indexes of missing videos the rule would fix (empty for
    saved rules, which the worker has not evaluated); ``source`` is
    ``"worker"`` for the worker's proposals and ``"saved"`` for earlier runs'.
    """

    original_prefix: str
    worker_prefix: str
    resolves: tuple[int, ...] = ()
    evidence: int = 0
    source: str = "worker"


@dataclass(frozen=True)
class RefusedView:
    """A mapping the worker (or the model, before sending) refused, and why.

    ``kind`` is ``"exact"`` (path_mappings) or ``"prefix"`` (prefix_mappings).
    """

    kind: str
    original: str
    worker: str
    reason: str


@dataclass(frozen=True)
class CheckView:
    """Everything a resolution UI needs about one path check.

    Attributes:
        labels: the labels file.
        videos: every video, in file order.
        prefix_proposals: the worker's prefix rules, best first.
        saved_prefixes: prefix rules saved from earlier runs that match a
            missing path; offer these first.
        mounts: the worker's storage roots (for "is the share mounted?").
        path_mappings / prefix_mappings: the mappings this check applied.
        attempt: 1 for the first check, 2 after the first resolution, ...
        hint: a sentence for the user when every video is missing, else None.
        worker_id: the worker that checked.
        refused: mappings of this check the worker refused (protocol 1.2).
        notes: sentences about saved rules left out (refused by this worker).
        dropped_saved: the original prefixes of those saved rules.
    """

    labels: LabelsView
    videos: tuple[VideoView, ...] = ()
    prefix_proposals: tuple[PrefixView, ...] = ()
    saved_prefixes: tuple[PrefixView, ...] = ()
    mounts: tuple[str, ...] = ()
    path_mappings: Mapping[str, str] = field(default_factory=dict)
    prefix_mappings: Mapping[str, str] = field(default_factory=dict)
    check_token: str = ""
    attempt: int = 1
    hint: str | None = None
    worker_id: str = ""
    refused: tuple[RefusedView, ...] = ()
    notes: tuple[str, ...] = ()
    dropped_saved: tuple[str, ...] = ()

    @property
    def found(self) -> tuple[VideoView, ...]:
        """Videos found (or embedded in the labels file)."""
        return tuple(v for v in self.videos if v.ok)

    @property
    def missing(self) -> tuple[VideoView, ...]:
        """Videos not usable on the worker (missing, outside mounts, unreadable)."""
        return tuple(v for v in self.videos if not v.ok)

    @property
    def embedded_only(self) -> bool:
        """True when every video is embedded in the labels file."""
        return bool(self.videos) and all(v.status == "embedded" for v in self.videos)

    @property
    def all_videos_missing(self) -> bool:
        """True when no file video was found (embedded ones do not count)."""
        files = [v for v in self.videos if v.status != "embedded"]
        return bool(files) and not any(v.ok for v in files)

    @property
    def passed(self) -> bool:
        """The labels file and every video are usable on the worker."""
        return self.labels.ok and not self.missing

    def missing_paths(self) -> list[str]:
        """Original paths still missing (the labels file first when it is)."""
        out = [] if self.labels.ok else [self.labels.original_path]
        return out + [v.original_path for v in self.missing]

    @classmethod
    def from_result(
        cls,
        result: paths_pb2.PathCheckResult,
        *,
        path_mappings: Mapping[str, str] | None = None,
        prefix_mappings: Mapping[str, str] | None = None,
        saved_prefixes: Mapping[str, str] | None = None,
        mounts: Sequence[str] = (),
        attempt: int = 1,
        worker_id: str = "",
    ) -> CheckView:
        """Build the view of a PathCheckResult.

        ``mounts`` (from HelloAck) is used when the result discloses none.
        ``saved_prefixes`` are filtered to those matching a missing path; a
        saved rule this worker would refuse (malformed, or its worker folder
        outside the mounts) is left out with a note (:func:`saved_rule_problem`).
        """
        labels = LabelsView(
            result.labels.original_path,
            result.labels.worker_path,
            _status_name(result.labels.status),
            result.labels.detail,
            tuple(_suggestion(s) for s in result.labels.suggestions),
        )
        videos = tuple(
            VideoView(
                index=v.index,
                original_path=v.original_path,
                worker_path=v.worker_path,
                status=_status_name(v.status),
                kind=_enum_name(paths_pb2.VideoKind, "VIDEO_KIND_", v.kind),
                detail=v.detail,
                suggestions=tuple(_suggestion(s) for s in v.suggestions),
            )
            for v in result.videos
        )
        proposals = tuple(
            PrefixView(p.original_prefix, p.worker_prefix, tuple(p.resolves), p.evidence)
            for p in result.prefix_proposals
        )
        all_mounts = tuple(result.mounts) or tuple(mounts)
        view = cls(
            labels=labels,
            videos=videos,
            prefix_proposals=proposals,
            mounts=all_mounts,
            path_mappings=dict(path_mappings or {}),
            prefix_mappings=dict(prefix_mappings or {}),
            check_token=result.check_token,
            attempt=attempt,
            worker_id=worker_id,
        )
        missing = view.missing_paths()
        applied = dict(prefix_mappings or {})
        saved_list: list[PrefixView] = []
        notes: list[str] = []
        dropped: list[str] = []
        for orig, new in sorted((saved_prefixes or {}).items()):
            if applied.get(orig) == new or not any(has_prefix(p, orig) for p in missing):
                continue
            problem = saved_rule_problem(orig, new, all_mounts)
            if problem is None:
                saved_list.append(PrefixView(orig, new, source="saved"))
            else:
                notes.append(f"Saved rule {shown(orig)} -> {shown(new)} left out: {problem}.")
                dropped.append(orig)
        saved = tuple(saved_list)
        refused = tuple(
            RefusedView(
                "exact" if r.kind == paths_pb2.MAPPING_KIND_EXACT else "prefix",
                r.original,
                r.worker,
                r.reason,
            )
            for r in result.refused_mappings
        )
        hint = storage_hint(len(view.videos), all_mounts) if view.all_videos_missing else None
        return cls(
            labels=labels,
            videos=videos,
            prefix_proposals=proposals,
            saved_prefixes=saved,
            mounts=all_mounts,
            path_mappings=view.path_mappings,
            prefix_mappings=view.prefix_mappings,
            check_token=view.check_token,
            attempt=attempt,
            hint=hint,
            worker_id=worker_id,
            refused=refused,
            notes=tuple(notes),
            dropped_saved=tuple(dropped),
        )


def _suggestion(s: paths_pb2.Suggestion) -> SuggestionView:
    return SuggestionView(
        s.worker_path,
        _enum_name(paths_pb2.SuggestionReason, "SUGGESTION_REASON_", s.reason),
        s.score,
        s.explanation,
    )


def saved_rule_problem(original: str, worker: str, mounts: Sequence[str]) -> str | None:
    """Why a saved rule must not be used with a worker of these ``mounts``, or None.

    The model's refusals (the worker refuses the same), and a worker folder
    outside every mount: the worker refuses such a rule at submit. With no
    mounts disclosed only the model's refusals apply (the check still decides).
    """
    problems = mapping_problems({}, {original: worker})
    if problems:
        return problems[0].reason.removeprefix("refused: ")
    if mounts and not inside_roots(worker, mounts):
        return f"{shown(worker)} is not under the worker's shared storage ({', '.join(mounts)})"
    return None


@dataclass(frozen=True)
class Resolution:
    """What the user chose: mappings to add to the current ones, then re-check.

    Attributes:
        path_mappings: exact original path -> worker path (labels or video).
        prefix_mappings: original prefix -> worker prefix.
    """

    path_mappings: Mapping[str, str] = field(default_factory=dict)
    prefix_mappings: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.path_mappings and not self.prefix_mappings


def storage_hint(video_count: int, mounts: Sequence[str]) -> str:
    """The 'all videos missing' hint about the shared storage mount."""
    where = (
        "The worker's shared storage is mounted at: " + ", ".join(mounts) + "."
        if mounts
        else "The worker did not disclose its storage mounts."
    )
    return (
        f"None of the {video_count} video(s) were found on the worker. Is the shared storage "
        f"mounted on the worker? {where} Map the folder holding your videos to the matching "
        "worker folder (a prefix rule fixes them all at once)."
    )
