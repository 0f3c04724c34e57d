"""sleap-nn's config schema, read from its own config classes, and what each string field means.

:func:`schema` walks sleap-nn's attrs classes (``TrainingJobConfig`` and every
section under it) into a tree of known keys. Every leaf that can hold a
string is classified in :data:`FIELD_KINDS`: a path the worker resolves, a
value the worker sets itself, a reporting setting, or plain text. A leaf of
the installed sleap-nn that the table does not classify is refused at intake
(and ``tests/test_canonconfig.py`` fails), so a new sleap-nn path field cannot
slip past unchecked.

When sleap-nn is not installed (a worker that runs another trainer), the
schema falls back to the table itself: every classified field is known, and
sections are inferred from the dotted names.
"""

from __future__ import annotations

import functools
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Union


class FieldKind(StrEnum):
    """What a string-valued sleap-nn field holds."""

    #: A file the trainer reads: resolved through the mounts, handed over resolved.
    FILE = "file"
    #: A folder the trainer may write into: resolved through the mounts.
    FOLDER = "folder"
    #: Set by the worker (labels, run folder, resume checkpoint); the client's value is replaced.
    WORKER = "worker"
    #: A third-party reporting service's setting (wandb); refused unless the operator allows.
    REPORTING = "reporting"
    #: A name to fetch weights by (torchvision, Hugging Face); an absolute path is resolved.
    FETCH = "fetch"
    #: A choice or a name with no file meaning (still checked for interpolation).
    TEXT = "text"


_W, _F, _D, _R, _N, _T = (
    FieldKind.WORKER,
    FieldKind.FILE,
    FieldKind.FOLDER,
    FieldKind.REPORTING,
    FieldKind.FETCH,
    FieldKind.TEXT,
)
_HEAD = "model_config.head_configs."
_BB = "model_config.backbone_config."

#: Every leaf of sleap-nn 0.3.5's config that can hold a string, and what it holds.
FIELD_KINDS: dict[str, FieldKind] = {
    "data_config.train_labels_path": _W,
    "data_config.val_labels_path": _W,
    "data_config.test_file_path": _F,
    "data_config.cache_img_path": _D,
    "data_config.provider": _T,
    "data_config.data_pipeline_fw": _T,
    "data_config.preprocessing.crop_mode": _T,
    "data_config.preprocessing.crop_bbox_aspect": _T,
    "data_config.preprocessing.tiling.blend": _T,
    "data_config.preprocessing.tiling.accumulator_device": _T,
    "data_config.preprocessing.tiling.sampling": _T,
    "data_config.preprocessing.background_fill": _T,
    "data_config.preprocessing.crop_centering": _T,
    "data_config.skeletons": _T,
    "data_config.split.split_by": _T,
    "data_config.centroids_from_masks": _T,
    "data_config.bbox_source": _T,
    "model_config.init_weights": _T,
    "model_config.pretrained_backbone_weights": _F,
    "model_config.pretrained_head_weights": _F,
    _BB + "convnext.pre_trained_weights": _N,
    _BB + "convnext.model_type": _T,
    _BB + "convnext.arch": _T,
    _BB + "swint.pre_trained_weights": _N,
    _BB + "swint.model_type": _T,
    _BB + "swint.arch": _T,
    _BB + "pretrained.source": _N,
    _BB + "pretrained.model_name": _N,
    _BB + "pretrained.mode": _T,
    _BB + "pretrained.revision": _N,
    _BB + "pretrained.vit_neck": _T,
    _HEAD + "single_instance.confmaps.part_names": _T,
    _HEAD + "centroid.confmaps.anchor_part": _T,
    _HEAD + "centroid.confmaps.centroid_method": _T,
    _HEAD + "centroid.confmaps.centroid_fallback": _T,
    _HEAD + "centroid.confmaps.centroid_source": _T,
    _HEAD + "centered_instance.confmaps.part_names": _T,
    _HEAD + "centered_instance.confmaps.anchor_part": _T,
    _HEAD + "centered_instance.confmaps.centroid_method": _T,
    _HEAD + "centered_instance.confmaps.centroid_fallback": _T,
    _HEAD + "bottomup.confmaps.part_names": _T,
    _HEAD + "bottomup.pafs.edges": _T,
    _HEAD + "multi_class_bottomup.confmaps.part_names": _T,
    _HEAD + "multi_class_bottomup.class_maps.classes": _T,
    _HEAD + "multi_class_bottomup.class_maps.class_output": _T,
    _HEAD + "multi_class_topdown.confmaps.part_names": _T,
    _HEAD + "multi_class_topdown.confmaps.anchor_part": _T,
    _HEAD + "multi_class_topdown.confmaps.centroid_method": _T,
    _HEAD + "multi_class_topdown.confmaps.centroid_fallback": _T,
    _HEAD + "multi_class_topdown.class_vectors.classes": _T,
    _HEAD + "multi_class_topdown.class_vectors.class_output": _T,
    _HEAD + "centered_instance_segmentation.segmentation.anchor_part": _T,
    _HEAD + "centered_instance_segmentation.segmentation.centroid_method": _T,
    _HEAD + "centered_instance_segmentation.segmentation.centroid_fallback": _T,
    _HEAD + "embedding.embedding.pool": _T,
    _HEAD + "embedding.embedding.anchor_part": _T,
    _HEAD + "embedding.embedding.centroid_method": _T,
    _HEAD + "embedding.embedding.centroid_fallback": _T,
    _HEAD + "embedding.embedding.detection_mode": _T,
    _HEAD + "embedding.embedding.objective.positives.scope": _T,
    _HEAD + "embedding.embedding.objective.negatives.sources": _T,
    _HEAD + "embedding.embedding.objective.loss.name": _T,
    _HEAD + "embedding.embedding.objective.sampler.kind": _T,
    _HEAD + "bbox_centernet.center.categories": _T,
    _HEAD + "bbox_ssd.ssd.categories": _T,
    "trainer_config.train_data_loader.num_workers": _T,
    "trainer_config.val_data_loader.num_workers": _T,
    "trainer_config.model_ckpt.monitor": _T,
    "trainer_config.model_ckpt.mode": _T,
    "trainer_config.trainer_devices": _T,
    "trainer_config.trainer_accelerator": _T,
    "trainer_config.profiler": _T,
    "trainer_config.trainer_strategy": _T,
    "trainer_config.viz_img_format": _T,
    "trainer_config.ckpt_dir": _W,
    "trainer_config.run_name": _W,
    "trainer_config.resume_ckpt_path": _W,
    "trainer_config.wandb.entity": _R,
    "trainer_config.wandb.project": _R,
    "trainer_config.wandb.name": _R,
    "trainer_config.wandb.api_key": _R,
    "trainer_config.wandb.wandb_mode": _R,
    "trainer_config.wandb.prv_runid": _R,
    "trainer_config.wandb.group": _R,
    "trainer_config.wandb.current_run_id": _R,
    "trainer_config.optimizer_name": _T,
    "trainer_config.lr_scheduler.reduce_lr_on_plateau.threshold_mode": _T,
    "trainer_config.lr_scheduler.reduce_lr_on_plateau.min_lr": _T,
    "trainer_config.eval.select_metric": _T,
    "name": _T,
    "description": _T,
    "sleap_nn_version": _T,
    "filename": _T,
}

#: Boolean switches that turn on a third-party reporting service.
REPORTING_SWITCHES: tuple[str, ...] = ("trainer_config.use_wandb",)


@dataclass(frozen=True)
class Leaf:
    """A field that is not a section: whether it may hold a string, and whether it
    is free-form (a plain ``dict`` or ``list`` whose inside the schema does not define)."""

    admits_str: bool
    free_form: bool = False


#: A section: key -> sub-section or leaf.
Section = dict[str, "Section | Leaf"]


def _members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return [m for a in typing.get_args(tp) if a is not type(None) for m in _members(a)]
    return [tp]


def _admits_str(tp: Any) -> bool:
    if tp is Any or tp is str or tp in (list, dict):
        return True
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return any(_admits_str(m) for m in _members(tp))
    if origin in (list, dict, tuple):
        return any(_admits_str(a) for a in typing.get_args(tp))
    return False


def _walk(cls: Any) -> Section:
    import attrs

    out: Section = {}
    for fld in attrs.fields(cls):
        members = _members(fld.type)
        sections = [m for m in members if isinstance(m, type) and attrs.has(m)]
        if sections:
            out[fld.name] = _walk(sections[0])
        else:
            free = any(m in (list, dict) or m is Any for m in members)
            out[fld.name] = Leaf(_admits_str(fld.type), free_form=free)
    return out


def _from_table() -> Section:
    root: Section = {}
    for dotted in FIELD_KINDS:
        *parents, last = dotted.split(".")
        node = root
        for part in parents:
            child = node.setdefault(part, {})
            assert isinstance(child, dict)
            node = child
        node[last] = Leaf(True, free_form=True)
    return root


@functools.cache
def schema() -> Section:
    """The installed sleap-nn's config tree (or the table's, without sleap-nn)."""
    try:
        from sleap_nn.config.training_job_config import TrainingJobConfig
    except ImportError:
        return _from_table()
    return _walk(TrainingJobConfig)


def string_fields(tree: Section | None = None, prefix: str = "") -> set[str]:
    """Dotted names of every leaf of ``tree`` (default: :func:`schema`) that admits a string."""
    found: set[str] = set()
    for key, node in (schema() if tree is None else tree).items():
        if isinstance(node, Leaf):
            if node.admits_str:
                found.add(prefix + key)
        else:
            found |= string_fields(node, f"{prefix}{key}.")
    return found


def runs_sleap_nn(command: Sequence[str]) -> bool:
    """Whether a trainer command runs sleap-nn (``sleap-nn train``, ``python -m sleap_nn.cli``).

    Only then is sleap-nn's schema the trainer's: another trainer (a stand-in the
    operator configured) may define sections of its own, which then pass through;
    the Hydra, interpolation and path rules apply to every trainer.
    """
    names = [os.path.basename(part) for part in command[:3]]
    return "sleap-nn" in names or any(part.startswith("sleap_nn") for part in command[:3])


def sleap_nn_version() -> str | None:
    """The installed sleap-nn's version, or None."""
    try:
        import sleap_nn
    except ImportError:
        return None
    return str(getattr(sleap_nn, "__version__", "unknown"))
