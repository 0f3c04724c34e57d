"""Plain, frozen views of a worker's path check, for resolution UIs.

A resolution UI (terminal, non-interactive policy, SLEAP's Qt dialog) gets a
:class:`CheckView` and returns a :class:`Resolution` (mappings to add) or
``None`` to cancel. Neither side touches protobuf.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sleap_rtc_proto.v1 import paths_pb2

#: Path statuses that need no action.
OK_STATUSES = frozenset({"found", "embedded"})


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
    """The labels (.slp) file, as the worker saw it."""

    original_path: str
    worker_path: str
    status: str
    detail: str = ""

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
        ``saved_prefixes`` are filtered to those matching a missing path.
        """
        labels = LabelsView(
            result.labels.original_path,
            result.labels.worker_path,
            _status_name(result.labels.status),
            result.labels.detail,
        )
        videos = tuple(
            VideoView(
                index=v.index,
                original_path=v.original_path,
                worker_path=v.worker_path,
                status=_status_name(v.status),
                kind=_enum_name(paths_pb2.VideoKind, "VIDEO_KIND_", v.kind),
                detail=v.detail,
                suggestions=tuple(
                    SuggestionView(
                        s.worker_path,
                        _enum_name(paths_pb2.SuggestionReason, "SUGGESTION_REASON_", s.reason),
                        s.score,
                        s.explanation,
                    )
                    for s in v.suggestions
                ),
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
        saved = tuple(
            PrefixView(orig, new, source="saved")
            for orig, new in sorted((saved_prefixes or {}).items())
            if applied.get(orig) != new and any(has_prefix(p, orig) for p in missing)
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
        )


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


_SEP = re.compile(r"[\\/]+")


def has_prefix(path: str, prefix: str) -> bool:
    """Whether ``prefix`` is a leading folder of ``path`` (separator boundary).

    >>> has_prefix("/a/bc/x.mp4", "/a/b"), has_prefix("/a/b/x.mp4", "/a/b")
    (False, True)
    >>> has_prefix("C:\\\\d\\\\x", "C:\\\\d")
    True
    """
    if not prefix or not path.startswith(prefix):
        return False
    if len(path) == len(prefix) or prefix[-1] in "/\\":
        return True
    return path[len(prefix)] in "/\\"


def apply_prefixes(path: str, prefixes: Mapping[str, str]) -> str | None:
    """``path`` rewritten by the longest matching prefix rule, or None."""
    best = max((p for p in prefixes if has_prefix(path, p)), key=len, default=None)
    if best is None:
        return None
    rest = path[len(best) :].replace("\\", "/")
    target = prefixes[best]
    if rest and not rest.startswith("/") and not target.endswith("/"):
        rest = "/" + rest
    return target + rest


def infer_prefix(original: str, worker: str) -> tuple[str, str] | None:
    """The prefix rule that turns ``original`` into ``worker``: their differing heads.

    >>> infer_prefix("C:\\\\Users\\\\me\\\\data\\\\a.mp4", "/mnt/lab/data/a.mp4")
    ('C:\\\\Users\\\\me', '/mnt/lab')
    >>> infer_prefix("/a/x.mp4", "/b/y.mp4") is None
    True
    """
    o_parts = [m for m in _SEP.split(original) if m]
    w_parts = [m for m in _SEP.split(worker) if m]
    common = 0
    while (
        common < min(len(o_parts), len(w_parts)) - 1
        and o_parts[-1 - common] == w_parts[-1 - common]
    ):
        common += 1
    if common == 0 or o_parts[-1] != w_parts[-1]:
        return None
    o_head = _head(original, len(o_parts) - common)
    w_head = _head(worker, len(w_parts) - common)
    if not o_head or not w_head or o_head == w_head:
        return None
    return o_head, w_head


def _head(path: str, keep: int) -> str:
    """The first ``keep`` components of ``path`` as written (separators kept)."""
    if keep <= 0:
        return "/" if path.startswith("/") else ""
    seen = 0
    i = 0
    n = len(path)
    while i < n and path[i] in "/\\":
        i += 1
    while i < n:
        j = i
        while j < n and path[j] not in "/\\":
            j += 1
        seen += 1
        if seen == keep:
            return path[:j]
        i = j
        while i < n and path[i] in "/\\":
            i += 1
    return path
