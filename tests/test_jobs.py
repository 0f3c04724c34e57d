"""jobs.py: intake (rules, temp config, YAML, mounts, tokens), idempotency, history."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from slp_factory import make_h5_video, make_labels

from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobs import IntakeConfig, JobRegistry, spec_hash
from sleap_rtc.worker.mounts import MountPolicy
from sleap_rtc.worker.pathcheck import PathChecker
from sleap_rtc.worker.trainplan import build_command
from sleap_rtc.worker.worker_class import handle_job_submit, spec_from_json
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import error_pb2, job_pb2, paths_pb2, progress_pb2, spec_pb2

V = job_pb2
P = progress_pb2
CONFIG = "model_config:\n  backbone_config: {}\ntrainer_config:\n  max_epochs: 1\n"


@dataclass
class World:
    tmp: Path
    mnt: Path
    state: Path
    labels: Path
    video: str
    checker: PathChecker
    policy: MountPolicy

    def registry(self, **kw: Any) -> JobRegistry:
        base: dict[str, Any] = dict(
            policy=self.policy,
            state_dir=self.state,
            runs_dir=self.mnt / "runs",
            token_check=self.checker.verify_check_token,
        )
        base.update(kw)
        registry = JobRegistry(IntakeConfig(**base))
        registry.prepare()
        return registry

    def token(self) -> str:
        result = self.checker.check(paths_pb2.PathCheckRequest(labels_path=str(self.labels)))
        assert result.check_token, result
        return result.check_token

    def submit(self, job_id: str = "job-1", token: str | None = None, **spec: Any) -> V.JobSubmit:
        spec.setdefault("config_content", CONFIG)
        spec.setdefault("labels_path", str(self.labels))
        return V.JobSubmit(
            job_id=job_id,
            spec=spec_pb2.TrainJobSpec(**spec),
            check_token=self.token() if token is None else token,
        )

    def configs(self) -> list[Path]:
        return sorted((self.state / "configs").iterdir())


@pytest.fixture
def world(tmp_path: Path) -> World:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "v.h5")
    labels = make_labels(mnt / "data" / "labels.slp", [video])
    policy = MountPolicy([mnt])
    checker = PathChecker(policy, None, token_secret=b"k" * 32)
    return World(tmp_path, mnt, tmp_path / "state", labels, video, checker, policy)


def rule_ids(answer: Any) -> set[str]:
    assert isinstance(answer, V.JobRejected), answer
    return {v.rule_id for v in answer.violations}


def codes(answer: Any) -> set[int]:
    assert isinstance(answer, V.JobRejected), answer
    return {v.code for v in answer.violations}


def done(completed: bool = True, code: int = 0) -> RunResult:
    return RunResult(completed=completed, failure_code=code, exit_code=0 if completed else 1)


# --- acceptance and the private temp config -----------------------------------------


def test_accept_writes_private_temp_config_outside_mounts(world: World) -> None:
    registry = world.registry()
    answer, job = registry.submit_job(world.submit())
    assert isinstance(answer, V.JobAccepted) and job is not None
    assert not answer.duplicate
    cfg = job.config_file
    written = yaml.safe_load(cfg.read_text())  # the canonical config, not the client's text
    assert written["model_config"] == {"backbone_config": {}}
    assert written["trainer_config"]["max_epochs"] == 1
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700
    assert cfg.parent == world.state / "configs"
    assert not world.policy.contains(cfg)
    assert cfg.suffix == ".yaml"
    assert job.plan.labels_path == str(world.labels.resolve())
    assert answer.run_dir == str(job.run_dir)
    assert job.run_dir.parent.is_dir()  # ckpt dir made inside the runs dir
    assert job.plan.run_name == "job-1"


@pytest.mark.parametrize(
    "result",
    [
        done(True),
        done(False, P.FAILURE_CODE_TRAINER_EXITED),
        done(False, P.FAILURE_CODE_CANCELLED),
        done(False, P.FAILURE_CODE_WORKER_SHUTDOWN),
    ],
)
def test_temp_config_removed_however_the_job_ends(world: World, result: RunResult) -> None:
    registry = world.registry()
    _, job = registry.submit_job(world.submit())
    assert job is not None and job.config_file.exists()
    final = job.finish(result)
    assert not job.config_file.exists()
    assert world.configs() == []
    assert final.sequence == job.last_sequence
    assert job.finish(result) is final  # once


def test_rejected_submit_leaves_nothing(world: World) -> None:
    registry = world.registry()
    answer = registry.submit(world.submit(labels_path=str(world.mnt / "missing.slp")))
    assert codes(answer) >= {V.VIOLATION_CODE_NOT_FOUND}
    assert world.configs() == []
    assert not (world.mnt / "runs").exists() or not list((world.mnt / "runs").iterdir())


def test_stale_configs_removed_at_start_up(world: World) -> None:
    configs = world.state / "configs"
    configs.mkdir(parents=True)
    for name in ("job-a-1234.yaml", "job-b-9999.yaml"):
        (configs / name).write_text("x: 1\n")
    (configs / "keep.txt").write_text("not ours")
    registry = JobRegistry(
        IntakeConfig(
            policy=world.policy,
            state_dir=world.state,
            runs_dir=world.mnt / "runs",
            require_check_token=False,
        )
    )
    removed = registry.prepare()
    assert sorted(p.name for p in removed) == ["job-a-1234.yaml", "job-b-9999.yaml"]
    assert [p.name for p in world.configs()] == ["keep.txt"]


def test_state_dir_inside_a_mount_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="inside a user mount"):
        world.registry(state_dir=world.mnt / "state")


# --- idempotency and limits ------------------------------------------------------------


def test_same_job_id_same_spec_is_a_duplicate_and_starts_nothing(world: World) -> None:
    registry = world.registry(max_concurrent_jobs=1)
    first, job = registry.submit_job(world.submit())
    again, none = registry.submit_job(world.submit())  # new token, same spec
    assert isinstance(again, V.JobAccepted) and again.duplicate and none is None
    assert again.run_dir == first.run_dir  # type: ignore[union-attr]
    assert len(world.configs()) == 1
    assert job is not None
    job.finish(done())
    after, none = registry.submit_job(world.submit())
    assert isinstance(after, V.JobAccepted) and after.duplicate and none is None


def test_same_job_id_different_spec_conflicts(world: World) -> None:
    registry = world.registry(max_concurrent_jobs=5)
    registry.submit(world.submit())
    answer = registry.submit(world.submit(max_epochs=9))
    assert rule_ids(answer) == {"job_submit.job_id.conflict"}
    assert codes(answer) == {V.VIOLATION_CODE_CONFLICT}


def test_spec_hash_is_canonical() -> None:
    a = V.JobSubmit(spec=spec_pb2.TrainJobSpec(path_mappings={"/a": "/b", "/c": "/d"}))
    b = V.JobSubmit(spec=spec_pb2.TrainJobSpec(path_mappings={"/c": "/d", "/a": "/b"}))
    assert spec_hash(a) == spec_hash(b)


def test_busy_past_the_limit_then_free(world: World) -> None:
    registry = world.registry(max_concurrent_jobs=1)
    _, job = registry.submit_job(world.submit("j1"))
    busy = registry.submit(world.submit("j2"))
    assert isinstance(busy, error_pb2.Error)
    assert busy.code == error_pb2.ERROR_CODE_BUSY and busy.retryable
    assert len(world.configs()) == 1
    assert job is not None
    job.finish(done())
    assert isinstance(registry.submit(world.submit("j2")), V.JobAccepted)


def test_other_owner_is_forbidden(world: World) -> None:
    registry = world.registry()
    registry.submit(world.submit(), owner="ann")
    answer = registry.submit(world.submit(), owner="bob")
    assert isinstance(answer, error_pb2.Error) and answer.code == error_pb2.ERROR_CODE_FORBIDDEN


# --- paths --------------------------------------------------------------------------------


def test_labels_outside_mounts_traversal_and_symlink_escape(world: World) -> None:
    outside = make_labels(world.tmp / "outside" / "l.slp", [world.video])
    link = world.mnt / "data" / "escape.slp"
    os.symlink(outside, link)
    registry = world.registry(require_check_token=False)
    for path in (str(outside), str(world.mnt / ".." / "outside" / "l.slp"), str(link)):
        answer = registry.submit(world.submit(labels_path=path, token=""))
        assert codes(answer) == {V.VIOLATION_CODE_OUTSIDE_MOUNTS}, path
        assert rule_ids(answer) == {"worker.path.mounts"}
    relative = registry.submit(world.submit(labels_path="data/labels.slp", token=""))
    assert rule_ids(relative) == {"worker.path.absolute"}
    directory = world.mnt / "dir.slp"
    directory.mkdir()
    answer = registry.submit(world.submit(labels_path=str(directory), token=""))
    assert codes(answer) == {V.VIOLATION_CODE_UNREADABLE}


def test_every_path_field_goes_through_the_mounts(world: World) -> None:
    registry = world.registry(require_check_token=False)
    outside = world.tmp / "elsewhere"
    outside.mkdir()
    (outside / "v.mp4").write_bytes(b"x")
    (outside / "best.ckpt").write_bytes(b"x")
    make_labels(outside / "val.slp", [world.video])
    answer = registry.submit(
        world.submit(
            token="",
            val_labels_path=str(outside / "val.slp"),
            resume_ckpt_path=str(outside / "best.ckpt"),
            path_mappings={"/Users/me/v.mp4": str(outside / "v.mp4")},
            prefix_mappings={"C:\\data": str(outside)},
        )
    )
    fields = {v.field for v in answer.violations}  # type: ignore[union-attr]
    assert fields == {
        "spec.val_labels_path",
        "spec.resume_ckpt_path",
        "spec.path_mappings['/Users/me/v.mp4']",
        "spec.prefix_mappings['C:\\\\data']",
    }
    assert codes(answer) == {V.VIOLATION_CODE_OUTSIDE_MOUNTS}


def test_mappings_inside_mounts_reach_the_plan(world: World) -> None:
    registry = world.registry(require_check_token=False)
    answer, job = registry.submit_job(
        world.submit(
            token="",
            path_mappings={"C:\\Users\\me\\v.h5": world.video},
            prefix_mappings={"/Users/me": str(world.mnt / "data")},
        )
    )
    assert isinstance(answer, V.JobAccepted) and job is not None
    assert job.plan.video_path_map == (("C:\\Users\\me\\v.h5", str(Path(world.video).resolve())),)
    assert job.plan.prefix_map == (("/Users/me", str(world.mnt / "data")),)


def test_interpolation_in_a_path_is_refused(world: World) -> None:
    weird = world.mnt / "${oc.env:HOME}"
    weird.mkdir()
    labels = make_labels(weird / "l.slp", [world.video])
    registry = world.registry(require_check_token=False)
    answer = registry.submit(world.submit(labels_path=str(labels), token=""))
    assert rule_ids(answer) == {"worker.path.trainer"}


# --- tokens --------------------------------------------------------------------------------


def test_token_required_by_default(world: World) -> None:
    answer = world.registry().submit(world.submit(token=""))
    assert rule_ids(answer) == {"worker.check_token.required"}
    assert codes(answer) == {V.VIOLATION_CODE_STALE_CHECK}


def test_token_stale_after_the_file_changed(world: World) -> None:
    registry = world.registry()
    token = world.token()
    make_labels(world.labels, [world.video, world.video])  # rewritten since the check
    st = world.labels.stat()
    os.utime(world.labels, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    answer = registry.submit(world.submit(token=token))
    assert rule_ids(answer) == {"worker.check_token.stale"}
    message = answer.violations[0].message  # type: ignore[union-attr]
    assert "no longer holds" in message


def test_forged_token(world: World) -> None:
    answer = world.registry().submit(world.submit(token="forged.token"))
    assert codes(answer) == {V.VIOLATION_CODE_STALE_CHECK}


# --- config -----------------------------------------------------------------------------------


def test_bad_yaml_names_the_line(world: World) -> None:
    answer = world.registry().submit(
        world.submit(config_content="model_config:\n  a: !!python/x 1\n")
    )
    (violation,) = answer.violations  # type: ignore[union-attr]
    assert violation.code == V.VIOLATION_CODE_BAD_CONFIG
    assert violation.line == 2 and violation.rule_id == "config.yaml.tag"
    assert world.configs() == []


def test_config_without_model_config(world: World) -> None:
    answer = world.registry().submit(world.submit(config_content="trainer_config: {}\n"))
    assert rule_ids(answer) == {"config.model_config.required"}


def test_config_over_the_cap(world: World) -> None:
    registry = world.registry(max_config_bytes=64)
    answer = registry.submit(world.submit(config_content=CONFIG + "#" * 100))
    assert codes(answer) == {V.VIOLATION_CODE_TOO_LARGE}


def test_rules_run_first(world: World) -> None:
    answer = world.registry().submit(V.JobSubmit(job_id="../x"))
    assert rule_ids(answer) == {"job_id.format", "job_submit.spec.required"}


def test_content_wins_over_config_paths_with_a_warning(world: World) -> None:
    answer = world.registry().submit(world.submit(config_paths=["/elsewhere/c.yaml"]))
    assert isinstance(answer, V.JobAccepted)
    assert any("config_content wins" in w for w in answer.warnings)


def test_legacy_config_path_is_copied_privately(world: World) -> None:
    cfg = world.mnt / "cfg.yaml"
    cfg.write_text(CONFIG)
    registry = world.registry()
    answer, job = registry.submit_job(world.submit(config_content=None, config_paths=[str(cfg)]))
    assert isinstance(answer, V.JobAccepted) and job is not None
    assert job.config_file.parent == world.state / "configs"
    assert yaml.safe_load(job.config_file.read_text())["trainer_config"]["max_epochs"] == 1
    two = registry.submit(world.submit("j2", config_content=None, config_paths=[str(cfg)] * 2))
    assert rule_ids(two) == {"worker.config_paths.single"}
    out = registry.submit(
        world.submit("j3", config_content=None, config_paths=["/etc/passwd.yaml"])
    )
    assert codes(out) == {V.VIOLATION_CODE_OUTSIDE_MOUNTS}


def test_run_name_from_spec_or_config(world: World) -> None:
    registry = world.registry(max_concurrent_jobs=3)
    _, a = registry.submit_job(world.submit("a", run_name="mine"))
    cfg = "model_config: {}\ntrainer_config:\n  run_name: from_cfg\n"
    _, b = registry.submit_job(world.submit("b", config_content=cfg))
    assert a is not None and a.plan.run_name == "mine"
    assert b is not None and b.plan.run_name == "from_cfg"


def test_run_dir_is_runs_dir_slash_name_not_doubled(world: World) -> None:
    registry = world.registry(max_concurrent_jobs=5)
    runs = world.mnt / "runs"
    answer, job = registry.submit_job(world.submit("job-1"))
    assert isinstance(answer, V.JobAccepted) and job is not None
    assert job.run_dir == runs / "job-1"  # not runs/job-1/job-1
    assert answer.run_dir == str(runs / "job-1")
    assert job.plan.ckpt_dir == runs and job.plan.run_name == "job-1"
    assert job.run_dir.is_dir()  # made at acceptance: the name is reserved
    assert sorted(p.name for p in runs.iterdir()) == ["job-1"]


def test_run_dir_taken_gets_a_suffix_and_stays_exact(world: World) -> None:
    registry = world.registry(max_concurrent_jobs=5)
    runs = world.mnt / "runs"
    (runs / "old").mkdir(parents=True)  # e.g. the same job id before a worker restart
    (runs / "old-1").write_text("a file takes the name too")
    _, a = registry.submit_job(world.submit("old"))
    _, b = registry.submit_job(world.submit("b", run_name="mine"))
    answer, c = registry.submit_job(world.submit("c", run_name="mine"))
    assert a is not None and a.run_dir == runs / "old-2" and a.plan.run_name == "old-2"
    assert b is not None and b.run_dir == runs / "mine"
    assert c is not None and c.run_dir == runs / "mine-1"
    assert answer.run_dir == str(c.run_dir) == str(c.plan.ckpt_dir / c.plan.run_name)  # type: ignore[union-attr]
    assert "++trainer_config.run_name='mine-1'" in build_command(
        ("t",), c.plan, publish_port=1, controller_port=2
    )


def test_run_dir_failure_leaves_no_temp_config(world: World) -> None:
    (world.mnt / "runs").write_text("not a folder")
    answer, job = world.registry().submit_job(world.submit())
    assert isinstance(answer, error_pb2.Error) and job is None
    assert answer.code == error_pb2.ERROR_CODE_INTERNAL and "run folder" in answer.message
    assert world.configs() == []


# --- the check token binds the submit's mappings ----------------------------------------------


@dataclass
class Mapped:
    """A labels file whose video is found only through an exact mapping."""

    labels: Path
    video: Path
    other: Path
    request: paths_pb2.PathCheckRequest


@pytest.fixture
def mapped(world: World) -> Mapped:
    video = Path(make_h5_video(world.mnt / "videos" / "cam1.h5"))
    other = Path(make_h5_video(world.mnt / "videos" / "cam2.h5"))
    labels = make_labels(world.mnt / "proj" / "labels.slp", ["/Users/me/vids/cam1.h5"])
    request = paths_pb2.PathCheckRequest(
        labels_path="/Users/me/labels.slp",
        path_mappings={
            "/Users/me/labels.slp": str(labels),
            "/Users/me/vids/cam1.h5": str(video),
        },
        prefix_mappings={"/Users/me/old": str(world.mnt / "videos")},
    )
    return Mapped(labels, video, other, request)


def submit_mapped(
    world: World, m: Mapped, job_id: str, exact: dict[str, str], prefix: dict[str, str]
) -> V.JobSubmit:
    result = world.checker.check(m.request)
    assert result.check_token, result
    return world.submit(
        job_id,
        token=result.check_token,
        labels_path=result.labels.worker_path,
        path_mappings=exact,
        prefix_mappings=prefix,
    )


def test_submit_with_the_checked_video_mappings_passes(world: World, mapped: Mapped) -> None:
    registry = world.registry(max_concurrent_jobs=5)
    prefix = dict(mapped.request.prefix_mappings)
    video_only = {"/Users/me/vids/cam1.h5": str(mapped.video)}
    # The labels mapping was checked but is absent from the submit (the client drops it).
    answer, job = registry.submit_job(submit_mapped(world, mapped, "ok", video_only, prefix))
    assert isinstance(answer, V.JobAccepted), answer
    assert job is not None and job.plan.video_path_map == tuple(video_only.items())
    # Repeating the labels mapping is harmless too.
    both = dict(mapped.request.path_mappings)
    again = registry.submit(submit_mapped(world, mapped, "ok2", both, prefix))
    assert isinstance(again, V.JobAccepted), again


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("extra", "'/Users/me/vids/cam2.h5' -> "),
        ("different", "now points to"),
        ("missing", "of the path check is missing"),
        ("prefix", "prefix mapping '/Users/me/old'"),
        ("labels_elsewhere", "'/Users/me/labels.slp' -> "),
    ],
)
def test_submit_with_other_mappings_is_a_stale_check(
    world: World, mapped: Mapped, change: str, words: str
) -> None:
    exact = {"/Users/me/vids/cam1.h5": str(mapped.video)}
    prefix = dict(mapped.request.prefix_mappings)
    if change == "extra":
        exact["/Users/me/vids/cam2.h5"] = str(mapped.other)
    elif change == "different":
        exact["/Users/me/vids/cam1.h5"] = str(mapped.other)
    elif change == "missing":
        exact.clear()
    elif change == "prefix":
        prefix.clear()
    else:  # the labels key mapped to another file is not the labels mapping
        exact["/Users/me/labels.slp"] = str(mapped.other)
    answer = world.registry().submit(submit_mapped(world, mapped, "j", exact, prefix))
    assert isinstance(answer, V.JobRejected), answer
    stale = [v for v in answer.violations if v.rule_id == "worker.check_token.stale"]
    assert len(stale) == 1 and len(answer.violations) == 1, answer
    assert stale[0].code == V.VIOLATION_CODE_STALE_CHECK
    assert "mappings differ from the checked ones" in stale[0].message
    assert words in stale[0].message, stale[0].message
    assert world.configs() == []


def test_token_from_a_check_without_mappings_refuses_a_submit_with_some(world: World) -> None:
    extra = Path(make_h5_video(world.mnt / "x" / "v2.h5"))
    answer = world.registry().submit(world.submit(path_mappings={"/Users/me/v2.h5": str(extra)}))
    assert codes(answer) == {V.VIOLATION_CODE_STALE_CHECK}
    assert "was not part of the path check" in answer.message  # type: ignore[union-attr]


# --- history -----------------------------------------------------------------------------------


def make_job(world: World, history_limit: int) -> Job:
    registry = world.registry(history_limit=history_limit)
    _, job = registry.submit_job(world.submit())
    assert job is not None
    return job


def test_history_replay_after_sequence_and_bounded(world: World) -> None:
    job = make_job(world, history_limit=5)
    seen: list[int] = []
    unsubscribe = job.subscribe(lambda m: seen.append(m.sequence))
    job.emit_progress(ProgressUpdate(P.PROGRESS_EVENT_TRAIN_BEGIN))
    for i in range(10):
        job.emit_log(P.LOG_STREAM_STDOUT, [f"line {i}"])
    unsubscribe()
    job.emit_progress(ProgressUpdate(P.PROGRESS_EVENT_TRAIN_END))
    job.finish(done())
    assert seen == list(range(1, 12))
    assert job.last_sequence == 13
    everything, dropped = job.replay(0)
    sequences = [m.sequence for m in everything]
    assert sequences[0] == 1  # train_begin is pinned
    assert sequences[1:] == [9, 10, 11, 12, 13]
    assert dropped == 7  # 2..8 are gone
    tail, dropped = job.replay(11)
    assert [m.sequence for m in tail] == [12, 13] and dropped == 0
    assert isinstance(tail[-1], P.JobComplete)
    status = job.status()
    assert status.state == V.JOB_STATE_COMPLETED and status.last_sequence == 13


def test_nothing_emitted_after_the_end(world: World) -> None:
    job = make_job(world, history_limit=100)
    job.finish(done(False, P.FAILURE_CODE_CANCELLED))
    job.emit_log(P.LOG_STREAM_STDOUT, ["late"])
    job.emit_progress(ProgressUpdate(P.PROGRESS_EVENT_BATCH_END))
    assert job.last_sequence == 1
    assert job.status().state == V.JOB_STATE_FAILED


# --- the seed's door ---------------------------------------------------------------------------


def test_worker_class_door_accepts_legacy_json(world: World) -> None:
    registry = world.registry(require_check_token=False)
    spec = {
        "type": "train",
        "config_content": CONFIG,
        "labels_path": str(world.labels),
        "future_field": {"ignored": True},
    }
    answer = handle_job_submit(registry, "legacy-1", spec)
    assert isinstance(answer, V.JobAccepted)
    bad = handle_job_submit(registry, "legacy-2", "not json")
    assert rule_ids(bad) == {"worker.spec.json"}
    assert spec_from_json('{"labels_path": "/a.slp", "max_epochs": 3}').max_epochs == 3


def test_paths_inside_the_config_go_through_the_mounts(world: World) -> None:
    config = (
        "model_config:\n  pretrained_backbone_weights: /etc/weights.ckpt\n"
        "data_config:\n  test_file_path: [/etc/test.slp, null]\n  val_labels_path: [/etc/v.slp]\n"
    )
    answer = world.registry().submit(world.submit(config_content=config))
    assert rule_ids(answer) == {"worker.config_path.mounts"}
    fields = {v.field for v in answer.violations}  # type: ignore[union-attr]
    assert fields == {
        "spec.config_content:model_config.pretrained_backbone_weights",
        "spec.config_content:data_config.test_file_path",
    }  # val_labels_path in the config is replaced by the spec's (or null), not used
