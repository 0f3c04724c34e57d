"""The sleap-nn configs of a SLEAP LearningDialog, built exactly as SLEAP's own ``copy()``.

SLEAP 1.6.6's "Copy to clipboard" turns each model's form data into a sleap-nn
config: ``filter_cfg`` then ``verify_training_cfg`` (sleap-nn), then
``data_config.train_labels_path = [labels_filename]`` and ``OmegaConf.to_yaml``.
On a GUI-only install (no sleap-nn, no torch) ``verify_training_cfg`` is not
importable; the filtered tree is sent as it is and the worker's sleap-nn
verifies it (missing keys take the schema defaults there).

A top-down pipeline gives two models, centroid then centered instance: they
are returned in that order and trained one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "dialog_configs"]


@dataclass(frozen=True)
class ModelConfig:
    """One model of the dialog's pipeline, read from the dialog (on the Qt thread).

    :meth:`render` does the rest of SLEAP's ``copy()`` (sleap-nn's checks and
    the YAML); it touches no widget, so it runs on the flow's thread.

    Attributes:
        name: the head name SLEAP shows (e.g. ``"centroid"``), "" if unknown.
        tree: the model's OmegaConf config as SLEAP's form made it.
        labels_filename: the dialog's labels file (``train_labels_path``).
        extra_yaml: YAML text appended to the rendered config ("" normally).
    """

    name: str
    tree: Any
    labels_filename: str
    extra_yaml: str = ""

    def render(self) -> tuple[str, bool]:
        """(sleap-nn YAML, whether sleap-nn's ``verify_training_cfg`` ran here)."""
        from omegaconf import OmegaConf
        from sleap.gui.config_utils import filter_cfg  # type: ignore[import-untyped, import-not-found, unused-ignore]

        cfg = filter_cfg(self.tree.copy())
        try:
            from sleap_nn.config.training_job_config import verify_training_cfg
        except ImportError:  # a GUI-only install: the worker's sleap-nn verifies it
            verified = False
        else:
            cfg = verify_training_cfg(cfg)
            verified = True
        cfg.data_config.train_labels_path = [self.labels_filename]
        return OmegaConf.to_yaml(cfg) + self.extra_yaml, verified


def _head_name(info: Any) -> str:
    head = getattr(info, "head_name", None)
    return str(head) if head else ""


def dialog_configs(dialog: Any) -> list[ModelConfig]:
    """Every model of ``dialog`` (a ``sleap.gui.learning.dialog.LearningDialog``), in
    training order. Reads the form (Qt thread); render each off it.

    Example::

        for model in dialog_configs(dialog):
            yaml_text, verified = model.render()
    """
    form = dialog.pipeline_form_widget.get_form_data()
    return [ModelConfig(_head_name(info), info.config, str(dialog.labels_filename))
            for info in dialog.get_every_head_config_data(form)]
