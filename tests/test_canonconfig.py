"""The canonical config: sleap-nn's schema from its own classes, every path field resolved."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sleap_rtc.worker.canonconfig import RULES, canonicalize
from sleap_rtc.worker.mounts import MountPolicy
from sleap_rtc.worker.sleapnn_paths import (
    FIELD_KINDS,
    FieldKind,
    Leaf,
    _from_table,
    runs_sleap_nn,
    schema,
    sleap_nn_version,
    string_fields,
)


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    (tmp_path / "mnt" / "w").mkdir(parents=True)
    (tmp_path / "mnt" / "w" / "b.ckpt").write_bytes(b"w")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.ckpt").write_bytes(b"w")
    return tmp_path / "mnt"


def test_every_string_field_of_the_installed_sleap_nn_is_classified() -> None:
    """A new sleap-nn field that can hold a path makes this fail: classify it first."""
    pytest.importorskip("sleap_nn")
    derived = string_fields()
    assert derived == set(FIELD_KINDS), (
        f"unclassified: {sorted(derived - set(FIELD_KINDS))}; "
        f"gone from sleap-nn: {sorted(set(FIELD_KINDS) - derived)}"
    )
    assert sleap_nn_version() == "0.3.5"


def test_the_schema_is_sleap_nns_own() -> None:
    pytest.importorskip("sleap_nn")
    tree = schema()
    assert set(tree) == {
        "data_config", "model_config", "trainer_config",
        "name", "description", "sleap_nn_version", "filename",
    }  # fmt: skip
    assert "hydra" not in tree and "defaults" not in tree
    assert isinstance(tree["trainer_config"], dict)
    assert tree["trainer_config"]["use_wandb"] == Leaf(False)
    assert FIELD_KINDS["model_config.pretrained_backbone_weights"] is FieldKind.FILE
    assert FIELD_KINDS["trainer_config.ckpt_dir"] is FieldKind.WORKER


def test_the_table_stands_in_for_a_worker_without_sleap_nn() -> None:
    assert string_fields(_from_table()) == set(FIELD_KINDS)


def test_which_trainer_commands_run_sleap_nn() -> None:
    assert runs_sleap_nn(["sleap-nn", "train"])
    assert runs_sleap_nn(["/opt/venv/bin/sleap-nn", "train"])
    assert runs_sleap_nn(["python", "-m", "sleap_nn.cli", "train"])
    assert not runs_sleap_nn(["python", "tests/support/fake_sleap_nn.py", "train"])


def rules_of(data: dict, mnt: Path, **kw: object) -> dict[str, str]:
    out = canonicalize(data, MountPolicy([mnt]), **kw)  # type: ignore[arg-type]
    assert all(p.rule_id in RULES for p in out.problems)
    return {p.key: p.rule_id for p in out.problems}


def test_hydra_unknown_and_interpolation(mnt: Path) -> None:
    assert rules_of({"hydra": {"run": {"dir": "/x"}}, "defaults": ["a"]}, mnt) == {
        "hydra": "config.schema.hydra",
        "defaults": "config.schema.hydra",
    }
    assert rules_of({"model_config": {"nope": 1}}, mnt) == {
        "model_config.nope": "config.schema.unknown"
    }
    assert rules_of({"name": "${oc.env:HOME}"}, mnt) == {"name": "config.interpolation"}
    assert rules_of({"data_config": {"skeletons": [{"n": "${x}"}]}}, mnt) == {
        "data_config.skeletons": "config.interpolation"
    }
    assert rules_of({"trainer_config": "flat"}, mnt) == {"trainer_config": "config.schema.type"}


def test_non_strict_passes_a_trainers_own_sections_but_not_hydra(mnt: Path) -> None:
    assert (
        rules_of({"fake": {"mode": "ok"}, "model_config": {"backbone": "x"}}, mnt, strict=False)
        == {}
    )
    assert rules_of({"hydra": {}}, mnt, strict=False) == {"hydra": "config.schema.hydra"}
    assert rules_of({"fake": {"p": "${x}"}}, mnt, strict=False) == {"fake": "config.interpolation"}


def test_numbers_as_text_and_text_in_numbers(mnt: Path) -> None:
    assert rules_of({"trainer_config": {"optimizer": {"lr": "1e-4"}}}, mnt) == {}
    assert rules_of({"trainer_config": {"max_epochs": "many"}}, mnt) == {
        "trainer_config.max_epochs": "config.schema.type"
    }


def test_paths_resolved_worker_fields_replaced(mnt: Path) -> None:
    (mnt / "link").symlink_to(mnt / "w")
    out = canonicalize(
        {
            "model_config": {
                "pretrained_head_weights": f"{mnt}/link/b.ckpt",
                "backbone_config": {"convnext": {"pre_trained_weights": "ConvNeXt_Tiny_Weights"}},
            },
            "trainer_config": {
                "ckpt_dir": "/etc",
                "run_name": "../../x",
                "resume_ckpt_path": "/etc/passwd",
            },
            "data_config": {"train_labels_path": ["/etc/passwd"], "cache_img_path": f"{mnt}/c"},
        },
        MountPolicy([mnt]),
        labels=f"{mnt}/labels.slp",
    )
    assert out.problems == []
    data = yaml.safe_load(out.to_yaml())
    assert data["model_config"]["pretrained_head_weights"] == str((mnt / "w" / "b.ckpt").resolve())
    assert data["model_config"]["backbone_config"]["convnext"]["pre_trained_weights"] == (
        "ConvNeXt_Tiny_Weights"
    )
    assert data["trainer_config"] == {"resume_ckpt_path": None, "use_wandb": False}
    assert data["data_config"]["train_labels_path"] == [f"{mnt}/labels.slp"]
    assert data["data_config"]["val_labels_path"] is None
    assert data["data_config"]["cache_img_path"] == str((mnt / "c").resolve())


@pytest.mark.parametrize(
    "value, rule",
    [
        ("../out/b.ckpt", "worker.config_path.mounts"),
        ("C:\\weights\\b.ckpt", "worker.config_path.mounts"),
        ("/nope/b.ckpt", "worker.config_path.mounts"),
    ],
)
def test_fetch_names_that_look_like_paths(mnt: Path, value: str, rule: str) -> None:
    data = {"model_config": {"backbone_config": {"pretrained": {"model_name": value}}}}
    assert rules_of(data, mnt) == {"model_config.backbone_config.pretrained.model_name": rule}


def test_weights_outside_missing_or_not_files(mnt: Path) -> None:
    def one(value: str) -> str:
        found = rules_of({"model_config": {"pretrained_backbone_weights": value}}, mnt)
        return found["model_config.pretrained_backbone_weights"]

    assert one(f"{mnt.parent}/out/b.ckpt") == "worker.config_path.mounts"
    assert one(f"{mnt}/w/missing.ckpt") == "worker.config_path.file"
    assert one(f"{mnt}/w") == "worker.config_path.file"
    assert one(f"{mnt}/" + "x" * 10_000) == "worker.config_path.mounts"
    assert one("relative.ckpt") == "worker.config_path.mounts"


def test_reporting_needs_the_operator(mnt: Path) -> None:
    data = {"trainer_config": {"use_wandb": True, "wandb": {"entity": "lab"}}}
    assert rules_of(data, mnt) == {"trainer_config.use_wandb": "config.reporting"}
    out = canonicalize(data, MountPolicy([mnt]), allow_reporting=True)
    assert out.problems == [] and out.data["trainer_config"]["use_wandb"] is True
