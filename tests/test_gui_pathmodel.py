"""The PathResolutionDialog's model, without Qt (hypothesis): only the worker marks a
row found, Continue exactly when the worker found everything, rules fill what they cover."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.client.views import (
    CheckView,
    LabelsView,
    PrefixView,
    SuggestionView,
    VideoView,
)
from sleap_rtc.gui.pathmodel import PathModel, suggestion_text

STATUSES = ("found", "missing", "outside_mounts", "unreadable", "embedded")
folders = st.sampled_from(["/Users/me/data", "/Volumes/lab/fly", "/home/ann/x"])
names = st.text("abcdef", min_size=1, max_size=5).map(lambda n: n + ".mp4")


@st.composite
def views(draw: st.DrawFn) -> CheckView:
    labels_ok = draw(st.booleans())
    labels = LabelsView("/Users/me/l.slp", "/mnt/l.slp" if labels_ok else "",
                        "found" if labels_ok else "missing")
    count = draw(st.integers(0, 5))
    videos = []
    for i in range(count):
        folder, name = draw(folders), draw(names)
        status = draw(st.sampled_from(STATUSES))
        sugg = tuple(SuggestionView(f"/mnt/{j}/{name}", "same_name", draw(st.floats(0, 1)))
                     for j in range(draw(st.integers(0, 2))))
        videos.append(VideoView(i, f"{folder}/{name}", f"/mnt/{name}" if status == "found"
                                else "", status, suggestions=sugg))
    rules = tuple(PrefixView(f, "/mnt/lab") for f in draw(st.lists(folders, max_size=2,
                                                                     unique=True)))
    return CheckView(labels=labels, videos=tuple(videos), prefix_proposals=rules)


@settings()
@given(views(), st.lists(st.tuples(st.integers(0, 6), st.text(max_size=12)), max_size=6))
def test_edits_never_mark_a_row_found_and_continue_follows_the_worker(
    view: CheckView, edits: list[tuple[int, str]]
) -> None:
    model = PathModel(view)
    before = [r.found for r in model.rows]
    for row, text in edits:
        if row < len(model.rows):
            model.set_choice(row, text)
    assert [r.found for r in model.rows] == before
    assert model.can_continue == view.passed
    # typed paths go to the worker as exact mappings of missing rows only
    res = model.resolution()
    missing = {r.original_path for r in model.rows if not r.found}
    assert set(res.path_mappings) <= missing


@settings()
@given(views())
def test_apply_to_all_fills_exactly_the_missing_rows_under_the_folder(view: CheckView) -> None:
    model = PathModel(view)
    for rule in model.rules:
        count = model.apply_rule(rule.original_prefix, rule.worker_prefix)
        under = [r for r in model.rows if not r.found
                 and r.original_path.startswith(rule.original_prefix + "/")]
        assert count == len(under)
        for r in under:
            assert r.choice == rule.worker_prefix + r.original_path[len(rule.original_prefix):]
            assert r.rule == rule.original_prefix
        if count:
            assert model.resolution().prefix_mappings.get(rule.original_prefix) == \
                rule.worker_prefix


@settings()
@given(views(), views())
def test_a_new_check_keeps_choices_of_rows_still_missing(first: CheckView,
                                                         second: CheckView) -> None:
    model = PathModel(first)
    for i in range(len(model.rows)):
        model.set_choice(i, f"/typed/{i}")
    typed = {r.original_path: r.choice for r in model.rows if not r.found}
    model.update(second)
    for row in model.rows:
        if not row.found and row.original_path in typed and row.kind == "video":
            assert row.choice == typed[row.original_path]
    assert model.can_continue == second.passed


def test_a_picked_suggestion_reads_back_as_its_path() -> None:
    s = SuggestionView("/mnt/a.mp4", "same_name_and_size", 0.83)
    view = CheckView(labels=LabelsView("/l.slp", "/l.slp", "found"),
                     videos=(VideoView(0, "/old/a.mp4", "", "missing", suggestions=(s,)),))
    model = PathModel(view)
    model.set_choice(1, suggestion_text(s))
    assert suggestion_text(s) == "/mnt/a.mp4  (same name and size, 0.83)"
    assert model.resolution().path_mappings == {"/old/a.mp4": "/mnt/a.mp4"}
    assert not model.can_continue  # the choice alone is not the worker's answer
    model.update(CheckView(labels=view.labels, videos=(
        VideoView(0, "/old/a.mp4", "/mnt/a.mp4", "found"),)))
    assert model.can_continue and model.resolution().empty
