"""HDF5 references to other files: external links, virtual datasets, external storage."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sleap_rtc.worker.hdf5links import file_references, is_hdf5_name, refusal
from sleap_rtc.worker.mounts import MountPolicy


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "out").mkdir()
    for folder in ("mnt", "out"):
        with h5py.File(tmp_path / folder / "src.h5", "w") as f:
            f["d"] = np.arange(4)
    return tmp_path


def test_a_plain_file_has_no_references(tree: Path) -> None:
    path = tree / "mnt" / "plain.h5"
    with h5py.File(path, "w") as f:
        f["a/b"] = np.zeros(3)
        f["soft"] = h5py.SoftLink("/a/b")
    assert file_references(path) == []
    assert refusal(str(path), MountPolicy([tree / "mnt"])) is None


def test_each_kind_found_and_judged_by_the_mounts(tree: Path) -> None:
    path = tree / "mnt" / "refs.h5"
    with h5py.File(path, "w") as f:
        f["group/inside"] = h5py.ExternalLink(str(tree / "mnt" / "src.h5"), "/d")
        layout = h5py.VirtualLayout(shape=(4,), dtype="i8")
        layout[:] = h5py.VirtualSource(str(tree / "out" / "src.h5"), "d", (4,))
        f.create_virtual_dataset("virtual", layout)
    refs = {(r.kind, r.name) for r in file_references(path)}
    assert refs == {("external link", "group/inside"), ("virtual dataset", "virtual")}
    reason = refusal(str(path), MountPolicy([tree / "mnt"]))
    assert reason is not None and "virtual dataset" in reason and "outside" in reason
    assert refusal(str(path), MountPolicy([tree])) is None  # every target inside


def test_relative_targets_are_refused(tree: Path) -> None:
    path = tree / "mnt" / "rel.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", shape=(4,), dtype="u1", external=[("raw.bin", 0, 4)])
    reason = refusal(str(path), MountPolicy([tree]))
    assert reason is not None and "external storage" in reason and "relative" in reason


def test_inspecting_opens_no_other_file(tree: Path) -> None:
    """A soft link through an external link is not followed: the linked file may be gone."""
    path = tree / "mnt" / "through.h5"
    with h5py.File(path, "w") as f:
        f["ext"] = h5py.ExternalLink(str(tree / "out" / "missing.h5"), "/")
        f["soft"] = h5py.SoftLink("/ext/d")
    assert [r.kind for r in file_references(path)] == ["external link"]


def test_not_hdf5_is_a_reason_not_an_exception(tree: Path) -> None:
    path = tree / "mnt" / "fake.h5"
    path.write_text("not hdf5")
    reason = refusal(str(path), MountPolicy([tree / "mnt"]))
    assert reason is not None and "cannot be inspected" in reason


def test_hdf5_names() -> None:
    assert is_hdf5_name("/a/b.SLP") and is_hdf5_name("/a/v.h5") and is_hdf5_name("/x.pkg.slp")
    assert not is_hdf5_name("/a/v.mp4")
