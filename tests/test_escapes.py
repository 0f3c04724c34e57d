"""The escape classes of issue 10, each tried as a hostile room member would.

Every test here passed the old worker's checks (a valid check token, then
JobAccepted) and let the trainer read a file outside every mount; each must
now end in a typed answer naming the field. Intake runs as the service wires
it: a real PathChecker, its token, and the repeated check (IntakeRecheck).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from slp_factory import make_h5_video, make_labels

from sleap_rtc.worker.intakecheck import IntakeRecheck
from sleap_rtc.worker.jobs import IntakeConfig, JobRegistry
from sleap_rtc.worker.mounts import MountPolicy
from sleap_rtc.worker.pathcheck import PathChecker
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, spec_pb2

V = job_pb2
CONFIG = "model_config:\n  backbone_config: {}\ntrainer_config:\n  max_epochs: 1\n"


@dataclass
class Lab:
    tmp: Path
    mnt: Path
    outside: Path
    policy: MountPolicy
    checker: PathChecker

    def registry(self, **kw: Any) -> JobRegistry:
        base: dict[str, Any] = dict(
            policy=self.policy,
            state_dir=self.tmp / "state",
            runs_dir=self.mnt / "runs",
            token_check=self.checker.verify_check_token,
            recheck=IntakeRecheck(self.checker),
        )
        base.update(kw)
        registry = JobRegistry(IntakeConfig(**base))
        registry.prepare()
        return registry

    def check(self, labels: str | Path, **kw: Any) -> paths_pb2.PathCheckResult:
        return self.checker.check(paths_pb2.PathCheckRequest(labels_path=str(labels), **kw))

    def submit(self, labels: str | Path, token: str, **spec: Any) -> V.JobSubmit:
        spec.setdefault("config_content", CONFIG)
        return V.JobSubmit(
            job_id="job-1",
            spec=spec_pb2.TrainJobSpec(labels_path=str(labels), **spec),
            check_token=token,
        )


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    mnt = tmp_path / "mnt"
    outside = tmp_path / "outside"
    (mnt / "data").mkdir(parents=True)
    outside.mkdir()
    policy = MountPolicy([mnt])
    return Lab(tmp_path, mnt, outside, policy, PathChecker(policy, None, token_secret=b"k" * 32))


def good_labels(lab: Lab) -> Path:
    video = make_h5_video(lab.mnt / "data" / "v.h5")
    return make_labels(lab.mnt / "data" / "labels.slp", [video])


def rejected(answer: Any) -> dict[str, str]:
    """``rule_id -> field`` of a JobRejected (fails on anything else)."""
    assert isinstance(answer, V.JobRejected), answer
    return {v.rule_id: v.field for v in answer.violations}


# --- 1. Hydra directives in config_content -------------------------------------------


def test_hydra_searchpath_and_defaults_are_refused(lab: Lab) -> None:
    labels = good_labels(lab)
    (lab.outside / "x.yaml").write_text("trainer_config: {max_epochs: 99}\n")
    config = f"hydra:\n  searchpath: [file://{lab.outside}]\ndefaults: [x, _self_]\n{CONFIG}"
    answer = lab.registry().submit(
        lab.submit(labels, lab.check(labels).check_token, config_content=config)
    )
    rules = rejected(answer)
    assert rules["config.schema.hydra"] in (
        "spec.config_content:hydra",
        "spec.config_content:defaults",
    )
    assert {v.field for v in answer.violations} >= {
        "spec.config_content:hydra",
        "spec.config_content:defaults",
    }


def test_unknown_keys_are_refused_for_sleap_nn(lab: Lab) -> None:
    labels = good_labels(lab)
    config = CONFIG + "data_config:\n  not_a_field: /etc\n"
    answer = lab.registry().submit(
        lab.submit(labels, lab.check(labels).check_token, config_content=config)
    )
    assert (
        rejected(answer)["config.schema.unknown"] == "spec.config_content:data_config.not_a_field"
    )


# --- 2. an interpolation in a path field ---------------------------------------------


def test_interpolation_in_a_path_field_is_refused(lab: Lab) -> None:
    labels = good_labels(lab)
    config = (
        "model_config:\n"
        f"  pretrained_backbone_weights: {lab.mnt}/${{trainer_config.wandb.entity}}/out/w.ckpt\n"
        "trainer_config:\n  wandb: {entity: '../..'}\n"
    )
    answer = lab.registry().submit(
        lab.submit(labels, lab.check(labels).check_token, config_content=config)
    )
    assert rejected(answer)["config.interpolation"] == (
        "spec.config_content:model_config.pretrained_backbone_weights"
    )


def test_every_path_field_is_handed_over_resolved(lab: Lab) -> None:
    labels = good_labels(lab)
    (lab.mnt / "weights").mkdir()
    (lab.mnt / "weights" / "b.ckpt").write_bytes(b"w")
    (lab.mnt / "w").symlink_to(lab.mnt / "weights")
    config = (
        f"model_config:\n  pretrained_backbone_weights: {lab.mnt}/w/../weights/b.ckpt\n"
        f"data_config:\n  test_file_path: [{lab.mnt}/w/b.ckpt]\n"
        "trainer_config:\n  max_epochs: 1\n  use_wandb: false\n"
    )
    answer, job = lab.registry().submit_job(
        lab.submit(labels, lab.check(labels).check_token, config_content=config)
    )
    assert isinstance(answer, V.JobAccepted), answer
    assert job is not None
    written = yaml.safe_load(job.config_file.read_text())
    real = str((lab.mnt / "weights" / "b.ckpt").resolve())
    assert written["model_config"]["pretrained_backbone_weights"] == real
    assert written["data_config"]["test_file_path"] == [real]
    assert written["data_config"]["train_labels_path"] == [str(labels.resolve())]


def test_path_fields_outside_the_mounts_are_refused(lab: Lab) -> None:
    labels = good_labels(lab)
    (lab.outside / "w.ckpt").write_bytes(b"w")
    config = CONFIG + f"data_config:\n  cache_img_path: {lab.outside}\n"
    config = config.replace(
        "model_config:\n", f"model_config:\n  pretrained_head_weights: {lab.outside}/w.ckpt\n"
    )
    answer = lab.registry().submit(
        lab.submit(labels, lab.check(labels).check_token, config_content=config)
    )
    fields = {v.field for v in answer.violations if v.rule_id == "worker.config_path.mounts"}
    assert fields == {
        "spec.config_content:model_config.pretrained_head_weights",
        "spec.config_content:data_config.cache_img_path",
    }


# --- 3. a video FOUND next to the labels, its original path outside -----------------


def test_video_found_next_to_labels_is_mapped_explicitly(lab: Lab) -> None:
    original = make_h5_video(lab.outside / "cam.h5")  # exists on the worker, outside
    shutil.copy(original, lab.mnt / "data" / "cam.h5")
    labels = make_labels(lab.mnt / "data" / "labels.slp", [original])
    result = lab.check(labels)
    assert result.videos[0].status == paths_pb2.PATH_STATUS_FOUND
    assert result.videos[0].worker_path == str((lab.mnt / "data" / "cam.h5").resolve())
    answer, job = lab.registry().submit_job(lab.submit(labels, result.check_token))
    assert isinstance(answer, V.JobAccepted), answer
    assert job is not None
    # sleap-io would open the original (it exists); the trainer is told the checked path.
    assert job.plan.video_path_map == ((original, result.videos[0].worker_path),)
    assert job.plan.prefix_map == ()


# --- 4. HDF5 external links, virtual datasets, external storage ----------------------


def test_external_link_in_the_labels_file_is_refused(lab: Lab) -> None:
    labels = good_labels(lab)
    with h5py.File(lab.outside / "points.h5", "w") as f:
        f["points"] = np.zeros(4)
    with h5py.File(labels, "a") as f:
        del f["points"]
        f["points"] = h5py.ExternalLink(str(lab.outside / "points.h5"), "/points")
    result = lab.check(labels)
    assert result.labels.status == paths_pb2.PATH_STATUS_INVALID
    assert "external link" in result.labels.detail and "'points'" in result.labels.detail
    assert not result.check_token
    answer = lab.registry(require_check_token=False).submit(lab.submit(labels, ""))
    assert "worker.check_token.stale" in rejected(answer)  # intake refuses it too


@pytest.mark.parametrize("kind", ["external link", "virtual dataset", "external storage"])
def test_hdf5_video_reading_an_outside_file_is_refused(lab: Lab, kind: str) -> None:
    video = lab.mnt / "data" / "v.h5"
    frames = np.zeros((2, 8, 8, 1), np.uint8)
    with h5py.File(lab.outside / "frames.h5", "w") as f:
        f["video"] = frames
    (lab.outside / "raw.bin").write_bytes(frames.tobytes())
    with h5py.File(video, "w") as f:
        if kind == "external link":
            f["video"] = h5py.ExternalLink(str(lab.outside / "frames.h5"), "/video")
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
            layout[:] = h5py.VirtualSource(str(lab.outside / "frames.h5"), "video", frames.shape)
            f.create_virtual_dataset("video", layout)
        else:
            f.create_dataset(
                "video",
                shape=frames.shape,
                dtype=frames.dtype,
                external=[(str(lab.outside / "raw.bin"), 0, frames.nbytes)],
            )
    labels = make_labels(lab.mnt / "data" / "labels.slp", [str(video)])
    result = lab.check(labels)
    assert result.videos[0].status == paths_pb2.PATH_STATUS_INVALID, result
    assert kind in result.videos[0].detail and "outside" in result.videos[0].detail
    assert not result.check_token


# --- 5. a symlink re-pointed after a passing check -----------------------------------


def test_symlink_repointed_after_the_check_is_refused(lab: Lab) -> None:
    real = make_h5_video(lab.mnt / "data" / "real.h5")
    shutil.copy2(real, lab.outside / "real.h5")  # same size and mtime
    link = lab.mnt / "data" / "cam.h5"
    link.symlink_to(real)
    labels = make_labels(lab.mnt / "data" / "labels.slp", [str(link)])  # no mapping at all
    result = lab.check(labels)
    assert result.check_token, result
    link.unlink()
    link.symlink_to(lab.outside / "real.h5")  # the checked target is untouched
    answer = lab.registry().submit(lab.submit(labels, result.check_token))
    assert rejected(answer)["worker.check_token.stale"] == "check_token"
    assert any(w in answer.violations[0].message for w in ("outside", "out of", "link"))


def test_symlink_repointed_inside_the_mounts_is_refused_too(lab: Lab) -> None:
    """Still inside, but not the file the check saw: the token binds the links on the way."""
    real = make_h5_video(lab.mnt / "data" / "real.h5")
    other = make_h5_video(lab.mnt / "data" / "other.h5")
    link = lab.mnt / "data" / "cam.h5"
    link.symlink_to(real)
    labels = make_labels(lab.mnt / "data" / "labels.slp", [str(link)])
    token = lab.check(labels).check_token
    link.unlink()
    link.symlink_to(other)
    answer = lab.registry().submit(lab.submit(labels, token))
    assert rejected(answer)["worker.check_token.stale"] == "check_token"
    assert "a link on the way changed" in answer.violations[0].message


def test_same_size_same_mtime_swap_is_refused(lab: Lab) -> None:
    labels = good_labels(lab)
    token = lab.check(labels).check_token
    video = lab.mnt / "data" / "v.h5"
    twin = lab.mnt / "data" / "twin.h5"
    shutil.copy2(video, twin)
    os.replace(twin, video)  # another inode, same size and mtime
    answer = lab.registry().submit(lab.submit(labels, token))
    assert rejected(answer)["worker.check_token.stale"] == "check_token"


# --- 6. very long paths -----------------------------------------------------------


@pytest.mark.parametrize("field", ["labels_path", "resume_ckpt_path", "val_labels_path"])
def test_ten_thousand_character_paths_are_typed_rejections(lab: Lab, field: str) -> None:
    labels = good_labels(lab)
    long = f"{lab.mnt}/" + "a" * 10_000
    spec: dict[str, Any] = {field: long}
    submit = lab.submit(spec.pop("labels_path", labels), lab.check(labels).check_token, **spec)
    answer = lab.registry().submit(submit)
    assert isinstance(answer, V.JobRejected), answer
    assert any(v.field == f"spec.{field}" for v in answer.violations), answer
    result = lab.check(long)
    assert result.labels.status == paths_pb2.PATH_STATUS_INVALID
    assert "too long" in result.labels.detail or "over" in result.labels.detail


# --- 7. reporting services ---------------------------------------------------------


def test_wandb_is_refused_unless_the_operator_allows_it(lab: Lab) -> None:
    labels = good_labels(lab)
    config = CONFIG + "  use_wandb: true\n"
    token = lab.check(labels).check_token
    answer = lab.registry().submit(lab.submit(labels, token, config_content=config))
    assert rejected(answer)["config.reporting"] == "spec.config_content:trainer_config.use_wandb"
    answer, job = lab.registry(allow_reporting=True).submit_job(
        lab.submit(labels, token, config_content=config)
    )
    assert isinstance(answer, V.JobAccepted) and job is not None
    assert yaml.safe_load(job.config_file.read_text())["trainer_config"]["use_wandb"] is True


def test_reporting_is_written_off_in_the_canonical_config(lab: Lab) -> None:
    labels = good_labels(lab)
    answer, job = lab.registry().submit_job(lab.submit(labels, lab.check(labels).check_token))
    assert isinstance(answer, V.JobAccepted) and job is not None
    assert yaml.safe_load(job.config_file.read_text())["trainer_config"]["use_wandb"] is False
