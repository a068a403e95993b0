"""Checkpoints and configs of folded QAT students.

A QAT algorithm (``QATDistill``, or ``DetectorQAT`` with an in-place
quantizer) keeps its quantized student detector in ``architecture``, so
the student's entries in a training checkpoint start with
``architecture.``. After the GABFusion fold the student has the stock
neck; :func:`deployable_qat_config` gives the config that its checkpoint
loads into, for testing and for the fine-tune that follows the fold.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint
from torch import Tensor, nn

from gabfusion_mm.models.algorithms import DetectorQAT, QATDistill

from .stock_config import stock_model_config

# Prefix of the student's entries in a QAT algorithm's state dict.
STUDENT_PREFIX = 'architecture.'


def load_student_state(path: str) -> dict[str, Tensor]:
    """Read the student's entries of a QAT checkpoint.

    Args:
        path (str): A checkpoint of a QAT algorithm (``state_dict`` with
            ``architecture.*`` entries), or a student-only file written by
            ``StudentCheckpointHook`` (``state_dict`` and
            ``quantizer_state_dict``).

    Returns:
        dict[str, Tensor]: The student's state dict, without the prefix.
    """
    checkpoint = _load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    if 'quantizer_state_dict' in checkpoint:
        student = dict(state)
        student.update(checkpoint['quantizer_state_dict'])
        return student

    student = {
        key[len(STUDENT_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(STUDENT_PREFIX)
    }
    if not student:
        raise ValueError(
            f'{path} has no {STUDENT_PREFIX!r} entries; pass a checkpoint '
            'written by training the QAT config.'
        )
    return student


def student_state_dict(student: nn.Module) -> OrderedDict:
    """Return the student's state dict with ``architecture.`` keys."""
    return OrderedDict(
        (STUDENT_PREFIX + key, value)
        for key, value in student.state_dict().items()
    )


def deployable_qat_config(cfg: Config, algorithm: nn.Module) -> Config:
    """Return a QAT config for the student with the stock neck.

    The copy of ``cfg`` gets the stock neck in ``model.architecture``
    (:func:`stock_model_config`), loses ``model.distiller`` (ADA needs the
    GABFusion student) and every ``GABFusionHook`` in ``custom_hooks``.
    ``QATDistill`` keeps checking its float checkpoint against the teacher;
    a teacher that defaulted to the architecture is set to the original
    architecture. ``DetectorQAT`` loads its float checkpoint strictly into
    the architecture, whose neck changes. So the copy sets
    ``float_checkpoint=None`` and ``allow_random_init=True``, and the
    folded checkpoint then sets every weight.

    Args:
        cfg (Config): The QAT config of the GABFusion student.
        algorithm (nn.Module): The algorithm built from ``cfg``.

    Returns:
        Config: The deployable config.
    """
    out_cfg = copy.deepcopy(cfg)
    model = out_cfg.model
    if isinstance(algorithm, QATDistill) and 'teacher' not in model:
        model.teacher = copy.deepcopy(cfg.model.architecture)
    model.architecture = stock_model_config(cfg.model.architecture)
    model.pop('distiller', None)
    if isinstance(algorithm, DetectorQAT):
        model.float_checkpoint = None
        model.allow_random_init = True
    out_cfg.custom_hooks = without_fusion_hook(cfg.get('custom_hooks'))
    return out_cfg


def without_fusion_hook(hooks: list | None) -> list:
    """Return ``hooks`` without ``GABFusionHook``, which needs GABFusion."""
    kept = []
    for hook in hooks or []:
        hook_type = hook.get('type')
        name = getattr(hook_type, '__name__', str(hook_type))
        if name.rpartition('.')[2] != 'GABFusionHook':
            kept.append(hook)
    return kept
