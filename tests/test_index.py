"""FileIndex: one walk, warm reuse, cheap staleness checks, no symlink escapes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sleap_rtc.worker.index import FileIndex
from sleap_rtc.worker.mounts import MountPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def mount(tmp_path: Path) -> Path:
    lab = tmp_path / "lab"
    for folder in ("a/day1", "b/day1", "c"):
        (lab / folder).mkdir(parents=True)
    (lab / "a" / "day1" / "cam.mp4").write_bytes(b"12345")
    (lab / "b" / "day1" / "cam.mp4").write_bytes(b"12")
    (lab / "c" / "other.mp4").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cam.mp4").write_bytes(b"x")
    (outside / "secret.mp4").write_bytes(b"x")
    (lab / "escape_dir").symlink_to(outside)
    (lab / "escape_file.mp4").symlink_to(outside / "secret.mp4")
    (lab / "inner_dir").symlink_to(lab / "a")
    (lab / "inner_file.mp4").symlink_to(lab / "c" / "other.mp4")
    (lab / "dangling.mp4").symlink_to(lab / "nope")
    return lab


def test_lookup_by_name(mount: Path) -> None:
    index = FileIndex(MountPolicy([mount]))
    assert not index.built
    assert sorted(index.lookup("cam.mp4")) == [
        f"{mount}/a/day1/cam.mp4",
        f"{mount}/b/day1/cam.mp4",
    ]
    assert index.built
    assert sorted(index.entries("cam.mp4")) == [
        (f"{mount}/a/day1/cam.mp4", 5),
        (f"{mount}/b/day1/cam.mp4", 2),
    ]
    assert index.lookup("nothing.mp4") == ()
    assert index.has_path(f"{mount}/c/other.mp4")
    assert not index.has_path(f"{mount}/c/cam.mp4")
    assert index.sorted_lookup("cam.mp4") == sorted(index.lookup("cam.mp4"))
    assert set(index.by_parent("cam.mp4")) == {"day1"}


def test_symlinks_never_lead_out(mount: Path) -> None:
    index = FileIndex(MountPolicy([mount]))
    assert index.lookup("secret.mp4") == ()
    assert index.lookup("escape_file.mp4") == ()
    assert index.lookup("dangling.mp4") == ()
    assert all(p.startswith(f"{mount}/") for p in index.lookup("cam.mp4"))
    assert len(index.lookup("cam.mp4")) == 2  # inner_dir is not walked twice
    assert list(index.lookup("inner_file.mp4")) == [f"{mount}/inner_file.mp4"]
    assert index.file_count == 4


def test_warm_until_ttl_then_rebuilds_only_on_change(mount: Path) -> None:
    clock = Clock()
    index = FileIndex(MountPolicy([mount]), ttl_s=10, clock=clock)
    index.ensure_fresh()
    first_build = index._snap
    (mount / "c" / "new.mp4").write_bytes(b"")
    assert index.lookup("new.mp4") == ()  # warm: not rescanned within the TTL
    assert index.is_stale()
    clock.now += 11
    assert list(index.lookup("new.mp4")) == [f"{mount}/c/new.mp4"]
    second_build = index._snap
    assert second_build is not first_build
    clock.now += 11
    index.ensure_fresh()  # nothing changed: the staleness check keeps the build
    assert index._snap is second_build
    (mount / "c" / "new.mp4").unlink()
    (mount / "a" / "day1" / "deep").mkdir()
    (mount / "a" / "day1" / "deep" / "x.mp4").write_bytes(b"")
    index.refresh()  # explicit refresh is immediate
    assert index.lookup("new.mp4") == ()
    assert list(index.lookup("x.mp4")) == [f"{mount}/a/day1/deep/x.mp4"]


def test_removed_directory_is_stale(mount: Path) -> None:
    index = FileIndex(MountPolicy([mount]))
    index.refresh()
    (mount / "c" / "other.mp4").unlink()
    (mount / "inner_file.mp4").unlink()
    os.rmdir(mount / "c")
    assert index.is_stale()
    assert index.size_of(f"{mount}/c/other.mp4") is None


def test_max_files_truncates(mount: Path) -> None:
    index = FileIndex(MountPolicy([mount]), max_files=2)
    index.refresh()
    assert index.truncated
    assert index.file_count == 2


def test_many_files(tmp_path: Path) -> None:
    for d in range(50):
        folder = tmp_path / f"d{d}"
        folder.mkdir()
        for f in range(100):
            (folder / f"f{f}.dat").write_bytes(b"")
    index = FileIndex(MountPolicy([tmp_path]))
    index.refresh()
    assert index.file_count == 5000
    assert len(index.lookup("f7.dat")) == 50
    assert index.last_build_s > 0
    assert len(index.memo) == 0


def test_refresh_stopped_leaves_the_index_as_it_was(mount: Path) -> None:
    index = FileIndex(MountPolicy([mount]))
    stop = threading.Event()
    stop.set()
    assert index.refresh(stop=stop) is False
    assert not index.built
    assert index.refresh() is True and index.built
    count = index.file_count
    (mount / "c" / "new.mp4").write_bytes(b"")
    assert index.refresh(stop=stop) is False
    assert index.file_count == count and index.lookup("new.mp4") == ()


def test_lookups_during_a_build_wait_for_it_instead_of_walking_again(
    mount: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = FileIndex(MountPolicy([mount]))
    started, release = threading.Event(), threading.Event()
    walks: list[int] = []
    build = FileIndex._build

    def slow(self: FileIndex, stop: threading.Event | None = None) -> object:
        walks.append(1)
        started.set()
        assert release.wait(10)
        return build(self, stop)

    monkeypatch.setattr(FileIndex, "_build", slow)
    warm = threading.Thread(target=index.refresh)
    warm.start()
    assert started.wait(10)
    found: list[int] = []
    lookups = [
        threading.Thread(target=lambda: found.append(len(index.lookup("cam.mp4"))))
        for _ in range(3)
    ]
    for t in lookups:
        t.start()
    release.set()
    for t in [warm, *lookups]:
        t.join(10)
    assert found == [2, 2, 2] and len(walks) == 1


def test_compact_storage_answers_like_paths(tmp_path: Path) -> None:
    """Folders are stored once; lookups and has_path answer as if full paths were kept."""
    for folder in ("a", "b/c", "b/d"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "same.mp4").write_bytes(b"1")
    (tmp_path / "a" / "only.mp4").write_bytes(b"22")
    index = FileIndex(MountPolicy([tmp_path]))
    assert sorted(index.lookup("same.mp4")) == [
        f"{tmp_path}/a/same.mp4",
        f"{tmp_path}/b/c/same.mp4",
        f"{tmp_path}/b/d/same.mp4",
    ]
    assert list(index.lookup("only.mp4")) == [f"{tmp_path}/a/only.mp4"]
    assert index.has_path(f"{tmp_path}/b/c/same.mp4")
    assert not index.has_path(f"{tmp_path}/b/same.mp4")
    assert not index.has_path(f"{tmp_path}/a/none.mp4")
    assert index.size_of(f"{tmp_path}/a/only.mp4") == 2
    assert index.file_count == 4
