"""The path check run again at intake: every video's resolved worker path, explicitly.

sleap-io opens a video at its original path whenever that path exists, and
only otherwise looks next to the labels file. So a check that reports FOUND
(next to the labels, or through a mapping) says nothing about what sleap-io
opens unless the trainer is told, for *every* video, the path the check
resolved. :class:`IntakeRecheck` runs the worker's own
:class:`~sleap_rtc.worker.pathcheck.PathChecker` again with the submit's
labels path and mappings (the same code, the same answer), refuses unless
everything still passes (HDF5 links included), and returns ``original ->
resolved`` for each video (each image of an image sequence) plus the set of
resolved files, which intake compares with the check token's: a symlink
re-pointed after the check leads to another file and is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sleap_rtc.paths.model import ClientPath, Mapper
from sleap_rtc.worker.mounts import PathRejected
from sleap_rtc.worker.pathcheck import PathChecker
from sleap_rtc_proto.v1 import paths_pb2

_PASSING = (paths_pb2.PATH_STATUS_FOUND, paths_pb2.PATH_STATUS_EMBEDDED)


@dataclass(frozen=True)
class Rechecked:
    """What the repeated check resolved.

    Attributes:
        video_map: ``(original, resolved worker path)`` for every video file and
            every image of an image sequence (embedded videos need none).
        files: every resolved file the check covered (labels included).
        manifest: ``(path, dev, inode, size, mtime_ns)`` of each of ``files``,
            for the launcher to check again just before the trainer starts.
    """

    video_map: tuple[tuple[str, str], ...]
    files: frozenset[str]
    manifest: tuple[tuple[str, int, int, int, int], ...] = ()


@dataclass(frozen=True)
class IntakeRecheck:
    """Callable for :class:`~sleap_rtc.worker.validate.SubmitValidator`'s ``recheck``."""

    checker: PathChecker

    def __call__(
        self,
        labels_path: str,
        *,
        path_mappings: Mapping[str, str],
        prefix_mappings: Mapping[str, str],
    ) -> Rechecked | str:
        """The videos resolved again, or the reason the check no longer passes."""
        request = paths_pb2.PathCheckRequest(
            labels_path=labels_path,
            path_mappings=dict(path_mappings),
            prefix_mappings=dict(prefix_mappings),
            max_suggestions=1,
        )
        result = self.checker.check(request)
        if result.labels.status != paths_pb2.PATH_STATUS_FOUND:
            return f"labels file: {result.labels.detail or 'not usable'}"
        labels = result.labels.worker_path
        pairs: dict[str, str] = {}
        files = {labels}
        mapper = Mapper(path_mappings, prefix_mappings)
        for video in result.videos:
            if video.status not in _PASSING:
                return f"video {video.index} ({video.original_path}): {video.detail or 'missing'}"
            if video.status == paths_pb2.PATH_STATUS_EMBEDDED:
                continue
            if video.kind == paths_pb2.VIDEO_KIND_IMAGE_SEQUENCE:
                images = self._images(video.original_path, labels, mapper, result)
                if isinstance(images, str):
                    return images
                for original, real in images:
                    pairs[original] = real
                    files.add(real)
                continue
            pairs[video.original_path] = video.worker_path
            files.add(video.worker_path)
        manifest = []
        for path in sorted(files):
            try:
                st = os.stat(path)
            except OSError as exc:
                return f"{path} cannot be examined: {exc.strerror or exc}"
            manifest.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return Rechecked(tuple(sorted(pairs.items())), frozenset(files), tuple(manifest))

    def _images(
        self,
        first: str,
        labels: str,
        mapper: Mapper,
        result: paths_pb2.PathCheckResult,
    ) -> list[tuple[str, str]] | str:
        """Each image of the sequence whose first image is ``first``, resolved."""
        from sleap_rtc.worker.slp import read_video_refs

        refs = [r for r in read_video_refs(labels) if r.original_path == first]
        if not refs:
            return f"image sequence {first}: not found again"
        out: list[tuple[str, str]] = []
        for name in refs[0].image_filenames:
            cp = ClientPath.parse(name)
            worker = mapper.map(cp)
            if worker is None and cp.relative:
                worker = os.path.join(os.path.dirname(labels), *cp.parts)
            if worker is None:
                return f"image {name}: no mapping"
            try:
                out.append((name, self.checker.policy.resolve_str(worker)))
            except PathRejected as exc:
                return f"image {name}: {exc}"
        return out
