"""The shared mapping model: spellings, exact and prefix rules, refusals, the lexical mount test.

The client (views, resolve) and the worker (pathcheck, suggest, validate) import
these same functions; the properties below are what both sides rely on.
"""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.client.views import saved_rule_problem
from sleap_rtc.paths.model import (
    ClientPath,
    Mapper,
    apply_prefixes,
    has_prefix,
    inside_roots,
    mapping_problems,
    original_problem,
    shown,
    target_problem,
)

names = st.text(alphabet="abcXYZ09_-. ", min_size=1, max_size=6).filter(
    lambda s: s.strip(". ") == s and s not in (".", "..")
)
parts = st.lists(names, min_size=1, max_size=5)


def posix(p: list[str]) -> str:
    return "/" + "/".join(p)


def windows(p: list[str], sep: str = "\\", drive: str = "C:") -> str:
    return drive + sep + sep.join(p)


@pytest.mark.parametrize(
    ("text", "anchor", "windows_form"),
    [
        ("/Users/me/a.mp4", "/", False),
        ("C:\\Users\\me\\a.mp4", "C:", True),
        ("c:/Users/me/a.mp4", "c:", True),
        ("\\\\server\\share\\a.mp4", "//", True),
        ("relative/a.mp4", "", False),
    ],
)
def test_spellings(text: str, anchor: str, windows_form: bool) -> None:
    cp = ClientPath.parse(text)
    assert (cp.anchor, cp.windows, cp.name) == (anchor, windows_form, "a.mp4")


@settings(max_examples=2 * settings.default.max_examples)
@given(parts, parts, st.sampled_from(["/", "\\"]), st.sampled_from(["C:", "c:", "D:"]))
def test_windows_rules_ignore_case_and_separator(
    rule: list[str], rest: list[str], sep: str, drive: str
) -> None:
    path = windows(rule + rest, sep, drive)
    key = windows([p.swapcase() for p in rule], "/" if sep == "\\" else "\\", drive.swapcase())
    assert has_prefix(path, key)
    assert apply_prefixes(path, {key: "/mnt/share/x"}) == posixpath.join("/mnt/share/x", *rest)


@settings(max_examples=2 * settings.default.max_examples)
@given(parts, parts, parts)
def test_posix_rules_are_exact_and_on_component_boundaries(
    rule: list[str], rest: list[str], other: list[str]
) -> None:
    path = posix(rule + rest)
    assert apply_prefixes(path, {posix(rule): "/mnt/s"}) == posixpath.join("/mnt/s", *rest)
    assert apply_prefixes(path, {posix(rule) + "/": "/mnt/s"}) == posixpath.join("/mnt/s", *rest)
    glued = posix([*rule[:-1], rule[-1] + "z", *rest])  # /a/bz is not under /a/b
    assert not has_prefix(glued, posix(rule))
    if rule[0].swapcase() != rule[0]:
        assert not has_prefix(path, posix([rule[0].swapcase(), *rule[1:]]))


@settings(max_examples=2 * settings.default.max_examples)
@given(st.lists(parts, min_size=1, max_size=4), parts)
def test_longest_rule_wins_and_exact_beats_prefix(rules: list[list[str]], rest: list[str]) -> None:
    table = {posix(r): f"/mnt/s/{i}" for i, r in enumerate(rules)}
    path = posix(rules[0] + rest)
    hits = [r for r in table if has_prefix(path, r)]
    best = max(hits, key=lambda r: len(ClientPath.parse(r).parts))
    rest_parts = ClientPath.parse(path).parts[len(ClientPath.parse(best).parts) :]
    want = posixpath.join(table[best], *rest_parts) if rest_parts else table[best]
    mapper = Mapper({}, table)
    assert mapper.find(ClientPath.parse(path)) == want
    assert mapper.which(ClientPath.parse(path)) == ("prefix", best)
    exact = Mapper({path: "/mnt/s/exact.mp4"}, table)
    assert exact.find(ClientPath.parse(path)) == "/mnt/s/exact.mp4"
    assert exact.which(ClientPath.parse(path)) == ("exact", path)


@pytest.mark.parametrize(
    ("original", "worker", "words"),
    [
        ("/Users/me", "/mnt/share/../../etc", "climbs out"),
        ("/Users/me/../x", "/mnt/share", "contains '..'"),
        ("relative/x", "/mnt/share", "not an absolute path"),
        ("/Users/me", "C:\\data", "Windows path"),
        ("/Users/me", "\\\\server\\share", "Windows path"),
        ("/Users/me", "/mnt/share\\x", "backslash"),
        ("/Users/me", "mnt/share", "not an absolute worker path"),
        ("C:\\Users/me", "/mnt/share", "mixes / and \\"),
        ("/Users\u2215me", "/mnt/share", "division slash"),
        ("/Users/me", "/mnt\uff0fshare", "fullwidth slash"),
        ("/Users/me", "/mnt/sh\u200bare", "zero-width space"),
        ("/Users/me", "/mnt/share\x00", "NUL"),
        ("", "/mnt/share", "empty"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(original: str, worker: str, words: str) -> None:
    (problem,) = mapping_problems({}, {original: worker})
    assert words in problem.reason
    assert str(problem).startswith("prefix rule ")
    # The client refuses the same saved rule before sending it.
    refusal = saved_rule_problem(original, worker, ["/mnt/share"])
    assert refusal is not None and words in refusal


def test_conflicting_spellings_of_one_rule_are_refused() -> None:
    problems = mapping_problems({}, {"C:\\Data": "/mnt/s/a", "c:/data/": "/mnt/s/b"})
    assert len(problems) == 1 and "conflicts with" in problems[0].reason
    assert mapping_problems({}, {"C:\\Data": "/mnt/s/a", "c:/data/": "/mnt/s/a/"}) == []


def test_a_good_rule_has_no_problem() -> None:
    assert mapping_problems({"C:\\v\\a.mp4": "/mnt/s/a.mp4"}, {"/Users/me": "/mnt/s"}) == []
    assert original_problem("\\\\server\\share\\x") is None
    assert target_problem("/mnt/s/x y (1)") is None


@settings(max_examples=2 * settings.default.max_examples)
@given(parts, st.lists(names, max_size=3))
def test_inside_roots_is_lexical_and_component_wise(root: list[str], rest: list[str]) -> None:
    base = posix(root)
    assert inside_roots(posixpath.join(base, *rest) if rest else base, [base])
    assert not inside_roots(base + "z", [base])
    assert not inside_roots(posixpath.join(base, "..", *rest), [base])
    assert not inside_roots("C:\\" + base, [base])


def test_the_readme_rules() -> None:
    mounts = ["/mnt/lab-share"]
    assert saved_rule_problem("/Volumes", "/mnt", mounts) is not None  # the bad rule
    assert saved_rule_problem("/Volumes/lab-share/p", "/mnt/lab-share/p", mounts) is None
    assert saved_rule_problem("/Volumes", "/mnt", []) is None  # undisclosed: the check decides


def test_paths_are_shown_as_typed() -> None:
    assert shown("C:\\Users\\me\\a.mp4") == "C:\\Users\\me\\a.mp4"
    assert shown("/a\x00b") == repr("/a\x00b")  # invisible characters are made visible
