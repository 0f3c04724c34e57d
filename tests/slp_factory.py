"""Real SLEAP labels files for tests, written by sleap-io (shared by test modules).

    make_labels(tmp_path / "a.slp", ["/Users/me/a.mp4", ["/x/0.png", "/x/1.png"]])
    make_labels(tmp_path / "a.pkg.slp", [make_h5_video(tmp_path / "v.h5")], embed=True)

A string is a video file, a list of strings an image sequence (written in the
layout of sleap-io's ImageVideo backend). The files need not exist unless
``embed`` is set (embedding reads the frames: HDF5 videos with a ``video``
dataset, see `make_h5_video`, or real image files).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import sleap_io as sio

VideoSpec = str | Path | Sequence[str | Path]


def make_h5_video(path: Path, frames: int = 2, size: int = 8) -> str:
    """Write a tiny grayscale HDF5 "video" (dataset ``video``) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("video", data=np.zeros((frames, size, size, 1), dtype=np.uint8))
    return str(path)


def make_labels(path: Path, videos: Sequence[VideoSpec], *, embed: bool = False) -> Path:
    """Write a labels file referencing ``videos`` (one labeled frame each)."""
    skeleton = sio.Skeleton(["head", "tail"])
    vids: list[sio.Video] = []
    for spec in videos:
        if isinstance(spec, list | tuple):
            names = [str(p) for p in spec]
            if embed:
                vids.append(sio.Video.from_filename(names))
            else:  # the layout an ImageVideo backend writes, without reading images
                meta = {"type": "ImageVideo", "filename": names[0], "filenames": names}
                vids.append(
                    sio.Video(
                        filename=names, backend=None, backend_metadata=meta, open_backend=False
                    )
                )
        elif embed:
            vids.append(sio.Video.from_filename(str(spec), dataset="video"))
        else:
            # Open real files (full backend metadata, e.g. an HDF5 video's dataset);
            # never anything else (a directory would become an empty ImageVideo).
            real = isinstance(spec, str | Path) and Path(spec).is_file()
            vids.append(sio.Video(filename=str(spec), backend=None, open_backend=real))
    frames = [
        sio.LabeledFrame(
            video=v,
            frame_idx=0,
            instances=[sio.Instance.from_numpy(np.array([[1.0, 2.0], [3.0, 4.0]]), skeleton)],
        )
        for v in vids
    ]
    labels = sio.Labels(labeled_frames=frames, videos=vids, skeletons=[skeleton])
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if embed:
            labels.save(str(path), embed=True)
        else:
            labels.save(str(path))
    return path


def rewrite_video_rows(path: Path, rows: Sequence[str]) -> None:
    """Replace the ``videos_json`` rows (e.g. to store Windows backslashes as old SLEAP did)."""
    with h5py.File(path, "r+") as f:
        del f["videos_json"]
        f.create_dataset("videos_json", data=list(rows), dtype=h5py.string_dtype())
