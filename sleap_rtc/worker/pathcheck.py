"""PATH_CHECK: is the labels file, and every video it references, visible here?

`PathChecker.check` is a pure function of the filesystem (no asyncio, no
sockets): it maps the client's paths (exact mappings first, then the longest
prefix mapping), puts every worker path through the `MountPolicy`, reads the
labels file's video list (`slp.read_video_refs`), reports each video, ranks
suggestions for the missing ones, proposes prefix rules and, when everything
passed, issues a check token (see :mod:`.checktoken`) that a later
JobSubmit must carry.

Client paths may be Windows paths (``C:\\Users\\me\\a.mp4``, or ``C:/Users/...``
as sleap-io stores them): they are compared with ``/`` separators and case
folded, and the original string is kept in the result.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from sleap_rtc.paths.model import (
    ClientPath,
    Mapper,
    MappingProblem,
    inside_roots,
    mapping_problems,
    shown,
    text_problem,
)
from sleap_rtc.worker.checktoken import issue_check_token, verify_check_token
from sleap_rtc.worker.hdf5links import is_hdf5_name, refusal
from sleap_rtc.worker.index import FileIndex
from sleap_rtc.worker.mounts import MountPolicy, NotAbsolute, Unresolvable
from sleap_rtc.worker.slp import SlpError, SlpErrorReason, VideoRef, read_video_refs
from sleap_rtc.worker.suggest import Finder
from sleap_rtc_proto.bodies import Feature
from sleap_rtc_proto.v1 import paths_pb2

__all__ = [
    "MAX_SUGGESTIONS",
    "PathChecker",
    "Probe",
    "mapping_refusals",
]

#: Labels files whose video lists are kept (keyed by path, size and mtime).
_REFS_CACHED = 16
#: Upper bound on suggestions per video, whatever the request asks.
MAX_SUGGESTIONS = 50
_UNRESOLVED = (
    paths_pb2.PATH_STATUS_MISSING,
    paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS,
    paths_pb2.PATH_STATUS_REFUSED,
)
_KINDS = {"exact": paths_pb2.MAPPING_KIND_EXACT, "prefix": paths_pb2.MAPPING_KIND_PREFIX}
_PASSING = (paths_pb2.PATH_STATUS_FOUND, paths_pb2.PATH_STATUS_EMBEDDED)
_SLP_STATUS = {
    SlpErrorReason.NOT_FOUND: paths_pb2.PATH_STATUS_MISSING,
    SlpErrorReason.NOT_A_FILE: paths_pb2.PATH_STATUS_UNREADABLE,
    SlpErrorReason.PERMISSION: paths_pb2.PATH_STATUS_UNREADABLE,
}


@dataclass(frozen=True, slots=True)
class Probe:
    """Outcome of checking one worker path."""

    status: paths_pb2.PathStatus.ValueType
    path: str  # resolved path when inside the mounts, else the path as formed
    detail: str = ""
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) when FOUND


class PathChecker:
    """Answers PathCheckRequests against the worker's mounts.

    Args:
        policy: The allowed mounts; every path goes through it.
        index: File-name index of the mounts for same-name suggestions (None:
            no search under the mounts, only prefix rules and next-to-labels).
        token_secret: HMAC key for check tokens (keep it per worker, secret).
        max_suggestions: Default suggestions per missing video.
        disclose_mounts: Whether results list the mount roots.
        clock: Wall clock (seconds) for the token's issue time.
    """

    def __init__(
        self,
        policy: MountPolicy,
        index: FileIndex | None = None,
        *,
        token_secret: bytes,
        max_suggestions: int = 5,
        disclose_mounts: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token_secret:
            raise ValueError("token_secret must not be empty")
        if index is not None and index.policy is not policy:
            raise ValueError("the index must walk the checker's own policy")
        self.policy = policy
        self.index = index
        self._secret = token_secret
        self.max_suggestions = max_suggestions
        self.disclose_mounts = disclose_mounts
        self._root_strings = tuple(str(r) for r in policy.roots)
        self._roots_joined = ", ".join(self._root_strings)
        self._clock = clock
        self._refs: dict[tuple[str, tuple[int, int] | None], list[VideoRef]] = {}
        self._refs_lock = threading.Lock()

    def check(
        self,
        request: paths_pb2.PathCheckRequest,
        *,
        sizes: Mapping[str, int] | None = None,
        features: Collection[str] | None = None,
    ) -> paths_pb2.PathCheckResult:
        """Check the labels file and its videos; see the module docstring.

        Args:
            request: The client's request.
            sizes: Optional ``original path -> size`` the client knows, turning
                same-name matches into same-name-and-size ones; merged with
                the request's ``client_files`` (protocol 1.2).
            features: The features in effect on the connection (None: all).
                Without ``labels_suggestions`` a missing labels file gets none.
        """
        cache: dict[str, str] = {}
        known = {f.path: f.size for f in request.client_files if f.size}
        known.update(sizes or {})
        mapper = Mapper(request.path_mappings, request.prefix_mappings)
        result = paths_pb2.PathCheckResult()
        if self.disclose_mounts:
            result.mounts.extend(str(r) for r in self.policy.roots)
        refused = {
            (p.kind, p.original): p
            for p in mapping_refusals(self.policy, request.path_mappings, request.prefix_mappings)
        }
        for problem in refused.values():
            result.refused_mappings.add(
                kind=_KINDS[problem.kind],
                original=problem.original,
                worker=problem.worker,
                reason=str(problem),
            )
        entry = result.labels
        entry.original_path = request.labels_path
        if not request.labels_path:
            entry.status, entry.detail = paths_pb2.PATH_STATUS_MISSING, "labels path is empty"
            return result
        labels_cp = ClientPath.parse(request.labels_path)
        labels = self._probe_client(labels_cp, mapper, None, cache, refused)
        entry.worker_path, entry.status, entry.detail = labels.path, labels.status, labels.detail
        if labels.status != paths_pb2.PATH_STATUS_FOUND:
            wanted = features is None or Feature.LABELS_SUGGESTIONS in features
            if labels.status in _UNRESOLVED and wanted:
                limit = min(request.max_suggestions or self.max_suggestions, MAX_SUGGESTIONS)
                finder = Finder(self.policy, self.index, "", cache, known)
                for path, (score, reason, why) in finder.labels(labels_cp, limit):
                    entry.suggestions.add(
                        worker_path=path, reason=reason, score=round(score, 3), explanation=why
                    )
            return result
        try:
            refs = self._video_refs(labels.path, labels.stamp)
        except SlpError as exc:
            entry.status = _SLP_STATUS.get(exc.reason, paths_pb2.PATH_STATUS_INVALID)
            entry.detail = str(exc)
            return result
        hdf5_refused = refusal(labels.path, self.policy)  # links, VDS, external storage
        if hdf5_refused is not None:
            entry.status, entry.detail = paths_pb2.PATH_STATUS_INVALID, hdf5_refused
            return result
        labels_dir = os.path.dirname(labels.path)
        stamps: dict[str, tuple[int, int]] = {labels.path: labels.stamp or (0, 0)}
        beside: dict[str, Probe] = {}  # next-to-labels probes by base name
        unresolved: list[tuple[int, ClientPath]] = []
        found: list[tuple[ClientPath, str]] = []
        parsed: list[ClientPath] = []
        for ref in refs:
            check = result.videos.add(
                index=ref.index, original_path=ref.original_path, kind=ref.kind
            )
            cp = ClientPath.parse(ref.original_path)
            parsed.append(cp)
            self._check_video(check, ref, cp, mapper, labels.path, cache, stamps, beside, refused)
            if check.status in _UNRESOLVED:
                unresolved.append((ref.index, cp))
            elif check.status == paths_pb2.PATH_STATUS_FOUND:
                found.append((cp, check.worker_path))
        used = {mapper.which(cp) for cp in parsed} if request.path_mappings else set()
        for original, worker in sorted(request.path_mappings.items()):
            key = ("exact", original)
            if key in used or key in refused or original == request.labels_path:
                continue
            probe = self._probe(worker, cache)  # unused: the submit still needs a file
            if probe.status != paths_pb2.PATH_STATUS_FOUND:
                refused[key] = MappingProblem("exact", original, worker, f"refused: {probe.detail}")
                result.refused_mappings.add(
                    kind=paths_pb2.MAPPING_KIND_EXACT,
                    original=original,
                    worker=worker,
                    reason=str(refused[key]),
                )
        if unresolved:
            limit = min(request.max_suggestions or self.max_suggestions, MAX_SUGGESTIONS)
            finder = Finder(self.policy, self.index, labels_dir, cache, known)
            proposals, per_video = finder.run(unresolved, found, limit)
            result.prefix_proposals.extend(proposals)
            for i, _cp in unresolved:
                add = result.videos[i].suggestions.add
                for path, (score, reason, why) in per_video.get(i, ()):
                    add(worker_path=path, reason=reason, score=round(score, 3), explanation=why)
        elif not refused and all(v.status in _PASSING for v in result.videos):
            files = [(p, s, m) for p, (s, m) in stamps.items()]
            result.check_token = issue_check_token(
                self._secret,
                labels.path,
                files,
                now=self._clock(),
                path_mappings=request.path_mappings,
                prefix_mappings=request.prefix_mappings,
                labels_key=request.labels_path,
            )
        return result

    def _video_refs(self, path: str, stamp: tuple[int, int] | None) -> list[VideoRef]:
        """`read_video_refs`, reused while the file's size and mtime are unchanged."""
        key = (path, stamp)
        refs = self._refs.get(key)
        if refs is None or stamp is None:
            refs = read_video_refs(path)
            with self._refs_lock:  # checks may run in worker threads
                self._refs[key] = refs
                while len(self._refs) > _REFS_CACHED:
                    self._refs.pop(next(iter(self._refs)))
        return refs

    def verify_check_token(
        self,
        token: str,
        *,
        labels_path: str,
        path_mappings: Mapping[str, str] | None = None,
        prefix_mappings: Mapping[str, str] | None = None,
        max_age_s: float | None = None,
    ) -> str | None:
        """None if ``token`` is valid, else a human reason.

        Valid: issued by this worker's secret, for ``labels_path`` (the worker
        path a JobSubmit names; compared after resolving), with every checked
        file unchanged (same size and mtime, still inside the mounts). When
        ``path_mappings`` or ``prefix_mappings`` is given (the submit's), they
        must equal the mappings of the checked request less the exact mapping
        of its labels path (see :mod:`.checktoken`); ``max_age_s`` bounds the
        token's age.
        """
        return verify_check_token(
            self._secret,
            self.policy,
            token,
            labels_path=labels_path,
            now=self._clock(),
            max_age_s=max_age_s,
            path_mappings=path_mappings,
            prefix_mappings=prefix_mappings,
        )

    def _check_video(
        self,
        out: paths_pb2.VideoCheck,
        ref: VideoRef,
        cp: ClientPath,
        mapper: Mapper,
        labels_path: str,
        cache: dict[str, str],
        stamps: dict[str, tuple[int, int]],
        beside: dict[str, Probe],
        refused: Mapping[tuple[str, str], MappingProblem],
    ) -> None:
        """Fill ``out`` (status, worker path, detail) for one video."""
        labels_dir = os.path.dirname(labels_path)
        if ref.embedded:
            out.status, out.worker_path = paths_pb2.PATH_STATUS_EMBEDDED, labels_path
            return
        if ref.image_filenames:
            probes = [
                self._probe_client(ClientPath.parse(name), mapper, labels_dir, cache, refused)
                for name in ref.image_filenames
            ]
            bad = [p for p in probes if p.status != paths_pb2.PATH_STATUS_FOUND]
            probe = probes[0]
            if bad:
                worst = max(bad, key=lambda p: p.status == paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS)
                probe = Probe(
                    worst.status,
                    probes[0].path,
                    f"{len(bad)} of {len(probes)} images not usable; first: {worst.detail}",
                )
        else:
            probe = self._probe_client(cp, mapper, labels_dir, cache, refused)
            if probe.status in _UNRESOLVED[:2] and cp.name and not mapper.maps(cp):
                # sleap-io falls back to the labels file's folder by itself when
                # the stored path is not there. The worker path then differs
                # from the original: the runner must pass it as a mapping.
                fallback = beside.get(cp.name)
                if fallback is None:
                    fallback = self._probe(os.path.join(labels_dir, cp.name), cache)
                    beside[cp.name] = fallback
                if fallback.status == paths_pb2.PATH_STATUS_FOUND:
                    probe = fallback
            probes = [probe]
        if probe.status == paths_pb2.PATH_STATUS_FOUND and is_hdf5_name(probe.path):
            hdf5_refused = refusal(probe.path, self.policy)
            if hdf5_refused is not None:
                probe = Probe(paths_pb2.PATH_STATUS_INVALID, probe.path, hdf5_refused)
        out.status, out.worker_path = probe.status, probe.path
        if probe.status == paths_pb2.PATH_STATUS_FOUND:
            for p in probes:
                stamps[p.path] = p.stamp or (0, 0)
        else:
            out.detail = probe.detail

    def _probe_client(
        self,
        cp: ClientPath,
        mapper: Mapper,
        base_dir: str | None,
        cache: dict[str, str],
        refused: Mapping[tuple[str, str], MappingProblem],
    ) -> Probe:
        problem = text_problem(cp.text)
        if problem is not None:
            return Probe(paths_pb2.PATH_STATUS_REFUSED, "", f"{shown(cp.text)} {problem}")
        applied = mapper.which(cp)
        if applied is not None and applied in refused:
            return Probe(paths_pb2.PATH_STATUS_REFUSED, "", str(refused[applied]))
        worker = mapper.map(cp)
        if worker is None and base_dir is not None and cp.relative:
            worker = os.path.join(base_dir, *cp.parts)
        if worker is None:
            if cp.relative:
                return Probe(
                    paths_pb2.PATH_STATUS_REFUSED,
                    "",
                    f"{shown(cp.text)} is not an absolute path; give the full path",
                )
            return Probe(
                paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS,
                "",
                f"{shown(cp.text)} is a Windows path, not on the worker's shared storage "
                f"({self._roots_text()}); map its folder to the worker's",
            )
        return self._probe(worker, cache)

    def _roots_text(self) -> str:
        return self._roots_joined

    def _probe(self, worker: str, cache: dict[str, str]) -> Probe:
        """Probe one worker path; nothing outside the mounts is ever looked at."""
        problem = text_problem(worker)
        if problem is not None:
            return Probe(paths_pb2.PATH_STATUS_REFUSED, "", f"{shown(worker)} {problem}")
        if ".." in worker.split("/"):
            return Probe(
                paths_pb2.PATH_STATUS_REFUSED, "", f"{shown(worker)} climbs with '..'; refused"
            )
        if worker.startswith("/") and not inside_roots(worker, self._root_strings):
            return Probe(
                paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS,
                worker,
                f"{shown(worker)} is not under the worker's shared storage ({self._roots_text()})",
            )
        try:
            real, inside = self.policy.locate(worker, cache=cache)
        except NotAbsolute:
            return Probe(
                paths_pb2.PATH_STATUS_REFUSED,
                "",
                f"{shown(worker)} is not an absolute worker path; refused",
            )
        except Unresolvable as exc:  # a symlink loop, a path too long
            return Probe(paths_pb2.PATH_STATUS_INVALID, "", str(exc))
        if not inside:  # under a mount, but a symlink leads out: not opened
            return Probe(
                paths_pb2.PATH_STATUS_REFUSED,
                worker,
                f"{shown(worker)} leads out of the worker's shared storage through a symbolic "
                "link; refused",
            )
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return Probe(paths_pb2.PATH_STATUS_MISSING, real, f"no file at {real}")
        except OSError as exc:
            return Probe(
                paths_pb2.PATH_STATUS_UNREADABLE, real, f"{real} cannot be read: {exc.strerror}"
            )
        if stat.S_ISDIR(st.st_mode):
            return Probe(
                paths_pb2.PATH_STATUS_UNREADABLE, real, f"{real} is a directory, not a file"
            )
        if not stat.S_ISREG(st.st_mode):
            return Probe(paths_pb2.PATH_STATUS_UNREADABLE, real, f"{real} is not a regular file")
        if not os.access(real, os.R_OK):
            return Probe(
                paths_pb2.PATH_STATUS_UNREADABLE, real, f"{real} is not readable by the worker"
            )
        return Probe(paths_pb2.PATH_STATUS_FOUND, real, "", (st.st_size, st.st_mtime_ns))


def mapping_refusals(
    policy: MountPolicy,
    exact: Mapping[str, str],
    prefix: Mapping[str, str],
) -> list[MappingProblem]:
    """The mappings this worker refuses, each with its reason: the path check's and
    the submit's one rule (a check that issues a token has none of these).

    The model's refusals (:func:`~sleap_rtc.paths.model.mapping_problems`), then,
    per worker side: a prefix rule's folder must lie under a mount and resolve
    inside it; an exact mapping's target (other than the labels file's) must be
    a file, not a folder (a missing one is the video's MISSING). Nothing outside
    the mounts is probed.
    """
    out = mapping_problems(exact, prefix)
    bad = {(p.kind, p.original) for p in out}
    roots = [str(r) for r in policy.roots]
    where = ", ".join(roots)
    for kind, table in (("exact", exact), ("prefix", prefix)):
        for original, worker in sorted(table.items()):
            if (kind, original) in bad:
                continue
            reason = None
            if not inside_roots(worker, roots):
                reason = f"{shown(worker)} lies outside the worker's shared storage ({where})"
            else:
                try:
                    real, inside = policy.locate(worker)
                except (NotAbsolute, Unresolvable, OSError) as exc:
                    real, inside, reason = "", False, f"{shown(worker)} cannot be examined: {exc}"
                if reason is None and not inside:
                    reason = (
                        f"{shown(worker)} leads out of the worker's shared storage through a "
                        "symbolic link"
                    )
                elif reason is None and kind == "exact" and os.path.isdir(real):
                    reason = f"maps a file onto the folder {shown(worker)}"
            if reason is not None:
                out.append(MappingProblem(kind, original, worker, f"refused: {reason}"))
    return out
