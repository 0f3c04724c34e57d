"""Path resolution: the check view, the terminal UI, the non-interactive policy, saved rules."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from rich.console import Console

from sleap_rtc.client.resolve import (
    AutoResolver,
    PrefixStore,
    ResolutionFailed,
    TerminalResolver,
    default_store_path,
    describe,
    prefixes_learned,
)
from sleap_rtc.client.views import (
    CheckView,
    LabelsView,
    PrefixView,
    SuggestionView,
    VideoView,
    storage_hint,
)
from sleap_rtc.paths.infer import specific_rule
from sleap_rtc.paths.model import apply_prefixes, has_prefix
from sleap_rtc_proto.v1 import paths_pb2 as PP


def result_with(*videos: PP.VideoCheck,
                labels_status: PP.PathStatus.ValueType = PP.PATH_STATUS_FOUND,
                proposals: Iterable[PP.PrefixProposal] = (), mounts: Iterable[str] = ()
                ) -> PP.PathCheckResult:
    return PP.PathCheckResult(
        labels=PP.PathEntry(original_path="/c/l.slp", worker_path="/mnt/l.slp",
                            status=labels_status),
        videos=list(videos),
        prefix_proposals=list(proposals),
        check_token="tok",
        mounts=list(mounts),
    )


def missing(index: int, path: str, *suggestions: tuple[str, float]) -> PP.VideoCheck:
    return PP.VideoCheck(
        index=index, original_path=path, status=PP.PATH_STATUS_MISSING,
        kind=PP.VIDEO_KIND_FILE,
        suggestions=[PP.Suggestion(worker_path=w, reason=PP.SUGGESTION_REASON_SAME_NAME,
                                   score=s, explanation="same name") for w, s in suggestions],
    )


def found(index: int, path: str) -> PP.VideoCheck:
    return PP.VideoCheck(index=index, original_path=path, worker_path=path,
                         status=PP.PATH_STATUS_FOUND, kind=PP.VIDEO_KIND_FILE)


def scripted(*answers: str) -> tuple[TerminalResolver, io.StringIO]:
    out = io.StringIO()
    it = iter(answers)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return TerminalResolver(console=Console(file=out, width=200, color_system=None),
                            input=read), out


# ----------------------------------------------------------------------------- views


def test_view_from_result_sorts_found_and_missing() -> None:
    view = CheckView.from_result(
        result_with(found(0, "/mnt/a.mp4"), missing(1, "/c/b.mp4", ("/mnt/b.mp4", 0.9)),
                    PP.VideoCheck(index=2, original_path="/c/e.mp4",
                                  status=PP.PATH_STATUS_EMBEDDED, kind=PP.VIDEO_KIND_EMBEDDED)),
        mounts=["/mnt"],
    )
    assert [v.index for v in view.found] == [0, 2]
    assert [v.index for v in view.missing] == [1]
    assert view.missing[0].suggestions[0] == SuggestionView("/mnt/b.mp4", "same_name", 0.9,
                                                            "same name")
    assert view.videos[2].kind == "embedded"
    assert not view.passed and not view.all_videos_missing and view.hint is None
    assert view.mounts == ("/mnt",)
    assert describe(view)["missing"] == ["/c/b.mp4"]


def test_all_missing_view_has_the_storage_hint() -> None:
    view = CheckView.from_result(
        result_with(missing(0, "/c/a.mp4"), missing(1, "/c/b.mp4"), mounts=["/mnt/lab"]))
    assert view.all_videos_missing
    assert view.hint == storage_hint(2, ["/mnt/lab"])
    assert "/mnt/lab" in view.hint and "shared storage" in view.hint
    hidden = CheckView.from_result(result_with(missing(0, "/c/a.mp4")))
    assert hidden.hint is not None and "did not disclose" in hidden.hint


def test_embedded_only_and_passed() -> None:
    view = CheckView.from_result(result_with(
        PP.VideoCheck(index=0, original_path="/c/a.mp4", status=PP.PATH_STATUS_EMBEDDED)))
    assert view.embedded_only and view.passed and not view.all_videos_missing


def test_labels_not_found_is_listed_first() -> None:
    view = CheckView.from_result(result_with(labels_status=PP.PATH_STATUS_MISSING))
    assert view.missing_paths() == ["/c/l.slp"] and not view.passed


def test_saved_prefixes_only_when_they_match_and_are_not_applied() -> None:
    result = result_with(missing(0, "/Users/me/data/a.mp4"))
    saved = {"/Users/me/data": "/mnt/data", "/elsewhere": "/mnt/x"}
    view = CheckView.from_result(result, saved_prefixes=saved)
    assert view.saved_prefixes == (PrefixView("/Users/me/data", "/mnt/data", source="saved"),)
    applied = CheckView.from_result(result, saved_prefixes=saved,
                                    prefix_mappings={"/Users/me/data": "/mnt/data"})
    assert applied.saved_prefixes == ()


def test_prefix_helpers() -> None:
    assert has_prefix("/a/b/c.mp4", "/a/b") and not has_prefix("/a/bc.mp4", "/a/b")
    assert has_prefix("C:\\data\\x.mp4", "C:\\data")
    assert apply_prefixes("C:\\data\\day1\\x.mp4", {"C:\\data": "/mnt/d"}) == "/mnt/d/day1/x.mp4"
    assert apply_prefixes("/a/b/x", {"/a": "/1", "/a/b": "/2"}) == "/2/x"
    assert apply_prefixes("/z/x", {"/a": "/1"}) is None
    assert specific_rule("/Users/me/data/a.mp4", "/mnt/lab/data/a.mp4") == (
        "/Users/me/data",
        "/mnt/lab/data",
    )
    assert specific_rule("/same/a.mp4", "/same/a.mp4") is None
    # Saved rules are the specific form (the folders), never "longest common tail stripped".
    assert prefixes_learned({"/Users/me/x/a.mp4": "/mnt/x/a.mp4"}) == {"/Users/me/x": "/mnt/x"}
    readme = {"/Volumes/lab-share/p/v/a.mp4": "/mnt/lab-share/p/v/a.mp4"}
    assert prefixes_learned(readme, ["/mnt/lab-share"]) == {
        "/Volumes/lab-share/p/v": "/mnt/lab-share/p/v"
    }
    assert prefixes_learned({"/Volumes/a.mp4": "/mnt/a.mp4"}, ["/mnt/lab-share"]) == {}


# ----------------------------------------------------------------------------- auto


def test_auto_takes_confident_suggestions() -> None:
    view = CheckView.from_result(result_with(missing(0, "/c/a.mp4", ("/mnt/a.mp4", 0.95),
                                                     ("/mnt/old/a.mp4", 0.5))))
    assert AutoResolver(0.9)(view).path_mappings == {"/c/a.mp4": "/mnt/a.mp4"}


def test_auto_fails_with_the_list_below_threshold() -> None:
    view = CheckView.from_result(result_with(
        missing(0, "/c/a.mp4", ("/mnt/a.mp4", 0.5)), missing(1, "/c/b.mp4"), mounts=["/mnt"]))
    with pytest.raises(ResolutionFailed) as info:
        AutoResolver(0.9)(view)
    assert info.value.missing == ["/c/a.mp4", "/c/b.mp4"]
    assert "/c/a.mp4" in info.value.message and "shared storage" in info.value.message


@pytest.mark.parametrize("score, accepted", [
    (0.99, True),   # prefix rule with evidence
    (0.9, True),    # prefix rule
    (0.8, True),    # same name and size
    (0.7, True),    # next to the labels file
    (0.65, True),   # same name + two matching parent folders (0.45 + 2 * 0.1)
    (0.55, False),  # same name + one matching folder
    (0.45, False),  # bare same name
    (0.35, False),  # ambiguous same name
])
def test_auto_default_threshold_follows_the_worker_scale(score: float, accepted: bool) -> None:
    """The default (0.6, the CLI's --min-score) takes typical same-name suggestions."""
    from sleap_rtc.client.resolve import DEFAULT_MIN_SCORE

    assert AutoResolver().threshold == DEFAULT_MIN_SCORE == 0.6
    view = CheckView.from_result(result_with(missing(0, "/c/d/a.mp4", ("/mnt/d/a.mp4", score))))
    if accepted:
        assert AutoResolver()(view).path_mappings == {"/c/d/a.mp4": "/mnt/d/a.mp4"}
    else:
        with pytest.raises(ResolutionFailed, match=r"at least 0\.6"):
            AutoResolver()(view)


def test_auto_tries_saved_prefixes_first() -> None:
    view = CheckView.from_result(result_with(missing(0, "/c/a.mp4", ("/mnt/a.mp4", 0.95))),
                                 saved_prefixes={"/c": "/mnt"})
    assert AutoResolver()(view).prefix_mappings == {"/c": "/mnt"}
    assert AutoResolver(use_saved=False)(view).path_mappings == {"/c/a.mp4": "/mnt/a.mp4"}


def test_auto_cannot_resolve_missing_labels() -> None:
    view = CheckView.from_result(result_with(labels_status=PP.PATH_STATUS_MISSING))
    with pytest.raises(ResolutionFailed):
        AutoResolver()(view)


# ----------------------------------------------------------------------------- terminal


def test_terminal_takes_a_numbered_suggestion() -> None:
    resolver, out = scripted("2")
    view = CheckView.from_result(result_with(
        found(0, "/mnt/x.mp4"),
        missing(1, "/c/a.mp4", ("/mnt/a.mp4", 0.9), ("/mnt/old/a.mp4", 0.4))))
    resolution = resolver(view)
    assert resolution is not None
    assert dict(resolution.path_mappings) == {"/c/a.mp4": "/mnt/old/a.mp4"}
    text = out.getvalue()
    assert "/mnt/x.mp4" in text and "1 found, 1 not usable on the worker" in text
    assert "same name" in text and "0.90" in text


def test_terminal_accepts_a_typed_path_after_a_bad_answer() -> None:
    resolver, out = scripted("banana", "9", "/mnt/typed.mp4")
    view = CheckView.from_result(result_with(missing(0, "/c/a.mp4", ("/mnt/a.mp4", 0.9))))
    resolution = resolver(view)
    assert resolution is not None
    assert dict(resolution.path_mappings) == {"/c/a.mp4": "/mnt/typed.mp4"}
    assert "Not understood" in out.getvalue()


def test_terminal_windows_typed_path() -> None:
    resolver, _ = scripted("D:\\share\\a.mp4")
    view = CheckView.from_result(result_with(missing(0, "C:\\c\\a.mp4")))
    resolution = resolver(view)
    assert resolution is not None
    assert resolution.path_mappings == {"C:\\c\\a.mp4": "D:\\share\\a.mp4"}


def test_terminal_prefix_proposal_with_p() -> None:
    proposal = PP.PrefixProposal(original_prefix="/Users/me", worker_prefix="/mnt/lab",
                                 resolves=[0, 1], evidence=3)
    view = CheckView.from_result(result_with(missing(0, "/Users/me/a.mp4"),
                                             missing(1, "/Users/me/b.mp4"),
                                             proposals=[proposal]))
    resolver, out = scripted("p")
    resolution = resolver(view)
    assert resolution is not None
    assert dict(resolution.prefix_mappings) == {"/Users/me": "/mnt/lab"}
    assert resolution.path_mappings == {}  # no per-video questions: the rule covers both
    assert "resolves 2 video(s)" in out.getvalue()


def test_terminal_declines_proposal_then_uses_p_on_a_video() -> None:
    proposal = PP.PrefixProposal(original_prefix="/Users/me", worker_prefix="/mnt/lab",
                                 resolves=[0])
    view = CheckView.from_result(result_with(missing(0, "/Users/me/a.mp4"),
                                             proposals=[proposal]))
    resolver, _ = scripted("n", "p")
    resolution = resolver(view)
    assert resolution is not None and dict(resolution.prefix_mappings) == {"/Users/me": "/mnt/lab"}


def test_terminal_saved_prefix_is_offered_first() -> None:
    view = CheckView.from_result(result_with(missing(0, "/Users/me/a.mp4", ("/mnt/a.mp4", 1.0))),
                                 saved_prefixes={"/Users/me": "/mnt/saved"})
    resolver, out = scripted("p")
    resolution = resolver(view)
    assert resolution is not None
    assert dict(resolution.prefix_mappings) == {"/Users/me": "/mnt/saved"}
    text = out.getvalue()
    assert text.index("saved from an earlier run") < text.index("Apply it?")


def test_terminal_cancel_and_eof_cancel() -> None:
    view = CheckView.from_result(result_with(missing(0, "/c/a.mp4", ("/mnt/a.mp4", 0.9))))
    assert scripted("c")[0](view) is None
    assert scripted()[0](view) is None  # EOF (closed stdin) is a cancel, never a hang


def test_terminal_skip_leaves_the_path_unmapped() -> None:
    view = CheckView.from_result(result_with(missing(0, "/c/a.mp4"), missing(1, "/c/b.mp4")))
    resolution = scripted("s", "/mnt/b.mp4")[0](view)
    assert resolution is not None and dict(resolution.path_mappings) == {"/c/b.mp4": "/mnt/b.mp4"}


def test_terminal_missing_labels_file() -> None:
    view = CheckView.from_result(result_with(labels_status=PP.PATH_STATUS_MISSING))
    resolver, out = scripted("/mnt/real/l.slp")
    resolution = resolver(view)
    assert resolution is not None
    assert dict(resolution.path_mappings) == {"/c/l.slp": "/mnt/real/l.slp"}
    assert "Not usable on the worker: labels file" in out.getvalue()
    assert "[a worker path for the labels file, s = skip, c = cancel]: " in out.getvalue()


def test_terminal_gives_up_after_bounded_bad_answers() -> None:
    view = CheckView.from_result(result_with(missing(0, "/c/a.mp4")))
    resolution = scripted(*["???"] * 50)[0](view)
    assert resolution is not None and resolution.empty


# ----------------------------------------------------------------------------- store


def test_store_roundtrip_per_worker(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path / "sub" / "p.json")
    assert store.load("w") == {}
    store.remember({"/a": "/b"}, worker_id="w")
    store.remember({"/any": "/x"})
    store.remember({})
    assert store.load("w") == {"/a": "/b", "/any": "/x"}
    assert store.load("other") == {"/any": "/x"}
    data = json.loads((tmp_path / "sub" / "p.json").read_text())
    assert data["version"] == 1


@pytest.mark.parametrize("content", ["not json", "[]", '{"workers": 3}',
                                     '{"workers": {"w": {"/a": 3}}}'])
def test_store_survives_corrupt_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    store = PrefixStore(path)
    assert store.load("w") == {}
    store.remember({"/a": "/b"}, worker_id="w")
    assert store.load("w") == {"/a": "/b"}


def test_default_store_path_is_in_the_user_config_dir() -> None:
    path = default_store_path()
    assert path.name == "prefix_mappings.json" and "sleap-rtc" in str(path)


def test_views_are_frozen() -> None:
    view = CheckView(labels=LabelsView("/a.slp", "/a.slp", "found"),
                     videos=(VideoView(0, "/a", "/a", "found"),))
    with pytest.raises(AttributeError):
        view.attempt = 2  # type: ignore[misc]


# ----------------------------------------------------------------------------- issue 11


def test_labels_file_suggestion_is_taken_like_a_video_one() -> None:
    result = result_with(labels_status=PP.PATH_STATUS_OUTSIDE_MOUNTS)
    result.labels.suggestions.add(worker_path="/mnt/s/l.slp", score=0.75,
                                  reason=PP.SUGGESTION_REASON_SAME_NAME)
    view = CheckView.from_result(result)
    assert view.labels.suggestions[0].worker_path == "/mnt/s/l.slp"
    assert dict(AutoResolver()(view).path_mappings) == {"/c/l.slp": "/mnt/s/l.slp"}
    resolver, out = scripted("1")
    resolution = resolver(view)
    assert resolution is not None and dict(resolution.path_mappings) == {
        "/c/l.slp": "/mnt/s/l.slp"
    }
    assert "not on the worker's shared storage" in out.getvalue()  # words, not outside_mounts


def test_check_resolves_with_saved_rules_only() -> None:
    from sleap_rtc.client.resolve import SavedRulesResolver

    result = result_with(missing(0, "/Volumes/s/p/a.mp4"), mounts=["/mnt/s"])
    view = CheckView.from_result(result, saved_prefixes={"/Volumes/s/p": "/mnt/s/p"})
    assert dict(SavedRulesResolver()(view).prefix_mappings) == {"/Volumes/s/p": "/mnt/s/p"}
    bare = CheckView.from_result(result)
    with pytest.raises(ResolutionFailed) as failed:
        SavedRulesResolver()(bare)
    assert failed.value.missing == ["/Volumes/s/p/a.mp4"]


def test_windows_paths_print_as_typed(tmp_path: Path) -> None:
    windows = "C:\\Users\\me\\a.mp4"
    result = result_with(missing(0, windows))
    result.videos[0].detail = f"{windows} is a Windows path, not on the worker's shared storage"
    resolver, out = scripted("c")
    resolver(CheckView.from_result(result))
    assert windows in out.getvalue() and "\\\\" not in out.getvalue()


def test_store_forgets_refused_rules(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path / "p.json")
    store.remember({"/Volumes": "/mnt", "/Volumes/s/p": "/mnt/s/p"}, worker_id="w")
    store.forget(["/Volumes"], worker_id="w")
    assert store.load("w") == {"/Volumes/s/p": "/mnt/s/p"}
