"""TrainJobSpec (sleap_rtc.jobs.spec): the seed's dataclass, JSON, protobuf, rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.jobs import TrainJobSpec as Exported
from sleap_rtc.jobs.spec import TrainJobSpec
from sleap_rtc_proto.v1 import spec_pb2


def test_exported_from_the_package() -> None:
    assert Exported is TrainJobSpec


def test_config_content_or_config_paths_required() -> None:
    with pytest.raises(ValueError, match="config_content or config_paths"):
        TrainJobSpec(labels_path="/l.slp")
    assert TrainJobSpec(config_content="a: 1").config_paths == []
    assert TrainJobSpec(config_paths=["/c.yaml"]).config_content is None
    # An empty string is present content (the rules reject it, not the constructor).
    assert TrainJobSpec(config_content="").validate()[0].rule_id == "spec.config_content.empty"


def test_json_roundtrip_and_omitted_unset_fields() -> None:
    spec = TrainJobSpec(
        config_content="trainer_config:\n  max_epochs: 3\n",
        labels_path="/mnt/l.slp",
        path_mappings={"C:\\v\\a.mp4": "/mnt/v/a.mp4"},
        prefix_mappings={"C:\\v": "/mnt/v"},
        max_epochs=3,
        learning_rate=1e-4,
    )
    data = json.loads(spec.to_json())
    assert "val_labels_path" not in data and "config_paths" not in data
    assert data["config_content"].startswith("trainer_config")
    assert TrainJobSpec.from_json(spec.to_json()) == spec


def test_from_json_ignores_unknown_keys_and_accepts_legacy_type() -> None:
    legacy = json.dumps({
        "type": "train",
        "config_paths": ["/mnt/cfg.yaml"],
        "labels_path": "/mnt/l.slp",
        "some_future_field": {"x": 1},
        "val_labels_path": None,
    })
    spec = TrainJobSpec.from_json(legacy)
    assert spec.config_paths == ["/mnt/cfg.yaml"] and spec.val_labels_path is None


@pytest.mark.parametrize("text, match", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "must be an object"),
    ('{"type": "track", "config_content": "a: 1"}', "not a training job"),
    ('{"config_content": 5}', "config_content must be a string"),
    ('{"config_content": "a: 1", "max_epochs": "10"}', "max_epochs must be an integer"),
    ('{"config_content": "a: 1", "max_epochs": true}', "max_epochs must be an integer"),
    ('{"config_content": "a: 1", "learning_rate": "x"}', "learning_rate must be a number"),
    ('{"config_content": "a: 1", "config_paths": "/c.yaml"}', "config_paths must be a list"),
    ('{"config_content": "a: 1", "path_mappings": {"a": 1}}', "path_mappings must map"),
    ('{"labels_path": "/l.slp"}', "config_content or config_paths"),
])
def test_from_json_names_the_bad_field(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainJobSpec.from_json(text)


def test_proto_roundtrip_keeps_presence() -> None:
    spec = TrainJobSpec(config_content="a: 1", labels_path="/l.slp", run_name="r1",
                        batch_size=4, val_labels_path="/v.slp", resume_ckpt_path="/c.ckpt")
    msg = spec.to_proto()
    assert msg.HasField("config_content") and msg.HasField("run_name")
    assert not msg.HasField("max_epochs") and not msg.HasField("learning_rate")
    assert TrainJobSpec.from_proto(msg) == spec
    legacy = spec_pb2.TrainJobSpec(config_paths=["/c.yaml"], labels_path="/l.slp")
    back = TrainJobSpec.from_proto(legacy)
    assert back.config_content is None and back.config_paths == ["/c.yaml"]


def test_validate_uses_the_protocol_rules() -> None:
    spec = TrainJobSpec(
        config_content="a: 1", labels_path="labels.h5", max_epochs=0, batch_size=-1,
        learning_rate=2.0, run_name="../x", path_mappings={"rel/a.mp4": "/mnt/a.mp4"},
    )
    rules = sorted(v.rule_id for v in spec.validate())
    assert rules == sorted([
        "spec.batch_size.range",
        "spec.labels_path.slp",
        "spec.learning_rate.range",
        "spec.max_epochs.range",
        "spec.path_mappings.absolute",
        "spec.run_name.format",
    ])
    assert TrainJobSpec(config_content="a: 1", labels_path="/d/l.slp").validate() == []


_paths = st.text(alphabet="abc/_.", min_size=1, max_size=20).map(lambda s: "/" + s)


@settings(max_examples=2 * settings.default.max_examples, deadline=None)
@given(
    content=st.one_of(st.none(), st.text(max_size=50)),
    paths=st.lists(_paths, max_size=3),
    labels=_paths,
    mappings=st.dictionaries(_paths, _paths, max_size=3),
    epochs=st.one_of(st.none(), st.integers(min_value=0, max_value=2**32 - 1)),
    lr=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    name=st.one_of(st.none(), st.text(max_size=10)),
)
def test_json_and_proto_roundtrips(
    content: str | None,
    paths: list[str],
    labels: str,
    mappings: dict[str, str],
    epochs: int | None,
    lr: float | None,
    name: str | None,
) -> None:
    if content is None and not paths:
        paths = ["/c.yaml"]
    spec = TrainJobSpec(config_content=content, config_paths=paths, labels_path=labels,
                        path_mappings=mappings, max_epochs=epochs, learning_rate=lr,
                        run_name=name)
    assert TrainJobSpec.from_json(spec.to_json()) == spec
    assert TrainJobSpec.from_proto(spec.to_proto()) == spec
    spec.validate()  # never raises
