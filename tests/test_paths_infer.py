"""Rule inference and proposal order (the shared model's :mod:`sleap_rtc.paths.infer`)."""

from __future__ import annotations

import posixpath

from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.paths.infer import Rule, infer_rules, order_proposals, specific_rule
from sleap_rtc.paths.model import ClientPath, Mapper, inside_roots

names = st.text(alphabet="abcXY09_", min_size=1, max_size=5)


@settings(max_examples=2 * settings.default.max_examples)
@given(
    st.lists(names, min_size=1, max_size=4),
    st.lists(names, min_size=0, max_size=3),
    st.lists(names, min_size=1, max_size=3),
    st.booleans(),
)
def test_every_inferred_rule_explains_the_evidence_and_stays_in_the_mounts(
    client_head: list[str], tail: list[str], mount: list[str], win: bool
) -> None:
    name = "v.mp4"
    original = (
        "C:\\" + "\\".join([*client_head, *tail, name])
        if win
        else "/" + "/".join(["laptop", *client_head, *tail, name])
    )
    root = "/" + "/".join(mount)
    worker = posixpath.join(root, *tail, name)
    cp = ClientPath.parse(original)
    rules = infer_rules(cp, worker, roots=[root])
    assert rules, (original, worker)
    assert [r.n for r in rules] == sorted((r.n for r in rules), reverse=True)  # specific first
    for rule in rules:
        assert rule.apply(cp) == worker
        assert inside_roots(rule.worker, [root])  # the worker accepts it at submit
        # The client applies the rule the same way the worker does.
        assert Mapper({}, {rule.original: rule.worker}).find(cp) == worker
    assert specific_rule(original, worker, [root]) == (rules[0].original, rules[0].worker)


def test_windows_evidence_proposes_the_specific_rule_first() -> None:
    """The issue's case: three videos in C:\\Users\\me\\lab\\videos."""
    cp = ClientPath.parse("C:\\Users\\me\\lab\\videos\\a.mp4")
    rules = infer_rules(cp, "/mnt/share/lab/videos/a.mp4", roots=["/mnt/share"])
    assert [(r.original, r.worker) for r in rules] == [
        ("C:\\Users\\me\\lab\\videos", "/mnt/share/lab/videos"),
        ("C:\\Users\\me\\lab", "/mnt/share/lab"),
        ("C:\\Users\\me", "/mnt/share"),
    ]
    ordered = order_proposals([(r, [0, 1, 2], 3) for r in reversed(rules)], 5)
    assert [e[0] for e in ordered] == rules


def test_a_rule_reaching_above_the_mount_is_never_inferred() -> None:
    cp = ClientPath.parse("/Volumes/lab-share/p/a.mp4")
    rules = infer_rules(cp, "/mnt/lab-share/p/a.mp4", roots=["/mnt/lab-share"])
    assert ("/Volumes", "/mnt") not in [(r.original, r.worker) for r in rules]
    assert [(r.original, r.worker) for r in rules] == [
        ("/Volumes/lab-share/p", "/mnt/lab-share/p"),
        ("/Volumes/lab-share", "/mnt/lab-share"),
    ]
    assert specific_rule("/Volumes/a.mp4", "/mnt/a.mp4", ["/mnt/lab-share"]) is None


def _rule(original: str, worker: str) -> Rule:
    cp = ClientPath.parse(original + "/x")
    return Rule(cp.key(len(cp.parts) - 1), len(cp.parts) - 1, original, worker)


def test_order_keeps_every_rule_that_adds_a_video_before_alternatives() -> None:
    specific = _rule("/u/me/lab/a", "/m/lab/a")
    broad = _rule("/u/me/lab", "/m/lab")
    other = _rule("/u/me/other", "/m/other")
    scored = [(broad, [0, 1], 2), (specific, [0, 1], 2), (other, [2], 1)]
    assert [e[0] for e in order_proposals(scored, 5)] == [specific, broad, other]
    assert [e[0] for e in order_proposals(scored, 2)] == [specific, other]  # no room to spare
    wider = _rule("/u/me", "/m")
    first = order_proposals([(specific, [0], 1), (wider, [0, 1, 2], 3)], 5)
    assert [e[0] for e in first] == [wider]  # it resolves more: the specific one adds nothing
