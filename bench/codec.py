"""Codec benchmark: protobuf Envelope vs the legacy ``JOB_SUBMIT::id::json`` text framing.

Bars (DESIGN.md): a JobSubmit with a ~5 KB config and 20 path mappings encodes and
decodes at least 10x faster than the legacy framing, in at most 60% of its bytes.
Also times a PathCheckResult of 1,000 videos x 5 suggestions through
MessageStream.send (fragment) + receive (reassemble).

Run: ``python -m bench codec``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from google.protobuf.internal import api_implementation

from sleap_rtc_proto.codec import body_of, decode, encode
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, spec_pb2

SPEED_BAR = 10.0
BYTES_BAR = 0.60
REPEATS = 7

NODES = ["head", "thorax", "abdomen", "wingL", "wingR", "forelegL1", "forelegR1", "forelegL4",
         "forelegR4", "midlegL1", "midlegR1", "midlegL4", "midlegR4", "hindlegL1", "hindlegR1",
         "hindlegL4", "hindlegR4", "eyeL", "eyeR"]  # fmt: skip
CONFIG_TEMPLATE = """\
data_config:
  provider: LabelsReader
  train_labels_path:
  - /mnt/lab/projects/flies/labels.v012.slp
  val_labels_path: null
  validation_fraction: 0.1
  test_file_path: null
  data_pipeline_fw: torch_dataset
  cache_img_path: null
  use_existing_imgs: false
  delete_cache_imgs_after_training: true
  preprocessing:
    ensure_rgb: false
    ensure_grayscale: false
    max_height: null
    max_width: null
    scale: 1.0
    crop_size: null
    min_crop_size: 100
  use_augmentations_train: true
  augmentation_config:
    intensity:
      uniform_noise_min: 0.0
      uniform_noise_max: 1.0
      uniform_noise_p: 0.0
      gaussian_noise_mean: 0.0
      gaussian_noise_std: 1.0
      gaussian_noise_p: 0.0
      contrast_min: 0.9
      contrast_max: 1.1
      contrast_p: 0.0
      brightness_min: 1.0
      brightness_max: 1.0
      brightness_p: 0.0
    geometric:
      rotation_min: -15.0
      rotation_max: 15.0
      rotation_p: 1.0
      scale_min: 0.9
      scale_max: 1.1
      scale_p: 1.0
      translate_width: 0.2
      translate_height: 0.2
      translate_p: 0.0
      affine_p: 0.0
      erase_scale_min: 0.0001
      erase_scale_max: 0.01
      erase_ratio_min: 1.0
      erase_ratio_max: 1.0
      erase_p: 0.0
      mixup_lambda:
      - 0.01
      - 0.05
      mixup_p: 0.0
  skeletons:
  - name: fly19
    nodes:
{nodes}
    edges:
{edges}
    symmetries:
    - - wingL
      - wingR
    - - eyeL
      - eyeR
model_config:
  init_weights: xavier
  pretrained_backbone_weights: null
  pretrained_head_weights: null
  backbone_config:
    unet:
      in_channels: 1
      kernel_size: 3
      filters: 32
      filters_rate: 1.5
      max_stride: 16
      stem_stride: null
      middle_block: true
      up_interpolate: true
      stacks: 1
      convs_per_block: 2
      output_stride: 2
    convnext: null
    swint: null
  head_configs:
    single_instance: null
    centroid: null
    centered_instance:
      confmaps:
        part_names:
{parts}
        anchor_part: thorax
        sigma: 2.5
        output_stride: 2
        loss_weight: 1.0
    bottomup: null
    multi_class_bottomup: null
    multi_class_topdown: null
trainer_config:
  train_data_loader:
    batch_size: 4
    shuffle: true
    num_workers: 0
  val_data_loader:
    batch_size: 4
    shuffle: false
    num_workers: 0
  model_ckpt:
    save_top_k: 1
    save_last: false
  trainer_devices: auto
  trainer_device_indices: null
  trainer_accelerator: auto
  profiler: null
  trainer_strategy: auto
  enable_progress_bar: true
  min_train_steps_per_epoch: 200
  train_steps_per_epoch: null
  visualize_preds_during_training: false
  keep_viz: false
  max_epochs: 200
  seed: 0
  use_wandb: false
  wandb:
    entity: null
    project: null
    name: null
    save_viz_imgs_wandb: false
    api_key: null
    wandb_mode: null
    prv_runid: null
    group: null
  save_ckpt: true
  ckpt_dir: /mnt/lab/projects/flies/models
  run_name: flies_centered_instance_v12
  resume_ckpt_path: null
  optimizer_name: Adam
  optimizer:
    lr: 0.0001
    amsgrad: false
  lr_scheduler:
    step_lr: null
    reduce_lr_on_plateau:
      threshold: 1.0e-06
      threshold_mode: rel
      cooldown: 3
      patience: 5
      factor: 0.5
      min_lr: 1.0e-08
  early_stopping:
    min_delta: 1.0e-08
    patience: 10
    stop_training_on_plateau: true
  online_hard_keypoint_mining:
    online_mining: false
    hard_to_easy_ratio: 2.0
    min_hard_keypoints: 2
    max_hard_keypoints: null
    loss_scale: 5.0
  zmq:
    controller_port: null
    publish_port: null
    controller_polling_timeout: 10
"""


def sleap_nn_config() -> str:
    """A realistic sleap-nn training config (centered instance, 19-node fly), ~5 KB."""
    edges = [("thorax", n) for n in NODES if n not in ("thorax", "eyeL", "eyeR")]
    edges += [("head", "eyeL"), ("head", "eyeR")]
    return CONFIG_TEMPLATE.format(
        nodes="\n".join(f"    - name: {n}" for n in NODES),
        edges="\n".join(f"    - source: {a}\n      destination: {b}" for a, b in edges),
        parts="\n".join(f"        - {n}" for n in NODES),
    )


def job_submit() -> job_pb2.JobSubmit:
    mappings = {
        f"C:\\Users\\ana\\Documents\\flies\\videos\\2025-03-{d:02d}\\arena_cam{d % 4}.mp4": (
            f"/mnt/lab/projects/flies/videos/2025-03-{d:02d}/arena_cam{d % 4}.mp4"
        )
        for d in range(1, 21)
    }
    spec = spec_pb2.TrainJobSpec(
        config_content=sleap_nn_config(),
        labels_path="/mnt/lab/projects/flies/labels.v012.slp",
        path_mappings=mappings,
        max_epochs=200,
        batch_size=4,
        run_name="flies_centered_instance_v12",
    )
    return job_pb2.JobSubmit(job_id="a3f9c2e1-job-0001", spec=spec, check_token="ct-5e0c9f27b1")


# -- legacy framing, minimal but faithful ---------------------------------------------------------
# Mirrors what the existing sleap-rtc code does with a JobSubmit (sleap_rtc/jobs/spec.py and
# the worker's JOB_SUBMIT handler): the dataclass normalizes config_content into
# config_contents (so the YAML travels twice), to_json() is asdict() minus empty values plus
# "type": "train", the frame is "JOB_SUBMIT::{client_job_id}::{spec_json}", and the worker
# splits on "::" (maxsplit 2), reads "type" with one json.loads and builds the spec from a
# second one, keeping only known fields.


@dataclass
class LegacyTrainJobSpec:
    config_path: str | None = None
    config_paths: list[str] = field(default_factory=list)
    config_content: str | None = None
    config_contents: list[str] = field(default_factory=list)
    model_types: list[str] = field(default_factory=list)
    labels_path: str | None = None
    val_labels_path: str | None = None
    max_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    run_name: str | None = None
    resume_ckpt_path: str | None = None
    path_mappings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config_path and not self.config_paths:
            self.config_paths = [self.config_path]
        if self.config_content and not self.config_contents:
            self.config_contents = [self.config_content]
        if not (self.config_paths or self.config_content or self.config_contents):
            raise ValueError("Must provide either config_paths or config_content")

    def to_json(self) -> str:
        data = {"type": "train", **asdict(self)}
        return json.dumps({k: v for k, v in data.items() if v is not None and v != [] and v != {}})

    @classmethod
    def from_json(cls, text: str) -> LegacyTrainJobSpec:
        parsed = json.loads(text)
        parsed.pop("type", None)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in parsed.items() if k in known})


def legacy_spec(submit: job_pb2.JobSubmit, *, config_twice: bool = True) -> LegacyTrainJobSpec:
    spec = submit.spec
    legacy = LegacyTrainJobSpec(
        config_content=spec.config_content,
        labels_path=spec.labels_path,
        path_mappings=dict(spec.path_mappings),
        max_epochs=spec.max_epochs,
        batch_size=spec.batch_size,
        run_name=spec.run_name,
    )
    if not config_twice:  # the same content sent once: the fairest text framing
        legacy.config_contents = []
    return legacy


def legacy_encode(client_job_id: str, spec: LegacyTrainJobSpec) -> bytes:
    return f"JOB_SUBMIT::{client_job_id}::{spec.to_json()}".encode()


def legacy_decode(frame: bytes) -> tuple[str, LegacyTrainJobSpec]:
    kind, client_job_id, spec_json = frame.decode("utf-8").split("::", 2)
    if kind != "JOB_SUBMIT" or json.loads(spec_json).get("type") != "train":
        raise ValueError("not a train JOB_SUBMIT")
    return client_job_id, LegacyTrainJobSpec.from_json(spec_json)


def lean_legacy_decode(frame: bytes) -> tuple[str, dict[str, Any]]:
    """The cheapest possible text framing: one split, one json.loads, no dataclass."""
    _, client_job_id, spec_json = frame.decode("utf-8").split("::", 2)
    return client_job_id, json.loads(spec_json)


# -- measurement ----------------------------------------------------------------------------------


def best_rates(fns: list[Callable[[], object]], n: int) -> list[float]:
    """Calls per second of each function: the best of REPEATS runs of ``n`` calls.

    Runs are interleaved (a, b, a, b, ...) so that load from other processes
    affects every side alike.
    """
    best = [float("inf")] * len(fns)
    for _ in range(REPEATS):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [n / b for b in best]


def bench_job_submit() -> None:
    submit = job_submit()
    legacy = legacy_spec(submit)
    lean = legacy_spec(submit, config_twice=False)

    def ours() -> object:
        return body_of(decode(encode(submit, message_id=7, sent_time_unix_nano=1)))

    def theirs() -> object:
        return legacy_decode(legacy_encode(submit.job_id, legacy))

    def theirs_lean() -> object:
        return lean_legacy_decode(f"JOB_SUBMIT::{submit.job_id}::{json.dumps(lean_dict)}".encode())

    lean_dict = {k: v for k, v in asdict(lean).items() if v not in (None, [], {})}
    lean_dict["type"] = "train"

    # Same content on every side.
    assert ours() == submit
    job_id, spec = legacy_decode(legacy_encode(submit.job_id, legacy))
    assert (job_id, spec.config_content, spec.path_mappings) == (
        submit.job_id,
        submit.spec.config_content,
        dict(submit.spec.path_mappings),
    )
    assert theirs_lean()[1]["config_content"] == submit.spec.config_content  # type: ignore[index]

    ours_bytes = len(encode(submit, message_id=7, sent_time_unix_nano=1))
    legacy_bytes = len(legacy_encode(submit.job_id, legacy))
    lean_bytes = len(f"JOB_SUBMIT::{submit.job_id}::{json.dumps(lean_dict)}".encode())
    n = 2000
    ours_rate, legacy_rate, lean_rate = best_rates([ours, theirs, theirs_lean], n)
    speed, size = ours_rate / legacy_rate, ours_bytes / legacy_bytes
    config_kb = len(submit.spec.config_content.encode()) / 1024
    print(
        f"JobSubmit, {config_kb:.1f} KB sleap-nn YAML config + {len(submit.spec.path_mappings)} "
        "path mappings, encode + decode in one process:"
    )
    for label, rate, size_bytes in (
        ("protobuf Envelope (ours)", ours_rate, ours_bytes),
        ("legacy JOB_SUBMIT::id::json", legacy_rate, legacy_bytes),
        ("lean text framing, config once", lean_rate, lean_bytes),
    ):
        print(f"  {label:<31} {rate:>9,.0f} round trips/s  {size_bytes:>6,} bytes")
    print(
        f"  vs legacy: speed {speed:.1f}x (bar >= {SPEED_BAR:g}x) "
        f"{'PASS' if speed >= SPEED_BAR else 'FAIL'}; bytes {size:.0%} (bar <= {BYTES_BAR:.0%}) "
        f"{'PASS' if size <= BYTES_BAR else 'FAIL'}"
    )
    print(
        f"  vs lean text (no bar, for scale): speed {ours_rate / lean_rate:.1f}x; "
        f"bytes {ours_bytes / lean_bytes:.0%}"
    )


def path_check_result(videos: int = 1000, suggestions: int = 5) -> paths_pb2.PathCheckResult:
    result = paths_pb2.PathCheckResult(
        labels=paths_pb2.PathEntry(
            original_path="C:\\Users\\ana\\flies\\labels.v012.slp",
            worker_path="/mnt/lab/projects/flies/labels.v012.slp",
            status=paths_pb2.PATH_STATUS_FOUND,
        ),
        check_token="",
        mounts=["/mnt/lab", "/mnt/archive"],
    )
    for i in range(videos):
        video = result.videos.add(
            index=i,
            original_path=f"C:\\Users\\ana\\flies\\videos\\session_{i:04d}\\arena_cam{i % 4}.mp4",
            worker_path=f"/mnt/lab/flies/videos/session_{i:04d}/arena_cam{i % 4}.mp4",
            status=paths_pb2.PATH_STATUS_MISSING,
            kind=paths_pb2.VIDEO_KIND_FILE,
            detail="no file at the mapped path",
        )
        for j in range(suggestions):
            video.suggestions.add(
                worker_path=f"/mnt/archive/{2021 + j}/flies/session_{i:04d}/arena_cam{i % 4}.mp4",
                reason=paths_pb2.SUGGESTION_REASON_SAME_NAME,
                score=0.9 - j * 0.1,
                explanation=f"same file name, folder tail 'session_{i:04d}'",
            )
    return result


def bench_path_check_result() -> None:
    result = path_check_result()
    frames_seen: list[int] = []

    def round_trip() -> object:
        sender, receiver = MessageStream(), MessageStream()
        _, frames = sender.send(result)
        frames_seen.append(len(frames))
        out = None
        for frame in frames:
            out = receiver.receive(frame, now=0.0)
        assert out is not None
        return out

    out = round_trip()
    assert body_of(out) == result  # type: ignore[arg-type]
    _, frames = MessageStream().send(result)
    (rate,) = best_rates([round_trip], 5)
    total = sum(len(f) for f in frames)
    print(f"PathCheckResult (1,000 videos x 5 suggestions, {result.ByteSize():,} bytes)")
    print(
        f"  send (fragment) + receive (reassemble): {1000 / rate:.1f} ms per message, "
        f"{len(frames)} frames of <= {MessageStream().max_frame_bytes:,} bytes "
        f"({total:,} bytes on the wire)"
    )


def main() -> None:
    print(f"[codec] protobuf backend: {api_implementation.Type()}, best of {REPEATS} runs")
    bench_job_submit()
    bench_path_check_result()


if __name__ == "__main__":
    main()
