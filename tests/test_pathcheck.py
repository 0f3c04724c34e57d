"""PATH_CHECK against real SLP files: statuses, mappings, suggestions, tokens."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slp_factory import make_h5_video, make_labels, rewrite_video_rows

from sleap_rtc.paths.infer import infer_rules
from sleap_rtc.paths.model import ClientPath, Mapper
from sleap_rtc.worker.checktoken import issue_check_token
from sleap_rtc.worker.index import FileIndex
from sleap_rtc.worker.mounts import MountPolicy
from sleap_rtc.worker.pathcheck import PathChecker
from sleap_rtc_proto.v1 import paths_pb2 as pb

FOUND, MISSING, OUTSIDE = (
    pb.PATH_STATUS_FOUND,
    pb.PATH_STATUS_MISSING,
    pb.PATH_STATUS_OUTSIDE_MOUNTS,
)
UNREADABLE, EMBEDDED, INVALID = (
    pb.PATH_STATUS_UNREADABLE,
    pb.PATH_STATUS_EMBEDDED,
    pb.PATH_STATUS_INVALID,
)
REFUSED = pb.PATH_STATUS_REFUSED
SECRET = b"test-secret"


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def lab(tmp_path: Path) -> Path:
    root = tmp_path / "lab"
    root.mkdir()
    return root


def checker(lab: Path, *, index: bool = True, **kw: object) -> PathChecker:
    policy = MountPolicy([lab])
    return PathChecker(
        policy,
        FileIndex(policy) if index else None,
        token_secret=SECRET,
        **kw,  # type: ignore[arg-type]
    )


def check(pc: PathChecker, labels: str | Path, **kw: object) -> pb.PathCheckResult:
    return pc.check(pb.PathCheckRequest(labels_path=str(labels), **kw))  # type: ignore[arg-type]


# -- labels file ----------------------------------------------------------------


def test_all_found_issues_a_valid_token(lab: Path) -> None:
    videos = [str(touch(lab / "data" / f"{n}.mp4", b"v")) for n in "ab"]
    labels = make_labels(lab / "l.slp", videos)
    pc = checker(lab)
    result = check(pc, labels)
    assert result.labels.status == FOUND and result.labels.detail == ""
    assert [(v.status, v.worker_path, v.kind) for v in result.videos] == [
        (FOUND, p, pb.VIDEO_KIND_FILE) for p in videos
    ]
    assert not any(v.suggestions for v in result.videos)
    assert list(result.mounts) == [str(lab)]
    assert result.check_token
    assert pc.verify_check_token(result.check_token, labels_path=str(labels)) is None


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda lab: lab / "nope.slp", MISSING, "not"),
        (lambda lab: touch(lab / "d" / "x").parent, UNREADABLE, "directory"),
        (lambda lab: touch(lab / "t.slp", b"hello, not hdf5"), INVALID, "HDF5"),
        (lambda lab: touch(lab / "c.slp", b"\x89HDF\r\n\x1a\n" + b"\0" * 64), INVALID, ""),
        (lambda lab: Path(f"{lab}/../../etc/passwd"), REFUSED, "climbs"),
        (lambda lab: Path("relative/l.slp"), REFUSED, "absolute"),
        (lambda lab: Path("../../etc/passwd"), REFUSED, "not an absolute path"),
        (lambda lab: Path("/elsewhere/l.slp"), OUTSIDE, "not under the worker's shared storage"),
        (lambda lab: Path(f"{lab}/a\u2215b.slp"), REFUSED, "division slash"),
    ],
)
def test_bad_labels(lab: Path, make: Callable[[Path], Path], status: int, words: str) -> None:
    result = check(checker(lab), make(lab))
    assert result.labels.status == status
    assert words in result.labels.detail and result.labels.detail
    assert not result.videos and not result.check_token


def test_corrupt_slp(lab: Path) -> None:
    good = make_labels(lab / "good.slp", ["/a.mp4"]).read_bytes()
    bad = touch(lab / "bad.slp", good[: len(good) // 3])
    assert check(checker(lab), bad).labels.status == INVALID


def test_labels_symlink_escaping_the_mount(lab: Path, tmp_path: Path) -> None:
    outside = make_labels(tmp_path / "elsewhere" / "l.slp", [])
    (lab / "l.slp").symlink_to(outside)
    result = check(checker(lab), lab / "l.slp")
    assert result.labels.status == REFUSED and "symbolic link" in result.labels.detail
    assert str(outside) not in result.labels.detail  # nothing said about outside


def test_labels_via_mappings_and_windows_path(lab: Path) -> None:
    labels = make_labels(lab / "proj" / "l.slp", [])
    pc = checker(lab)
    windows = "C:\\Users\\Me\\proj\\l.slp"
    unmapped = check(pc, windows)
    assert unmapped.labels.status == OUTSIDE and unmapped.labels.worker_path == ""
    assert "Windows" in unmapped.labels.detail and "\\\\" not in unmapped.labels.detail
    assert windows in unmapped.labels.detail  # as typed, no repr
    [best, *_] = unmapped.labels.suggestions  # 1.2: the labels file gets suggestions
    assert best.worker_path == str(labels)
    without = pc.check(pb.PathCheckRequest(labels_path=windows), features=())
    assert not without.labels.suggestions  # only when the feature is in effect
    for mappings in (
        {"path_mappings": {windows: str(labels)}},
        {"path_mappings": {"c:/users/me/PROJ/l.slp": str(labels)}},
        {
            "prefix_mappings": {
                "C:\\Users\\me": str(lab / "x"),
                "C:\\Users\\me\\proj": str(lab / "proj"),
            }
        },
        {"prefix_mappings": {"c:/USERS/me/proj/": str(lab / "proj")}},
    ):
        result = check(pc, windows, **mappings)
        assert result.labels.status == FOUND, mappings
        assert result.labels.original_path == windows
        assert result.check_token


# -- videos ---------------------------------------------------------------------


def test_embedded_and_image_sequences(lab: Path) -> None:
    pkg = make_labels(lab / "a.pkg.slp", [make_h5_video(lab / "src" / "v.h5")], embed=True)
    result = check(checker(lab), pkg)
    assert [(v.status, v.kind) for v in result.videos] == [(EMBEDDED, pb.VIDEO_KIND_EMBEDDED)]
    assert result.videos[0].original_path == str(lab / "src" / "v.h5")
    assert result.check_token
    images = [str(touch(lab / "imgs" / f"{i}.png")) for i in range(3)]
    labels = make_labels(lab / "seq.slp", [images])
    pc = checker(lab)
    ok = check(pc, labels)
    assert [(v.status, v.kind, v.worker_path) for v in ok.videos] == [
        (FOUND, pb.VIDEO_KIND_IMAGE_SEQUENCE, images[0])
    ]
    token = ok.check_token
    os.unlink(images[2])
    assert pc.verify_check_token(token, labels_path=str(labels)) is not None
    missing = check(pc, labels)
    assert missing.videos[0].status == MISSING
    assert "1 of 3 images" in missing.videos[0].detail
    assert not missing.check_token


def test_outside_mounts_and_escaping_mappings(lab: Path, tmp_path: Path) -> None:
    secret = touch(tmp_path / "outside" / "v.mp4")
    (lab / "link.mp4").symlink_to(secret)
    inside = touch(lab / "ok.mp4")
    originals = ["/client/a.mp4", "/client/b.mp4", "/client/c.mp4", "/client/d.mp4", str(inside)]
    labels = make_labels(lab / "l.slp", originals)
    result = check(
        checker(lab),
        labels,
        path_mappings={
            "/client/a.mp4": str(secret),
            "/client/b.mp4": str(lab / "link.mp4"),
            "/client/c.mp4": f"{lab}/../outside/v.mp4",
            "/client/d.mp4": "relative/d.mp4",
        },
    )
    assert [v.status for v in result.videos] == [REFUSED, REFUSED, REFUSED, REFUSED, FOUND]
    reasons = {r.original: r.reason for r in result.refused_mappings}
    assert "outside the worker's shared storage" in reasons["/client/a.mp4"]
    assert "symbolic link" in reasons["/client/b.mp4"]
    assert "climbs" in reasons["/client/c.mp4"]
    assert "absolute" in reasons["/client/d.mp4"]
    assert all(v.detail for v in result.videos[:4])
    assert not result.check_token


def test_directory_where_a_video_should_be(lab: Path) -> None:
    (lab / "v.mp4").mkdir()
    result = check(checker(lab), make_labels(lab / "l.slp", [str(lab / "v.mp4")]))
    assert result.videos[0].status == UNREADABLE
    assert "directory" in result.videos[0].detail


def test_next_to_labels_fallback_and_suggestion(lab: Path) -> None:
    touch(lab / "proj" / "a.mp4")
    labels = make_labels(lab / "proj" / "l.slp", ["/Users/me/a.mp4"])
    pc = checker(lab, index=False)
    found = check(pc, labels)  # sleap-io finds it by itself: so do we
    assert found.videos[0].status == FOUND
    assert found.videos[0].worker_path == str(lab / "proj" / "a.mp4")
    mapped = check(pc, labels, path_mappings={"/Users/me/a.mp4": str(lab / "wrong.mp4")})
    video = mapped.videos[0]
    assert video.status == MISSING
    assert [(s.worker_path, s.reason) for s in video.suggestions] == [
        (str(lab / "proj" / "a.mp4"), pb.SUGGESTION_REASON_NEXT_TO_LABELS)
    ]


# -- suggestions and prefix proposals -----------------------------------------------


def test_prefix_rule_from_a_found_video(lab: Path) -> None:
    """The issue's example: a.mp4 found at /mnt/lab/data -> propose the rule for b."""
    touch(lab / "data" / "a.mp4")
    touch(lab / "data" / "b.mp4")
    originals = ["/Users/me/data/a.mp4", "/Users/me/data/b.mp4", "/Users/me/data/gone.mp4"]
    labels = make_labels(lab / "l.slp", originals)
    mapping = {"/Users/me/data/a.mp4": str(lab / "data" / "a.mp4")}
    for pc in (checker(lab), checker(lab, index=False)):
        result = check(pc, labels, path_mappings=mapping)
        assert [v.status for v in result.videos] == [FOUND, OUTSIDE, OUTSIDE]
        proposal, *alternatives = result.prefix_proposals
        assert (proposal.original_prefix, proposal.worker_prefix) == (
            "/Users/me/data",
            str(lab / "data"),
        )
        assert list(proposal.resolves) == [1] and proposal.evidence == 2
        # A broader rule follows as an alternative, with what it resolves.
        assert [(a.original_prefix, a.worker_prefix, list(a.resolves)) for a in alternatives] == [
            ("/Users/me", str(lab), [1])
        ]
        best = result.videos[1].suggestions[0]
        assert best.worker_path == str(lab / "data" / "b.mp4")
        assert best.reason == pb.SUGGESTION_REASON_PREFIX_RULE
        assert "/Users/me/data" in best.explanation
        assert not result.videos[2].suggestions
        assert not result.check_token
        fixed = check(
            pc, labels, path_mappings=mapping, prefix_mappings={"/Users/me/data": str(lab / "data")}
        )
        assert [v.status for v in fixed.videos] == [FOUND, FOUND, MISSING]


def test_windows_originals_prefix_inference(lab: Path) -> None:
    for n in ("a", "b", "c"):
        touch(lab / "shared" / "exp" / f"{n}.mp4")
    labels = make_labels(lab / "l.slp", ["/placeholder.mp4"])
    rows = [json.dumps({"backend": {"filename": f"C:\\Users\\me\\exp\\{n}.mp4"}}) for n in "abc"]
    rewrite_video_rows(labels, rows)
    result = check(
        checker(lab),
        labels,
        path_mappings={"c:/users/me/EXP/a.mp4": str(lab / "shared" / "exp" / "a.mp4")},
    )
    assert [v.status for v in result.videos] == [FOUND, OUTSIDE, OUTSIDE]
    assert result.videos[1].original_path == "C:\\Users\\me\\exp\\b.mp4"
    assert result.videos[1].worker_path == ""
    proposal, *alternatives = result.prefix_proposals
    # The general rule (C:\Users\me -> shared) resolves the same videos: the
    # specific one comes first, the broader one follows as an alternative.
    assert proposal.original_prefix == "C:\\Users\\me\\exp"
    assert proposal.worker_prefix == str(lab / "shared" / "exp")
    assert list(proposal.resolves) == [1, 2]
    assert [(a.original_prefix, list(a.resolves)) for a in alternatives] == [
        ("C:\\Users\\me", [1, 2])
    ]
    assert result.videos[2].suggestions[0].worker_path == str(lab / "shared" / "exp" / "c.mp4")
    fixed = check(checker(lab), labels, prefix_mappings={"C:\\Users\\me": str(lab / "shared")})
    assert [v.status for v in fixed.videos] == [FOUND, FOUND, FOUND]
    assert fixed.check_token


def test_same_name_ranking_and_inferred_rule(lab: Path) -> None:
    for session in ("s1", "s2"):
        for cam in ("cam0", "cam1"):
            touch(lab / "archive" / "proj" / session / f"{cam}.mp4")
    touch(lab / "decoy" / "cam0.mp4")
    touch(lab / "other" / "s1" / "cam0.mp4")
    originals = [f"/Users/al/proj/{s}/{c}.mp4" for s in ("s1", "s2") for c in ("cam0", "cam1")]
    originals.append("/Users/al/proj/s9/nowhere.mp4")
    result = check(checker(lab), make_labels(lab / "l.slp", originals))
    assert all(v.status == OUTSIDE for v in result.videos)
    first = result.videos[0].suggestions
    assert first[0].worker_path == str(lab / "archive" / "proj" / "s1" / "cam0.mp4")
    assert first[0].reason == pb.SUGGESTION_REASON_PREFIX_RULE
    same_name = [s for s in first if s.reason == pb.SUGGESTION_REASON_SAME_NAME]
    assert [s.worker_path for s in same_name] == [
        str(lab / "other" / "s1" / "cam0.mp4"),  # folder tail 's1' beats no tail
        str(lab / "archive" / "proj" / "s2" / "cam0.mp4"),
        str(lab / "decoy" / "cam0.mp4"),
    ]
    assert same_name[0].score > same_name[1].score
    assert "s1" in same_name[0].explanation
    scores = [s.score for s in first]
    assert scores == sorted(scores, reverse=True)
    # The most specific rule that explains the evidence first, the broader one next.
    assert [(p.original_prefix, p.worker_prefix) for p in result.prefix_proposals] == [
        ("/Users/al/proj", str(lab / "archive" / "proj")),
        ("/Users/al", str(lab / "archive")),
    ]
    assert all(list(p.resolves) == [0, 1, 2, 3] for p in result.prefix_proposals)
    assert not result.videos[4].suggestions


def test_max_suggestions_and_same_size(lab: Path) -> None:
    for i in range(8):
        touch(lab / f"d{i}" / "cam" / "v.mp4", b"x" * i)
    labels = make_labels(lab / "l.slp", ["/elsewhere/cam/v.mp4", "/elsewhere/v.mp4"])
    pc = checker(lab)
    first, second = check(pc, labels).videos
    assert len(first.suggestions) == 5
    assert all("'cam'" in s.explanation for s in first.suggestions)
    # A common name with no folder in common: only two, marked ambiguous.
    assert len(second.suggestions) == 2
    assert all("one of 8 files" in s.explanation for s in second.suggestions)
    assert len(check(pc, labels, max_suggestions=2).videos[0].suggestions) == 2
    sizes = {"/elsewhere/v.mp4": 6, "/elsewhere/cam/v.mp4": 3}
    result = pc.check(pb.PathCheckRequest(labels_path=str(labels)), sizes=sizes)
    for video, want in zip(result.videos, ("d3", "d6"), strict=True):
        assert video.suggestions[0].worker_path == str(lab / want / "cam" / "v.mp4")
        assert video.suggestions[0].reason == pb.SUGGESTION_REASON_SAME_NAME_AND_SIZE


def test_all_missing_without_candidates(lab: Path) -> None:
    labels = make_labels(lab / "l.slp", ["/Users/me/a.mp4", "C:\\x\\b.mp4"])
    result = check(checker(lab), labels)
    assert [v.status for v in result.videos] == [OUTSIDE, OUTSIDE]
    windows = result.videos[1]
    assert "Windows" in windows.detail and windows.detail.startswith(windows.original_path)
    assert not result.prefix_proposals and not result.check_token
    assert all(not v.suggestions for v in result.videos)


# -- check tokens -------------------------------------------------------------------


def test_token_forged_malformed_changed(lab: Path) -> None:
    video = touch(lab / "v.mp4", b"1")
    labels = make_labels(lab / "l.slp", [str(video)])
    pc = checker(lab)
    token = check(pc, labels).check_token
    verify = pc.verify_check_token
    assert verify(token, labels_path=str(labels)) is None
    assert verify(token, labels_path=f"{lab}/./l.slp") is None  # same file, other spelling
    head, payload, mac = token.split(".")
    other = issue_check_token(b"another worker", str(labels), [(str(video), 1, 0)], now=0)
    assert "forged" in (verify(other, labels_path=str(labels)) or "")
    assert "forged" in (verify(f"{head}.{payload}.{mac[:-2]}AA", labels_path=str(labels)) or "")
    for bad in ("", "v1", "v2.a.b", f"{head}.!!.{mac}", f"{head}.{payload}", "v1.eJw.AA"):
        assert "malformed" in (verify(bad, labels_path=str(labels)) or ""), bad
    assert "differs" in (verify(token, labels_path=str(video)) or "")
    assert verify(token, labels_path=str(labels), path_mappings={}, prefix_mappings={}) is None
    assert "mappings" in (verify(token, labels_path=str(labels), path_mappings={"/a": "/b"}) or "")
    assert "rejected" in (verify(token, labels_path="/etc/passwd") or "")
    assert "expired" in (verify(token, labels_path=str(labels), max_age_s=-1) or "")
    video.write_bytes(b"22")
    assert "changed" in (verify(token, labels_path=str(labels)) or "")
    video.unlink()
    assert "missing" in (verify(token, labels_path=str(labels)) or "")


def test_token_binds_the_checked_mappings(lab: Path) -> None:
    video = touch(lab / "data" / "v.mp4")
    labels = make_labels(lab / "l.slp", ["/Users/me/v.mp4"])
    pc = checker(lab)
    prefix = {"/Users/me": str(lab / "data")}
    result = check(
        pc,
        "/Users/me/l.slp",
        prefix_mappings=prefix,
        path_mappings={"/Users/me/l.slp": str(labels)},
    )
    assert result.videos[0].worker_path == str(video)
    token = result.check_token
    mapped = {"/Users/me/l.slp": str(labels)}
    verify = pc.verify_check_token
    assert (
        verify(token, labels_path=str(labels), path_mappings=mapped, prefix_mappings=prefix) is None
    )
    assert (
        verify(token, labels_path=str(labels), path_mappings=mapped, prefix_mappings={}) is not None
    )


def test_token_leaves_out_the_labels_mapping(lab: Path) -> None:
    video = touch(lab / "data" / "v.mp4")
    labels = make_labels(lab / "l.slp", [str(video)])
    pc = checker(lab)
    client_labels = "C:\\Users\\me\\l.slp"
    result = check(pc, client_labels, path_mappings={client_labels: str(labels)})
    assert result.labels.worker_path == str(labels) and result.check_token
    token = result.check_token

    def verify(exact: dict[str, str], prefix: dict[str, str] | None = None) -> str | None:
        return pc.verify_check_token(
            token, labels_path=str(labels), path_mappings=exact, prefix_mappings=prefix or {}
        )

    assert verify({}) is None  # what a submit carries: the labels path is the worker's
    assert verify({client_labels: str(labels)}) is None  # repeated: harmless
    assert verify({client_labels: f"{lab}/data/../l.slp"}) is None  # same file
    assert "'C:\\\\Users\\\\me\\\\l.slp' -> " in (verify({client_labels: str(video)}) or "")
    assert "prefix mapping 'C:/Users' -> " in (verify({}, {"C:/Users": str(lab)}) or "")
    # Without mappings to compare (e.g. a caller that only checks the files), no verdict on them.
    assert pc.verify_check_token(token, labels_path=str(labels)) is None


def test_relative_video_paths_resolve_next_to_labels(lab: Path) -> None:
    video = touch(lab / "proj" / "videos" / "a.mp4")
    labels = make_labels(lab / "proj" / "l.slp", ["/placeholder.mp4"])
    rewrite_video_rows(labels, [json.dumps({"backend": {"filename": "videos/a.mp4"}})])
    result = check(checker(lab), labels)
    assert (result.videos[0].status, result.videos[0].worker_path) == (FOUND, str(video))


def test_token_file_swapped_for_an_escaping_symlink(lab: Path, tmp_path: Path) -> None:
    video = touch(lab / "v.mp4")
    labels = make_labels(lab / "l.slp", [str(video)])
    pc = checker(lab)
    token = check(pc, labels).check_token
    video.unlink()
    video.symlink_to(touch(tmp_path / "outside.mp4"))
    assert "outside" in (pc.verify_check_token(token, labels_path=str(labels)) or "")


# -- client paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "anchor", "parts", "windows"),
    [
        ("/Users/me/a.mp4", "/", ("Users", "me", "a.mp4"), False),
        ("C:\\Users\\me\\a.mp4", "C:", ("Users", "me", "a.mp4"), True),
        ("C:/Users/me/a.mp4", "C:", ("Users", "me", "a.mp4"), True),
        ("\\\\server\\share\\a.mp4", "//", ("server", "share", "a.mp4"), True),
        ("//server/share/a.mp4", "//", ("server", "share", "a.mp4"), True),
        ("videos\\a.mp4", "", ("videos", "a.mp4"), True),
        ("videos/a.mp4", "", ("videos", "a.mp4"), False),
        ("/weird\\name.mp4", "/", ("weird\\name.mp4",), False),
    ],
)
def test_client_path_parse(text: str, anchor: str, parts: tuple[str, ...], windows: bool) -> None:
    cp = ClientPath.parse(text)
    assert (cp.anchor, cp.parts, cp.windows, cp.name) == (anchor, parts, windows, parts[-1])


def test_mapper_longest_prefix_and_exact_first() -> None:
    mapper = Mapper(
        {"/a/b/c.mp4": "/w/exact.mp4"},
        {"/a": "/w/short", "/a/b": "/w/long/", "C:\\Data": "/w/c"},
    )
    assert mapper.map(ClientPath.parse("/a/b/c.mp4")) == "/w/exact.mp4"
    assert mapper.map(ClientPath.parse("/a/b/d/e.mp4")) == "/w/long/d/e.mp4"
    assert mapper.map(ClientPath.parse("/a/x.mp4")) == "/w/short/x.mp4"
    assert mapper.map(ClientPath.parse("/ab/x.mp4")) == "/ab/x.mp4"  # not under /a
    assert mapper.map(ClientPath.parse("c:/data/X.mp4")) == "/w/c/X.mp4"
    assert mapper.map(ClientPath.parse("D:\\data\\x.mp4")) is None


def test_infer_rules_general_and_specific() -> None:
    rules = infer_rules(ClientPath.parse("/Users/me/data/a.mp4"), "/mnt/lab/data/a.mp4")
    assert {(r.original, r.worker) for r in rules} == {
        ("/Users/me", "/mnt/lab"),
        ("/Users/me/data", "/mnt/lab/data"),
    }
    assert infer_rules(ClientPath.parse("/mnt/lab/a.mp4"), "/mnt/lab/a.mp4") == []
    assert infer_rules(ClientPath.parse("/x/a.mp4"), "/mnt/b.mp4") == []


_SEGMENTS = st.sampled_from(["lab", "..", ".", "data", "v.mp4", "link", "out", "", "lab2"])


@settings(
    max_examples=3 * settings.default.max_examples // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(targets=st.lists(st.lists(_SEGMENTS, max_size=6), min_size=1, max_size=4))
def test_found_is_always_inside_the_mounts(tmp_path: Path, targets: list[list[str]]) -> None:
    lab = tmp_path / "lab"
    if not lab.exists():
        touch(lab / "data" / "v.mp4")
        touch(tmp_path / "out" / "v.mp4")
        touch(tmp_path / "lab2" / "v.mp4")
        (lab / "link").symlink_to(tmp_path / "out")
        make_labels(lab / "l.slp", [f"/c/{i}.mp4" for i in range(4)])
    mappings = {f"/c/{i}.mp4": "/".join([str(tmp_path), *t]) for i, t in enumerate(targets)}
    result = check(checker(lab), lab / "l.slp", path_mappings=mappings)
    for video in result.videos:
        if video.status == FOUND:
            assert Path(video.worker_path).resolve().is_relative_to(lab)
        for suggestion in video.suggestions:
            assert Path(suggestion.worker_path).resolve().is_relative_to(lab)


_TEXT = st.text(alphabet=st.sampled_from(list("/\\:.Ca b~$\x00é")), max_size=16)


@settings(
    max_examples=2 * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    labels=_TEXT,
    exact=st.dictionaries(_TEXT, _TEXT, max_size=3),
    prefix=st.dictionaries(_TEXT, _TEXT, max_size=3),
    limit=st.integers(0, 2**32 - 1),
)
def test_any_request_gets_an_answer(
    lab: Path, labels: str, exact: dict[str, str], prefix: dict[str, str], limit: int
) -> None:
    if not (lab / "l.slp").exists():
        make_labels(lab / "l.slp", ["/c/a.mp4", "C:\\c\\b.mp4", "rel/c.mp4"])
        touch(lab / "c" / "a.mp4")
    pc = checker(lab)
    for path in (labels, str(lab / "l.slp")):
        result = check(pc, path, path_mappings=exact, prefix_mappings=prefix, max_suggestions=limit)
        assert result.labels.status != pb.PATH_STATUS_UNSPECIFIED
        assert result.labels.detail or result.labels.status == FOUND
        assert all(len(v.suggestions) <= 50 for v in result.videos)


def test_prefix_rule_from_a_video_found_next_to_labels(lab: Path) -> None:
    touch(lab / "proj" / "a.mp4")
    sub = touch(lab / "proj" / "day2" / "b.mp4")
    labels = make_labels(
        lab / "proj" / "l.slp", ["/Users/me/proj/a.mp4", "/Users/me/proj/day2/b.mp4"]
    )
    result = check(checker(lab, index=False), labels)
    assert [v.status for v in result.videos] == [FOUND, OUTSIDE]
    proposal, *_broader = result.prefix_proposals
    assert (proposal.original_prefix, proposal.worker_prefix) == (
        "/Users/me/proj",
        str(lab / "proj"),
    )
    assert list(proposal.resolves) == [1]
    assert result.videos[1].suggestions[0].worker_path == str(sub)


def test_rewritten_labels_file_is_read_again(lab: Path) -> None:
    a, b = touch(lab / "a.mp4"), touch(lab / "b.mp4")
    pc = checker(lab)
    assert [v.worker_path for v in check(pc, make_labels(lab / "l.slp", [str(a)])).videos] == [
        str(a)
    ]
    (lab / "l.slp").unlink()
    labels = make_labels(lab / "l.slp", [str(b), str(a)])
    assert [v.worker_path for v in check(pc, labels).videos] == [str(b), str(a)]


def test_concurrent_checks_agree(lab: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    videos = [str(touch(lab / "d" / f"s{i}" / "v.mp4")) for i in range(20)]
    labels = make_labels(lab / "l.slp", [v.replace(str(lab), "/Users/x") for v in videos])
    pc = checker(lab)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: check(pc, labels), range(16)))
    assert all(r == results[0] for r in results)
    assert results[0].prefix_proposals[0].original_prefix == "/Users/x/d"
    assert all(len(p.resolves) == 20 for p in results[0].prefix_proposals)


# -- one rule for the check and the submit ---------------------------------------------

_CONFIG = "model_config:\n  backbone_config: {}\ntrainer_config:\n  max_epochs: 1\n"


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker share with videos, a folder where a file is expected, and an escaping link."""
    root = tmp_path_factory.mktemp("agree")
    lab = root / "mnt" / "share"
    for name in ("a", "b"):
        touch(lab / "proj" / "videos" / f"{name}.mp4", name.encode())
    (lab / "proj" / "videos" / "dir.mp4").mkdir()
    touch(root / "outside" / "videos" / "a.mp4")
    (lab / "escape").symlink_to(root / "outside")
    make_labels(
        lab / "proj" / "labels.slp",
        ["/Volumes/share/proj/videos/a.mp4", "/Volumes/share/proj/videos/b.mp4"],
    )
    return lab


def _candidates(lab: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    prefix = [
        ("/Volumes/share/proj/videos", str(lab / "proj" / "videos")),
        ("/Volumes/share/proj", str(lab / "proj")),
        ("/Volumes/share", str(lab)),
        ("/Volumes", str(lab.parent)),  # the issue's rule: above the mount
        ("/Volumes/share/proj", str(lab / "escape")),  # through a link out of the mount
        ("/Volumes/share/proj/videos", f"{lab}/proj/../../x"),  # climbs
        ("/Volumes/share/proj/videos/", str(lab / "other")),  # conflicts with the first
        ("C:\\data", "D:\\x"),  # a Windows target
        ("/Volumes\u2215share", str(lab)),  # a lookalike slash
    ]
    exact = [
        ("/Volumes/share/proj/videos/a.mp4", str(lab / "proj" / "videos" / "a.mp4")),
        ("/Volumes/share/proj/videos/b.mp4", str(lab / "proj" / "videos" / "dir.mp4")),  # a dir
        ("/Volumes/share/unused.mp4", str(lab / "proj" / "videos" / "nope.mp4")),  # no file
    ]
    return prefix, exact


@settings(
    max_examples=3 * settings.default.max_examples // 5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_mapping_set_with_a_token_is_accepted_at_submit(share: Path, data: st.DataObject) -> None:
    """Property: whatever mappings a check issued a token for, the same worker accepts at
    submit; and a check that refuses a mapping issues no token (the submit refuses it too)."""
    from sleap_rtc.worker.intakecheck import IntakeRecheck
    from sleap_rtc.worker.validate import SubmitValidator
    from sleap_rtc_proto.v1 import spec_pb2

    prefix_pool, exact_pool = _candidates(share)
    prefix = dict(data.draw(st.lists(st.sampled_from(prefix_pool), max_size=3)))
    exact = dict(data.draw(st.lists(st.sampled_from(exact_pool), max_size=2)))
    pc = checker(share)
    labels = str(share / "proj" / "labels.slp")
    result = check(pc, labels, path_mappings=exact, prefix_mappings=prefix)
    validator = SubmitValidator(
        pc.policy,
        token_check=pc.verify_check_token,
        recheck=IntakeRecheck(pc),
    )
    spec = spec_pb2.TrainJobSpec(
        config_content=_CONFIG, labels_path=labels, path_mappings=exact, prefix_mappings=prefix
    )
    answer = validator.validate(spec, result.check_token)
    if result.check_token:
        assert not result.refused_mappings
        assert not isinstance(answer, list), [v.message for v in answer]
    if result.refused_mappings:
        assert not result.check_token
        assert isinstance(answer, list)  # the submit refuses the same set
    for refusal in result.refused_mappings:
        assert refusal.reason and "'" not in refusal.original  # named as typed


def test_the_worker_proposal_is_accepted_at_submit(share: Path) -> None:
    """The issue's failure: a proposal that passes the check must pass the submit."""
    from sleap_rtc.worker.intakecheck import IntakeRecheck
    from sleap_rtc.worker.validate import SubmitValidator
    from sleap_rtc_proto.v1 import spec_pb2

    pc = checker(share)
    labels = str(share / "proj" / "labels.slp")
    exact = {"/Volumes/share/proj/videos/a.mp4": str(share / "proj" / "videos" / "a.mp4")}
    first = check(pc, labels, path_mappings=exact)
    assert first.prefix_proposals
    for proposal in first.prefix_proposals:
        assert pc.policy.contains(proposal.worker_prefix)
        rules = {proposal.original_prefix: proposal.worker_prefix}
        again = check(pc, labels, prefix_mappings=rules)
        assert again.check_token, again
        spec = spec_pb2.TrainJobSpec(
            config_content=_CONFIG, labels_path=labels, prefix_mappings=rules
        )
        validator = SubmitValidator(
            pc.policy, token_check=pc.verify_check_token, recheck=IntakeRecheck(pc)
        )
        answer = validator.validate(spec, again.check_token)
        assert not isinstance(answer, list), [v.message for v in answer]
    refused = check(pc, labels, prefix_mappings={"/Volumes": str(share.parent)})
    assert not refused.check_token
    (why,) = refused.refused_mappings
    assert "outside the worker's shared storage" in why.reason and str(share) in why.reason


def test_windows_videos_found_by_name_propose_the_specific_rule_first(lab: Path) -> None:
    """The issue's case: three videos in C:\\Users\\me\\lab\\videos, none mapped yet."""
    for n in "abc":
        touch(lab / "lab" / "videos" / f"{n}.mp4")
    labels = make_labels(lab / "l.slp", ["/placeholder.mp4"])
    rows = [
        json.dumps({"backend": {"filename": f"C:\\Users\\me\\lab\\videos\\{n}.mp4"}}) for n in "abc"
    ]
    rewrite_video_rows(labels, rows)
    result = check(checker(lab), labels)
    assert [v.status for v in result.videos] == [OUTSIDE] * 3
    rules = [
        (p.original_prefix, p.worker_prefix, list(p.resolves)) for p in result.prefix_proposals
    ]
    assert rules[0] == ("C:\\Users\\me\\lab\\videos", str(lab / "lab" / "videos"), [0, 1, 2])
    assert rules[1:] == [
        ("C:\\Users\\me\\lab", str(lab / "lab"), [0, 1, 2]),
        ("C:\\Users\\me", str(lab), [0, 1, 2]),
    ]
    assert all(checker(lab).policy.contains(worker) for _, worker, _ in rules)
    fixed = check(checker(lab), labels, prefix_mappings={rules[0][0]: rules[0][1]})
    assert fixed.check_token and not fixed.refused_mappings


def test_nul_and_lookalikes_are_refused_by_name_not_called_relative(lab: Path) -> None:
    pc = checker(lab)
    nul = pc.check(pb.PathCheckRequest(labels_path=f"{lab}/l\x00.slp"))
    assert nul.labels.status == REFUSED and "NUL byte" in nul.labels.detail
    assert "absolute" not in nul.labels.detail
    video = touch(lab / "v.mp4")
    labels = make_labels(lab / "l.slp", [str(video)])
    bad = check(pc, labels, prefix_mappings={"/Users\uff0fme": str(lab)})
    (refusal,) = bad.refused_mappings
    assert "fullwidth slash" in refusal.reason and refusal.kind == pb.MAPPING_KIND_PREFIX
    assert bad.videos[0].status == FOUND and not bad.check_token  # refused: no token at all


@pytest.fixture(scope="module")
def both_sides(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    lab = tmp_path_factory.mktemp("sides") / "share"
    touch(lab / "t" / "a.mp4")
    labels = make_labels(lab / "l.slp", ["/placeholder.mp4"])
    originals = ["C:\\Users\\Me\\lab\\v\\a.mp4", "/Users/me/lab/v/b.mp4", "c:/users/me/LAB/v/c.mp4"]
    rewrite_video_rows(labels, [json.dumps({"backend": {"filename": o}}) for o in originals])
    return lab, labels


@settings(
    max_examples=4 * settings.default.max_examples // 5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_client_and_worker_map_the_same_rules_to_the_same_paths(
    both_sides: tuple[Path, Path], data: st.DataObject
) -> None:
    """Property: for any rules, the client's model (what the UI shows and saves) and the
    worker's check give every video the same worker path."""
    from sleap_rtc.paths.model import apply_prefixes

    lab, labels = both_sides
    keys = ["C:\\Users\\me", "c:/users/me/lab", "/Users/me", "/Users/me/lab/v", "/users/me"]
    keys += ["C:/Users/Me/lab/v/", "\\\\server\\share"]
    targets = [str(lab), str(lab / "t"), str(lab / "t" / "deeper")]
    rules = data.draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(targets), max_size=3))
    result = check(checker(lab, index=False), labels, prefix_mappings=rules)
    if result.refused_mappings:  # two spellings of one key: refused on both sides
        from sleap_rtc.paths.model import mapping_problems

        assert mapping_problems({}, rules)
        return
    for video in result.videos:
        client = apply_prefixes(video.original_path, rules)
        if client is None:
            assert video.status == OUTSIDE, video
        else:
            assert video.worker_path == os.path.normpath(client), (video, rules)
