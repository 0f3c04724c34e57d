"""config_yaml.py: safe parsing of config_content, every refusal naming its line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.worker.config_yaml import ConfigYamlError, parse_config_yaml
from sleap_rtc_proto.v1 import job_pb2


def refusal(text: str, **kw: int) -> ConfigYamlError:
    with pytest.raises(ConfigYamlError) as info:
        parse_config_yaml(text, **kw)
    return info.value


def test_plain_config_parses() -> None:
    text = (
        "model_config:\n  backbone_config:\n    unet: {filters: 8}\ntrainer_config:\n  lr: 1.0e-4\n"
    )
    data = parse_config_yaml(text)
    assert data["model_config"]["backbone_config"]["unet"]["filters"] == 8
    assert data["trainer_config"]["lr"] == 1e-4


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: !!python/object/apply:os.system ['echo hi']\n", 2),
        ("a: !foo x\n", 1),
        ("a: 1\nb:\n  c: ! x\n", 3),
        ("a: !!str 1\n", 1),
        ("--- !!map\na: 1\n", 1),
        ("a: !!binary aGk=\n", 1),
        ("a:\n  - 1\n  - !!set {x}\n", 3),
    ],
)
def test_any_tag_is_refused_with_its_line(text: str, line: int) -> None:
    exc = refusal(text)
    assert exc.rule_id == "config.yaml.tag"
    assert exc.line == line
    assert f"line {line}" in exc.message


def test_billion_laughs_is_refused() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    exc = refusal("\n".join(lines) + "\n")
    assert exc.rule_id == "config.yaml.alias"
    assert exc.line == 3  # the 17th alias is on line 3


def test_a_few_aliases_are_fine() -> None:
    data = parse_config_yaml("base: &b {x: 1}\nuse: *b\n")
    assert data["use"] == {"x": 1}
    assert refusal("base: &b {x: 1}\nuse: *b\n", max_aliases=0).rule_id == "config.yaml.alias"


def test_deep_nesting_is_refused() -> None:
    exc = refusal("a: " + "[" * 100 + "]" * 100 + "\n")
    assert exc.rule_id == "config.yaml.depth" and exc.line == 1


@pytest.mark.parametrize(
    ("text", "rule", "line"),
    [
        ("- a\n- b\n", "config.yaml.mapping", 1),
        ("just a string\n", "config.yaml.mapping", 1),
        ("", "config.yaml.mapping", 1),
        ("# only a comment\n", "config.yaml.mapping", 1),
        ("1: x\n", "config.yaml.mapping", 1),
        ("a: 1\n---\nb: 2\n", "config.yaml.documents", 2),
        ("a: 1\nb: 2\na: 3\n", "config.yaml.duplicate_key", 3),
        ("a:\n  x: 1\n  x: 2\n", "config.yaml.duplicate_key", 3),
        ("a: 1\n  b: 2\n", "config.yaml.syntax", 2),
        ("a: [1, 2\nb: 3\n", "config.yaml.syntax", 2),
        ("a: 'unterminated\n", "config.yaml.syntax", 2),
        ("\ta: 1\n", "config.yaml.syntax", 1),
    ],
)
def test_bad_shapes_name_rule_and_line(text: str, rule: str, line: int) -> None:
    exc = refusal(text)
    assert exc.rule_id == rule, exc.message
    assert exc.line == line, exc.message


def test_size_cap_in_bytes() -> None:
    text = "a: " + "é" * 40 + "\n"  # 84 bytes, 44 characters
    exc = refusal(text, max_bytes=60)
    assert exc.rule_id == "config.yaml.size"
    violation = exc.to_violation()
    assert violation.code == job_pb2.VIOLATION_CODE_TOO_LARGE
    assert parse_config_yaml(text, max_bytes=84)["a"] == "é" * 40


def test_violation_carries_line_and_bad_config() -> None:
    violation = refusal("a: 1\nb: !x y\n").to_violation(field="spec.config_content")
    assert violation.code == job_pb2.VIOLATION_CODE_BAD_CONFIG
    assert violation.line == 2 and violation.field == "spec.config_content"
    assert violation.rule_id == "config.yaml.tag"


@settings(max_examples=3 * settings.default.max_examples, deadline=None)
@given(st.text(max_size=300))
def test_random_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        data = parse_config_yaml(text)
    except ConfigYamlError as exc:
        assert exc.message and exc.line >= 0
    else:
        assert isinstance(data, dict)
