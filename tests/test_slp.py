"""Reading video references from real SLP files written by sleap-io."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import sleap_io as sio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slp_factory import make_h5_video, make_labels, rewrite_video_rows

from sleap_rtc.worker import slp
from sleap_rtc.worker.slp import SlpError, SlpErrorReason, VideoRef, read_video_refs
from sleap_rtc_proto.v1 import paths_pb2

FILE = paths_pb2.VIDEO_KIND_FILE
SEQ = paths_pb2.VIDEO_KIND_IMAGE_SEQUENCE
EMB = paths_pb2.VIDEO_KIND_EMBEDDED


def _images(folder: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        iio.imwrite(path, np.zeros((8, 8), dtype=np.uint8))
        names.append(str(path))
    return names


def test_file_videos_in_order(tmp_path: Path) -> None:
    originals = ["/Users/me/data/a.mp4", "/Users/me/data/b.avi", "C:\\Users\\me\\c.mp4"]
    refs = read_video_refs(make_labels(tmp_path / "l.slp", originals))
    assert [r.index for r in refs] == [0, 1, 2]
    assert [r.kind for r in refs] == [FILE, FILE, FILE]
    # sleap-io stores forward slashes, Windows drive kept.
    assert [r.original_path for r in refs] == [*originals[:2], "C:/Users/me/c.mp4"]
    assert not any(r.embedded or r.image_filenames for r in refs)


def test_matches_sleap_io(tmp_path: Path) -> None:
    labels = make_labels(tmp_path / "l.slp", ["/x/a.mp4", ["/x/0.png", "/x/1.png"], "/y/b.mp4"])
    loaded = sio.load_slp(str(labels), open_videos=False)
    refs = read_video_refs(labels)
    assert [r.image_filenames or r.original_path for r in refs] == [
        tuple(v.filename) if isinstance(v.filename, list) else v.filename for v in loaded.videos
    ]


def test_image_sequence_both_layouts(tmp_path: Path) -> None:
    names = _images(tmp_path / "imgs")
    video = sio.Video.from_filename(names)  # ImageVideo backend: backend.filenames
    assert type(video.backend).__name__ == "ImageVideo"
    # A list filename without an open backend: sleap-io 0.9.5 writes this layout
    # (backend.filename is the list) but cannot read it back; we can.
    labels = sio.Labels(videos=[video, sio.Video(filename=["/a/0.png", "/a/1.png"], backend=None)])
    labels.save(str(tmp_path / "seq.slp"))
    with h5py.File(tmp_path / "seq.slp") as f:
        assert json.loads(f["videos_json"][1])["backend"]["filename"] == ["/a/0.png", "/a/1.png"]
    refs = read_video_refs(tmp_path / "seq.slp")
    assert refs[0] == VideoRef(0, names[0], SEQ, False, tuple(names))
    assert refs[1] == VideoRef(1, "/a/0.png", SEQ, False, ("/a/0.png", "/a/1.png"))


def test_embedded_pkg_slp(tmp_path: Path) -> None:
    source = make_h5_video(tmp_path / "src" / "v.h5")
    images = _images(tmp_path / "imgs", 2)
    labels = make_labels(tmp_path / "l.pkg.slp", [source, images], embed=True)
    with h5py.File(labels) as f:
        rows = [json.loads(r) for r in f["videos_json"][()]]
    assert rows[0]["backend"]["filename"] == "."
    refs = read_video_refs(labels)
    assert refs[0] == VideoRef(0, source, EMB, True, ())
    assert refs[1] == VideoRef(1, images[0], EMB, True, tuple(images))


def test_embedded_source_from_group_attribute(tmp_path: Path) -> None:
    source = make_h5_video(tmp_path / "v.h5")
    labels = make_labels(tmp_path / "l.pkg.slp", [source], embed=True)
    with h5py.File(labels, "r") as f:
        row = json.loads(f["videos_json"][0])
    row.pop("source_video")  # older files: only the video0/source_video group has it
    rewrite_video_rows(labels, [json.dumps(row)])
    assert read_video_refs(labels) == [VideoRef(0, source, EMB, True, ())]
    with h5py.File(labels, "r+") as f:  # and without any source: empty original path
        del f["video0/source_video"]
    assert read_video_refs(labels) == [VideoRef(0, "", EMB, True, ())]


def test_windows_backslashes_kept(tmp_path: Path) -> None:
    labels = make_labels(tmp_path / "l.slp", ["/placeholder.mp4"])
    row = {"backend": {"filename": "C:\\Users\\me\\data\\a.mp4", "dataset": ""}}
    rewrite_video_rows(labels, [json.dumps(row)])
    assert read_video_refs(labels)[0].original_path == "C:\\Users\\me\\data\\a.mp4"


def test_no_videos(tmp_path: Path) -> None:
    sio.Labels().save(str(tmp_path / "empty.slp"))
    assert read_video_refs(tmp_path / "empty.slp") == []


def _reason(path: Path) -> SlpErrorReason:
    with pytest.raises(SlpError) as info:
        read_video_refs(path)
    assert str(path) in str(info.value)
    return info.value.reason


def test_errors(tmp_path: Path) -> None:
    assert _reason(tmp_path / "missing.slp") == SlpErrorReason.NOT_FOUND
    assert _reason(tmp_path) == SlpErrorReason.NOT_A_FILE
    (tmp_path / "text.slp").write_text("not hdf5 at all")
    assert _reason(tmp_path / "text.slp") == SlpErrorReason.NOT_HDF5
    good = make_labels(tmp_path / "good.slp", ["/a.mp4"]).read_bytes()
    (tmp_path / "cut.slp").write_bytes(good[: len(good) // 3])
    assert _reason(tmp_path / "cut.slp") in (SlpErrorReason.CORRUPT, SlpErrorReason.NOT_HDF5)
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f.create_dataset("other", data=[1])
    assert _reason(tmp_path / "bare.h5") == SlpErrorReason.MISSING_DATASET
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("videos_json")
    assert _reason(tmp_path / "group.h5") == SlpErrorReason.MISSING_DATASET


def test_bad_rows(tmp_path: Path) -> None:
    labels = make_labels(tmp_path / "l.slp", ["/a.mp4"])
    rewrite_video_rows(labels, ["{not json"])
    assert _reason(labels) == SlpErrorReason.CORRUPT
    rewrite_video_rows(labels, [json.dumps({"backend": {}})])  # sleap-io cannot read it either
    assert _reason(labels) == SlpErrorReason.CORRUPT


def test_links_to_other_files_are_refused(tmp_path: Path) -> None:
    other = make_labels(tmp_path / "outside.slp", ["/a.mp4"])
    labels = make_labels(tmp_path / "l.slp", ["/b.mp4"])
    with h5py.File(labels, "r+") as f:
        del f["videos_json"]
        f["videos_json"] = h5py.ExternalLink(str(other), "videos_json")
    assert _reason(labels) == SlpErrorReason.CORRUPT


def test_sleap_io_fallback_gives_the_same_refs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_h5_video(tmp_path / "v.h5")
    files = [
        make_labels(tmp_path / "a.slp", ["/x/a.mp4", ["/x/0.png", "/x/1.png"]]),
        make_labels(tmp_path / "b.pkg.slp", [source], embed=True),
    ]
    fast = [read_video_refs(f) for f in files]

    def unsupported(*_args: object) -> VideoRef:
        raise slp._Unsupported

    monkeypatch.setattr(slp, "_parse_row", unsupported)
    assert [read_video_refs(f) for f in files] == fast


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["filename", "filenames", "backend", "dataset", "source_video", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=3 * settings.default.max_examples // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=st.lists(_JSONISH.map(json.dumps) | st.binary(max_size=20).map(repr), max_size=3))
def test_arbitrary_rows_never_crash(tmp_path: Path, rows: list[str]) -> None:
    labels = tmp_path / "fuzz.slp"
    if not labels.exists():
        make_labels(labels, ["/a.mp4"])
    rewrite_video_rows(labels, rows)
    try:
        refs = read_video_refs(labels)
    except SlpError as exc:
        assert exc.reason in (SlpErrorReason.CORRUPT, SlpErrorReason.MISSING_DATASET)
        return
    assert [r.index for r in refs] == list(range(len(rows)))
    assert all(isinstance(r.original_path, str) for r in refs)
