"""MountPolicy: containment of fully resolved paths, symlink and traversal escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleap_rtc.worker.mounts import (
    MountPolicy,
    NotAbsolute,
    OutsideMounts,
    PathRejected,
    Unresolvable,
)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """tmp/lab (the mount) with escapes; tmp/lab2 and tmp/outside beside it."""
    lab = tmp_path / "lab"
    (lab / "data" / "day1").mkdir(parents=True)
    (lab / "data" / "day1" / "a.mp4").write_bytes(b"a")
    (tmp_path / "lab2").mkdir()
    (tmp_path / "lab2" / "x.mp4").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("s")
    (lab / "out_file").symlink_to(tmp_path / "outside" / "secret.txt")
    (lab / "out_dir").symlink_to(tmp_path / "outside")
    (lab / "in_dir").symlink_to(lab / "data")
    (lab / "up").symlink_to("..")
    (lab / "loop").symlink_to(lab / "loop")
    return tmp_path


def test_roots_must_exist_and_be_directories(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="nope"):
        MountPolicy([tmp_path / "nope"])
    with pytest.raises(ValueError, match="f"):
        MountPolicy([tmp_path / "f"])
    with pytest.raises(ValueError, match="absolute"):
        MountPolicy(["relative/dir"])
    with pytest.raises(ValueError):
        MountPolicy([])


def test_roots_are_resolved_and_nested_roots_dropped(tree: Path) -> None:
    lab = tree / "lab"
    policy = MountPolicy([str(lab / "in_dir"), lab, lab / "data"])
    assert policy.roots == (lab.resolve(),)
    assert "lab" in repr(policy)


def test_resolve_inside(tree: Path) -> None:
    lab = tree / "lab"
    policy = MountPolicy([lab])
    assert policy.resolve(lab / "data" / "day1" / "a.mp4") == lab / "data" / "day1" / "a.mp4"
    assert policy.resolve(f"{lab}/data/../data/day1/a.mp4") == lab / "data" / "day1" / "a.mp4"
    assert policy.resolve(f"{lab}/in_dir/day1/a.mp4") == lab / "data" / "day1" / "a.mp4"
    assert policy.resolve(str(lab)) == lab
    assert policy.resolve(f"{lab}/missing/file.mp4") == lab / "missing" / "file.mp4"


@pytest.mark.parametrize(
    "rel",
    [
        "../../etc/passwd",
        "data/../../outside/secret.txt",
        "out_file",
        "out_dir/secret.txt",
        "up/outside/secret.txt",
        "up/lab2/x.mp4",
        "../lab2/x.mp4",
    ],
)
def test_escapes_are_outside(tree: Path, rel: str) -> None:
    policy = MountPolicy([tree / "lab"])
    path = f"{tree / 'lab'}/{rel}"
    with pytest.raises(OutsideMounts) as info:
        policy.resolve(path)
    assert isinstance(info.value, ValueError)
    assert path in str(info.value)
    assert not info.value.resolved.is_relative_to(tree / "lab")
    assert not policy.contains(path)


def test_sibling_with_common_prefix_is_outside(tree: Path) -> None:
    policy = MountPolicy([tree / "lab"])
    assert not policy.contains(tree / "lab2" / "x.mp4")
    assert not policy.contains(tree / "lab2")
    assert policy.contains(tree / "lab")


@pytest.mark.parametrize(
    "path", ["", "relative/a.mp4", "~/a.mp4", "$HOME/a.mp4", "C:\\data\\a.mp4", "/a\x00b"]
)
def test_not_absolute(path: str) -> None:
    policy = MountPolicy(["/"])
    with pytest.raises(NotAbsolute):
        policy.resolve(path)
    assert not policy.contains(path)


def test_symlink_loop_is_refused_or_inside(tree: Path) -> None:
    policy = MountPolicy([tree / "lab"])
    try:
        resolved = policy.resolve(tree / "lab" / "loop" / "x")
    except PathRejected:
        return
    assert resolved.is_relative_to(tree / "lab")


_PARTS = st.sampled_from(
    ["data", "day1", "a.mp4", "..", ".", "", "out_file", "out_dir", "in_dir", "up", "loop",
     "lab", "lab2", "outside", "secret.txt", "nope"]
)  # fmt: skip


@settings(
    max_examples=20 * settings.default.max_examples,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(parts=st.lists(_PARTS, max_size=8), from_root=st.booleans())
def test_never_returns_a_path_outside(tree: Path, parts: list[str], from_root: bool) -> None:
    """Cached and uncached resolution agree; nothing outside, no ``..``, loops refused."""
    lab = tree / "lab"
    policy = MountPolicy([lab])
    base = str(lab) if from_root else str(tree)
    path = "/".join([base, *parts])
    cache: dict[str, str] = {}
    try:
        resolved = policy.resolve(path)
    except Unresolvable:
        with pytest.raises(Unresolvable):
            policy.resolve(path, cache=cache)
        with pytest.raises(Unresolvable):
            policy.resolve(path, cache=cache)  # warm cache, same answer
        return
    except OutsideMounts as exc:
        assert ".." not in exc.resolved.parts
        assert not exc.resolved.is_relative_to(lab)
        with pytest.raises(OutsideMounts):
            policy.resolve(path, cache=cache)
        with pytest.raises(OutsideMounts):
            policy.resolve(path, cache=cache)
        return
    assert ".." not in resolved.parts and "." not in resolved.parts
    assert resolved == Path(os.path.realpath(path))  # no loop on the way: realpath agrees
    assert resolved.is_relative_to(lab)
    assert policy.resolve(path, cache=cache) == resolved
    assert policy.resolve(path, cache=cache) == resolved  # warm cache, same answer


@pytest.mark.parametrize(
    "rel, cached_dir",
    [("loop/../in_dir", "loop"), ("loop/../out_file", "loop"), ("loop/x", "loop")],
)
def test_symlink_loop_is_refused_cached_and_uncached(tree: Path, rel: str, cached_dir: str) -> None:
    """The fresh-clone hypothesis failure: realpath keeps ``..`` after a loop."""
    lab = tree / "lab"
    policy = MountPolicy([lab])
    with pytest.raises(Unresolvable, match="loop"):
        policy.resolve(f"{lab}/{rel}")
    cache: dict[str, str] = {}
    with pytest.raises(Unresolvable):
        policy.resolve(f"{lab}/{cached_dir}/probe", cache=cache)
    with pytest.raises(Unresolvable):
        policy.resolve(f"{lab}/{rel}", cache=cache)


@pytest.mark.parametrize("length", [5000, 10_000])
def test_too_long_paths_are_refused_typed(tree: Path, length: int) -> None:
    lab = tree / "lab"
    policy = MountPolicy([lab])
    path = f"{lab}/" + "a" * length
    with pytest.raises(Unresolvable, match=r"too long|over"):
        policy.resolve(path)
    deep = f"{lab}/" + "/".join(["d" * 200] * 30)
    with pytest.raises(Unresolvable):
        policy.resolve(deep, cache={})
    assert not policy.contains(path)


def test_chain_of_links_over_the_limit_is_refused(tree: Path) -> None:
    lab = tree / "lab"
    (lab / "l0").symlink_to(lab / "data")
    for i in range(1, 45):
        (lab / f"l{i}").symlink_to(lab / f"l{i - 1}")
    policy = MountPolicy([lab])
    assert policy.resolve(lab / "l30" / "day1") == lab / "data" / "day1"
    with pytest.raises(Unresolvable, match="links"):
        policy.resolve(lab / "l44" / "day1")
    with pytest.raises(Unresolvable, match="links"):
        policy.resolve(lab / "l44" / "day1", cache={})


@given(st.text(alphabet="/ab.-", max_size=20))
def test_is_inside_matches_is_relative_to(tail: str) -> None:
    policy = MountPolicy(["/tmp"])
    candidate = os.path.normpath("/" + tail)
    expected = Path(candidate).is_relative_to(Path("/tmp").resolve())
    assert policy.is_inside(candidate) == expected
