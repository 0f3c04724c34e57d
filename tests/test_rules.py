"""Semantic rules: the config matrix, ranges, paths, ids, and the rule registry."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from sleap_rtc_proto import rules
from sleap_rtc_proto.rules import (
    RULES,
    WORKER_RULES,
    Violation,
    is_absolute_any,
    is_valid_job_id,
    spec_warnings,
    validate_job_attach,
    validate_job_control,
    validate_job_submit,
    validate_path_check_request,
    validate_train_job_spec,
)
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, spec_pb2

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto" / "sleap_rtc_proto" / "v1"
YAML = "trainer_config:\n  max_epochs: 5\n"
LABELS = "/mnt/lab/labels.slp"


def ids(violations: list[Violation]) -> list[str]:
    return [v.rule_id for v in violations]


def spec(**kwargs: object) -> spec_pb2.TrainJobSpec:
    kwargs.setdefault("labels_path", LABELS)
    return spec_pb2.TrainJobSpec(**kwargs)  # type: ignore[arg-type]


# -- the config rule matrix ---------------------------------------------------------------


def test_config_paths_only_as_an_old_client_sends_is_valid() -> None:
    s = spec(config_paths=["/mnt/lab/configs/a.yaml"])
    assert not s.HasField("config_content")
    assert validate_train_job_spec(s) == []
    assert spec_warnings(s) == []


def test_config_content_only_is_valid() -> None:
    s = spec(config_content=YAML)
    assert validate_train_job_spec(s) == []
    assert spec_warnings(s) == []


def test_config_both_is_valid_and_content_wins_with_a_warning() -> None:
    s = spec(config_content=YAML, config_paths=["relative/ignored.yaml"])
    # config_paths is ignored when content is present, so its form is not checked.
    assert validate_train_job_spec(s) == []
    (warning,) = spec_warnings(s)
    assert "config_content wins" in warning


def test_config_neither_is_rejected() -> None:
    (v,) = validate_train_job_spec(spec())
    assert v.rule_id == "spec.config.required"
    assert v.code == job_pb2.VIOLATION_CODE_REQUIRED
    assert v.field == "spec.config_content"
    assert "config_paths" in v.message


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_config_content_present_but_empty(content: str) -> None:
    assert ids(validate_train_job_spec(spec(config_content=content))) == [
        "spec.config_content.empty"
    ]


def test_config_content_size_counts_utf8_bytes() -> None:
    content = "a: " + "é" * 600  # 1203 bytes, 603 characters
    assert validate_train_job_spec(spec(config_content=content), max_config_bytes=1203) == []
    (v,) = validate_train_job_spec(spec(config_content=content), max_config_bytes=1202)
    assert (v.rule_id, v.code) == ("spec.config_content.size", job_pb2.VIOLATION_CODE_TOO_LARGE)
    assert "1203 bytes" in v.message and "1202" in v.message


def test_config_paths_must_be_absolute_when_used() -> None:
    s = spec(config_paths=["/ok.yaml", "rel.yaml", ""])
    violations = validate_train_job_spec(s)
    assert ids(violations) == ["spec.config_paths.absolute"] * 2
    assert [v.field for v in violations] == ["spec.config_paths[1]", "spec.config_paths[2]"]
    assert violations[0].path == "rel.yaml"


# -- labels and overrides -------------------------------------------------------------------


def test_labels_path_required_and_slp() -> None:
    assert ids(validate_train_job_spec(spec(labels_path="", config_content=YAML))) == [
        "spec.labels_path.required"
    ]
    (v,) = validate_train_job_spec(spec(labels_path="/d/labels.h5", config_content=YAML))
    assert (v.rule_id, v.path, v.field) == (
        "spec.labels_path.slp",
        "/d/labels.h5",
        "spec.labels_path",
    )
    for ok in ("/d/x.slp", "/d/x.pkg.slp", "/d/X.SLP", "C:\\d\\x.slp"):
        assert validate_train_job_spec(spec(labels_path=ok, config_content=YAML)) == [], ok
    assert ids(validate_train_job_spec(spec(labels_path=".slp", config_content=YAML))) == [
        "spec.labels_path.slp"
    ]


def test_val_labels_path_checked_only_when_present() -> None:
    assert validate_train_job_spec(spec(config_content=YAML, val_labels_path="/d/v.slp")) == []
    assert ids(validate_train_job_spec(spec(config_content=YAML, val_labels_path=""))) == [
        "spec.val_labels_path.slp"
    ]
    assert ids(validate_train_job_spec(spec(config_content=YAML, val_labels_path="/d/v.h5"))) == [
        "spec.val_labels_path.slp"
    ]


@pytest.mark.parametrize(
    ("field", "good", "bad", "rule_id"),
    [
        ("max_epochs", [1, 100_000], [0, 100_001], "spec.max_epochs.range"),
        ("batch_size", [1, 4096], [0, 4097], "spec.batch_size.range"),
        (
            "learning_rate",
            [1e-9, 1.0],
            [0.0, -0.1, 1.5, math.inf, -math.inf, math.nan],
            "spec.learning_rate.range",
        ),
    ],
)
def test_numeric_override_ranges(field: str, good: list, bad: list, rule_id: str) -> None:
    for value in good:
        assert validate_train_job_spec(spec(config_content=YAML, **{field: value})) == [], value
    for value in bad:
        (v,) = validate_train_job_spec(spec(config_content=YAML, **{field: value}))
        assert (v.rule_id, v.code, v.field) == (
            rule_id,
            job_pb2.VIOLATION_CODE_OUT_OF_RANGE,
            f"spec.{field}",
        ), value


def test_unset_overrides_are_not_checked() -> None:
    s = spec(config_content=YAML)
    for name in ("max_epochs", "batch_size", "learning_rate", "run_name", "val_labels_path"):
        assert not s.HasField(name)
    assert validate_train_job_spec(s) == []


@pytest.mark.parametrize("name", ["run1", "mice_single-v2.0", "a" * 128, "..."])
def test_run_name_ok(name: str) -> None:
    assert validate_train_job_spec(spec(config_content=YAML, run_name=name)) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a b", "a" * 129, "C:\\x"])
def test_run_name_bad(name: str) -> None:
    assert ids(validate_train_job_spec(spec(config_content=YAML, run_name=name))) == [
        "spec.run_name.format"
    ]


# -- mappings and absolute paths --------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/mnt/lab/a.mp4",
        "C:\\Users\\a.mp4",
        "c:/data/a.mp4",
        "\\\\server\\share\\a.mp4",
        "//srv/x",
    ],
)
def test_absolute_any_accepts(path: str) -> None:
    assert is_absolute_any(path)


@pytest.mark.parametrize(
    "path", ["", "a.mp4", "./a", "C:a.mp4", "\\a.mp4", "\\\\server", "~/a", "/a\x00b", "1:\\x"]
)
def test_absolute_any_rejects(path: str) -> None:
    assert not is_absolute_any(path)


def test_spec_mappings_absolute() -> None:
    s = spec(
        config_content=YAML,
        path_mappings={"C:\\v\\a.mp4": "/mnt/a.mp4", "b.mp4": "/mnt/b.mp4", "/c.mp4": ""},
        prefix_mappings={"D:\\data": "/mnt/data", "/x": "relative"},
    )
    violations = validate_train_job_spec(s)
    assert ids(violations) == [
        "spec.path_mappings.absolute",
        "spec.path_mappings.absolute",
        "spec.prefix_mappings.absolute",
    ]
    assert {v.path for v in violations} == {"", "b.mp4", "relative"}
    assert violations[0].field.startswith("spec.path_mappings[")


def test_prefix_is_applied_to_field_paths() -> None:
    (v,) = validate_train_job_spec(spec_pb2.TrainJobSpec(config_content=YAML), prefix="job.spec")
    assert v.field == "job.spec.labels_path"


def test_many_violations_are_all_reported() -> None:
    s = spec_pb2.TrainJobSpec(max_epochs=0, batch_size=0, learning_rate=2.0, run_name="..")
    assert set(ids(validate_train_job_spec(s))) == {
        "spec.config.required",
        "spec.labels_path.required",
        "spec.max_epochs.range",
        "spec.batch_size.range",
        "spec.learning_rate.range",
        "spec.run_name.format",
    }


# -- job ids and other messages ---------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["j", "job-0001", "A.b_c-9", "9" * 64])
def test_job_id_ok(job_id: str) -> None:
    assert is_valid_job_id(job_id)


@pytest.mark.parametrize("job_id", ["", "-j", ".j", "_j", "j/k", "j k", "9" * 65, "é", "j\n"])
def test_job_id_bad(job_id: str) -> None:
    assert not is_valid_job_id(job_id)


def test_job_submit() -> None:
    good = job_pb2.JobSubmit(job_id="job-1", spec=spec(config_content=YAML))
    assert validate_job_submit(good) == []
    assert ids(validate_job_submit(job_pb2.JobSubmit(job_id="job-1"))) == [
        "job_submit.spec.required"
    ]
    bad = job_pb2.JobSubmit(job_id="../x", spec=spec_pb2.TrainJobSpec(labels_path=LABELS))
    violations = validate_job_submit(bad)
    assert ids(violations) == ["job_id.format", "spec.config.required"]
    assert violations[0].field == "job_id"
    assert violations[0].code == job_pb2.VIOLATION_CODE_INVALID
    (missing,) = validate_job_submit(job_pb2.JobSubmit(spec=spec(config_content=YAML)))
    assert (missing.rule_id, missing.code) == ("job_id.format", job_pb2.VIOLATION_CODE_REQUIRED)


def test_job_control() -> None:
    ok = job_pb2.JobControl(job_id="j1", action=job_pb2.CONTROL_ACTION_CANCEL)
    assert validate_job_control(ok) == []
    (v,) = validate_job_control(job_pb2.JobControl(job_id="j1"))
    assert (v.rule_id, v.code) == ("job_control.action.specified", job_pb2.VIOLATION_CODE_REQUIRED)
    future = job_pb2.JobControl(job_id="j1")
    future.ParseFromString(future.SerializeToString() + b"\x10\x07")  # action = 7, unknown
    assert future.action == 7
    (v,) = validate_job_control(future)
    assert (v.rule_id, v.code) == ("job_control.action.specified", job_pb2.VIOLATION_CODE_INVALID)
    assert ids(validate_job_control(job_pb2.JobControl(action=job_pb2.CONTROL_ACTION_STOP))) == [
        "job_id.format"
    ]


def test_job_attach() -> None:
    assert validate_job_attach(job_pb2.JobAttach(job_id="j1", after_sequence=3)) == []
    assert ids(validate_job_attach(job_pb2.JobAttach(job_id="bad id"))) == ["job_id.format"]


def test_path_check_request() -> None:
    ok = paths_pb2.PathCheckRequest(
        labels_path="C:\\Users\\a\\labels.slp",
        path_mappings={"C:\\v\\a.mp4": "/mnt/v/a.mp4"},
        prefix_mappings={"\\\\nas\\lab": "/mnt/lab"},
    )
    assert validate_path_check_request(ok) == []
    bad = paths_pb2.PathCheckRequest(path_mappings={"a.mp4": "/x"}, prefix_mappings={"/x": ""})
    assert ids(validate_path_check_request(bad)) == [
        "path_check.labels_path.required",
        "path_check.mappings.absolute",
        "path_check.mappings.absolute",
    ]


# -- Violation and the registry ---------------------------------------------------------------


def test_violation_to_proto() -> None:
    v = Violation(
        "spec.labels_path", "spec.labels_path.slp", job_pb2.VIOLATION_CODE_INVALID, "m", "/p"
    )
    assert v.to_proto() == job_pb2.FieldViolation(
        field="spec.labels_path",
        rule_id="spec.labels_path.slp",
        code=job_pb2.VIOLATION_CODE_INVALID,
        message="m",
        path="/p",
    )
    with pytest.raises(AttributeError):
        v.field = "x"  # type: ignore[misc]


#: Dotted strings in proto comments that are field paths, not rule ids.
NOT_RULES = {"spec.labels_path"}


def _proto_rule_ids() -> set[str]:
    found: set[str] = set()
    for proto in PROTO_DIR.glob("*.proto"):
        for line in proto.read_text().splitlines():
            comment = line.partition("//")[2]
            found.update(re.findall(r'"([a-z_]+(?:\.[a-z_]+)+)"', comment))
    return found - NOT_RULES


def test_registry_matches_proto_comments() -> None:
    documented = _proto_rule_ids()
    assert set(RULES) <= documented, "rules missing from the proto comments"
    assert documented <= set(RULES) | set(WORKER_RULES), "proto comments name unknown rules"
    assert not set(RULES) & set(WORKER_RULES)
    for rule_id, text in {**RULES, **WORKER_RULES}.items():
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", rule_id)
        assert text and "\n" not in text


def test_every_rule_can_fire() -> None:
    fired: set[str] = set()
    big = spec_pb2.TrainJobSpec(
        config_content="x" * 10,
        labels_path="/l.h5",
        val_labels_path="/v.h5",
        max_epochs=0,
        batch_size=0,
        learning_rate=0,
        run_name="..",
        path_mappings={"a": "/b"},
        prefix_mappings={"a": "/b"},
    )
    fired.update(ids(validate_train_job_spec(big, max_config_bytes=5)))
    fired.update(ids(validate_train_job_spec(spec_pb2.TrainJobSpec(config_content=" "))))
    fired.update(ids(validate_train_job_spec(spec_pb2.TrainJobSpec(config_paths=["a"]))))
    fired.update(ids(validate_train_job_spec(spec_pb2.TrainJobSpec())))
    fired.update(ids(validate_job_submit(job_pb2.JobSubmit(job_id="-"))))
    fired.update(ids(validate_job_control(job_pb2.JobControl(job_id="j"))))
    fired.update(
        ids(validate_path_check_request(paths_pb2.PathCheckRequest(path_mappings={"a": "b"})))
    )
    assert fired == set(RULES)
    assert rules.MAX_CONFIG_BYTES == 1024 * 1024
